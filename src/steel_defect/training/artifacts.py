"""What a run leaves behind: checkpoints (last, best, top-k), metric history, curve plot.

:class:`steel_defect.config.layout.RunPaths` names the files. ``last.pth`` holds weights,
optimizer, scheduler and history (``--resume`` reads it); ``best.pth`` the best epoch by the
monitored validation metric; ``epoch_NNN.pth`` the top-k epochs (``train.save_top_k``);
``history.json`` the per-epoch metrics, epoch seconds and finish time (UTC); ``curves.png`` the
loss, learning rate and validation metrics (overall and per class).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt
from catalyst.core.callback import Callback, CallbackOrder

from steel_defect.atomic import atomic_write
from steel_defect.config.layout import RunPaths
from steel_defect.constants import CLASS_COLORS
from steel_defect.models.checkpoint import save_checkpoint, unwrap


class CheckpointCallback(Callback):
    """Saves ``last.pth`` every epoch and keeps the ``top_k`` best epochs plus ``best.pth``.

    ``resume_state`` (a loaded ``last.pth``) carries the history and top-k list forward.
    Only the main process writes.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg,
        monitor: str,
        top_k: int,
        resume_state: dict | None = None,
        minimize: bool = False,
        trained_on: dict | None = None,
    ):
        super().__init__(order=CallbackOrder.Checkpoint)
        self.trained_on = trained_on
        self.run_dir, self.cfg, self.monitor, self.top_k = Path(run_dir), cfg, monitor, max(0, top_k)
        self.paths = RunPaths(self.run_dir)
        self.sign = -1.0 if minimize else 1.0  # scores are kept higher-is-better
        resume_state = resume_state or {}
        self.history: list[dict] = list(resume_state.get("history", []))
        self.top: list[dict] = list(resume_state.get("top", []))  # [{"epoch", "score", "path"}]
        self.epoch_start = time.perf_counter()

    def on_epoch_start(self, runner) -> None:
        self.epoch_start = time.perf_counter()

    @property
    def checkpoint_dir(self) -> Path:
        return self.paths.checkpoints

    def on_epoch_end(self, runner) -> None:
        if not runner.engine.is_main_process:
            return
        epoch = runner.epoch_step
        metrics = {
            loader: dict(values) for loader, values in runner.epoch_metrics.items() if loader != "_epoch_"
        }
        # wall time per epoch and its end, so `steel-defect runs` needs no clock of its own
        timing = {
            "seconds": round(time.perf_counter() - self.epoch_start, 2),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.history.append({"epoch": epoch, **metrics, **timing})
        score = self.sign * metrics["valid"][self.monitor]
        model = unwrap(runner.model)
        best_before = max((t["score"] for t in self.top), default=None)
        if self.top_k and (len(self.top) < self.top_k or score > min(t["score"] for t in self.top)):
            path = self.paths.epoch(epoch)
            save_checkpoint(path, model, self.cfg, epoch, metrics, trained_on=self.trained_on)
            self.top.append(
                {
                    "epoch": epoch,
                    "score": score,
                    "metric": self.monitor,
                    "value": metrics["valid"][self.monitor],
                    "path": path.name,
                }
            )
            self.top.sort(key=lambda t: -t["score"])
            for dropped in self.top[self.top_k :]:
                (self.checkpoint_dir / dropped["path"]).unlink(missing_ok=True)
            del self.top[self.top_k :]
        if best_before is None or score > best_before:
            save_checkpoint(self.paths.best, model, self.cfg, epoch, metrics, trained_on=self.trained_on)
        save_checkpoint(
            self.paths.last,
            model,
            self.cfg,
            epoch,
            metrics,
            trained_on=self.trained_on,
            optimizer_state=runner.optimizer.state_dict(),
            scheduler_state=runner.scheduler.state_dict() if runner.scheduler is not None else None,
            history=self.history,
            top=self.top,
            # the mean teacher of train.semi, so that --resume continues with it
            **({"teacher_state": runner.semi.state()} if getattr(runner, "semi", None) else {}),
        )
        with atomic_write(self.paths.history) as handle:
            json.dump(self.history, handle, indent=1)

    def on_experiment_end(self, runner) -> None:
        if runner.engine.is_main_process and self.history:
            plot_curves(self.history, self.monitor, self.paths.curves)


PER_CLASS = re.compile(r"(.+)_(\d|none)$")  # dice_3, iou_3, f1_4, f1_none


def plot_curves(history: list[dict], monitor: str, path: Path) -> Path:
    """:func:`curves_figure` saved as a PNG, atomically."""
    fig = curves_figure(history, monitor)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return path


def curves_figure(history: list[dict], monitor: str):
    """Loss, learning rate, monitored metric and per-class validation metrics per epoch.

    Per-class metrics (``dice_1`` .. ``f1_none``) get one panel per metric name, one line per
    class in the web page's class colours, so a class that never learns stands out.
    """
    epochs = [h["epoch"] for h in history]
    valid = history[-1].get("valid", {})
    per_class: dict[str, list[str]] = {}
    for key in sorted(valid):
        match = PER_CLASS.fullmatch(key)
        if match:
            per_class.setdefault(match.group(1), []).append(key)
    rows = 1 + -(-len(per_class) // 3)  # overall panels on top, per-class ones below, 3 a row
    fig, axes = plt.subplots(rows, 3, figsize=(14, 3.8 * rows), squeeze=False)
    ax_loss, ax_lr, ax_metric, *ax_classes = axes.ravel()
    for ax in ax_classes[len(per_class) :]:
        ax.set_visible(False)
    for loader, style in (("train", "-o"), ("valid", "-s")):
        values = [h.get(loader, {}).get("loss") for h in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, style, label=f"{loader} loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    lr_keys = sorted({k for h in history for k in h.get("train", {}) if k.startswith("lr/")})
    for key in lr_keys:
        ax_lr.plot(
            epochs, [h.get("train", {}).get(key) for h in history], "-o", label=key.removeprefix("lr/")
        )
    if lr_keys:
        ax_lr.set_yscale("log")
        ax_lr.legend(fontsize=8, title="param group", title_fontsize=8)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax_metric.plot(
        epochs, [h["valid"][monitor] for h in history], "-o", linewidth=2.5, label=f"valid {monitor}"
    )
    ax_metric.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor} (monitored)")
    ax_metric.legend(fontsize=8)
    for ax, (name, keys) in zip(ax_classes, per_class.items(), strict=False):  # spare axes hidden
        for key in keys:
            label = key.rsplit("_", 1)[1]
            colour = CLASS_COLORS.get(int(label), "#66707a") if label.isdigit() else "#66707a"
            values = [h["valid"].get(key) for h in history]
            ax.plot(epochs, values, "-o", ms=4, color=colour, mec="#333", label=label)
        ax.set(xlabel="epoch", ylabel=name, title=f"validation {name} per class")
        ax.legend(fontsize=8, title="class", title_fontsize=8)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
