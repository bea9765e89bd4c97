"""Weight averaging (SWA) and snapshot ensembles: more models out of one training run.

* ``train.swa: k`` averages the weights of the run's top-k checkpoints (``epoch_NNN.pth``, so
  ``train.save_top_k`` must keep at least k) when training ends, recomputes the BatchNorm
  statistics of the averaged weights with one pass over the training data, and writes
  ``checkpoints/swa.pth``. Reading the saved files rather than averaging in memory keeps it
  correct for a run resumed with ``--resume``.
* ``train.snapshots: true`` with ``scheduler.name: cosine_restarts`` keeps
  ``checkpoints/snapshot_K.pth`` at the end of every cycle; give them all to the predictor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from catalyst.core.callback import Callback, CallbackOrder

from steel_defect.config.layout import RunPaths
from steel_defect.models.checkpoint import load_checkpoint, save_checkpoint, unwrap

log = logging.getLogger(__name__)


def average_states(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the checkpoints' model weights (integer buffers from the first)."""
    states = [load_checkpoint(path)["model_state"] for path in paths]
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            averaged[key] = sum(state[key].double() for state in states).div(len(states)).to(first.dtype)
        else:
            averaged[key] = first.clone()  # e.g. BatchNorm's num_batches_tracked
    return averaged


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, loader, input_key: str = "image") -> int:
    """Running statistics of every BatchNorm layer as the mean over one pass of ``loader``.

    Averaged weights do not match any epoch's running statistics (torch's swa_utils.update_bn
    does the same for loaders of plain tensors). Returns the number of batches seen.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    batches = 0
    for batch in loader:
        model(batch[input_key].to(device))
        batches += 1
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.train(was_training)
    return batches


class AveragingCallback(Callback):
    """Snapshots at the end of each cosine_restarts cycle, SWA of the top-k when training ends."""

    def __init__(self, run_dir: Path, cfg, swa: int | None, snapshot_epochs: list[int], trained_on=None):
        super().__init__(order=CallbackOrder.External)  # after CheckpointCallback wrote its files
        self.paths = RunPaths(Path(run_dir))
        self.checkpoints = self.paths.checkpoints
        self.cfg, self.swa, self.snapshot_epochs, self.trained_on = cfg, swa, snapshot_epochs, trained_on

    def on_epoch_end(self, runner) -> None:
        if runner.engine.is_main_process and runner.epoch_step in self.snapshot_epochs:
            k = self.snapshot_epochs.index(runner.epoch_step) + 1
            metrics = {loader: dict(v) for loader, v in runner.epoch_metrics.items() if loader != "_epoch_"}
            path = self.paths.snapshot(k)
            save_checkpoint(
                path, unwrap(runner.model), self.cfg, runner.epoch_step, metrics, trained_on=self.trained_on
            )
            log.info("snapshot %d (epoch %d) -> %s", k, runner.epoch_step, path)

    def on_experiment_end(self, runner) -> None:
        if not self.swa or not runner.engine.is_main_process:
            return
        top = (runner.callbacks["checkpoint"].top or [])[: self.swa]
        paths = [self.checkpoints / t["path"] for t in top]
        if len(paths) < 2:
            log.warning(
                "train.swa=%d: only %d top checkpoint(s) kept, nothing to average", self.swa, len(paths)
            )
            return
        model = unwrap(runner.model)
        model.load_state_dict(average_states(paths))
        batches = recompute_batchnorm(model, runner.loaders["train"])
        epochs = [t["epoch"] for t in top]
        metrics = {"swa": {"epochs": epochs, "bn_batches": batches}}
        save_checkpoint(self.paths.swa, model, self.cfg, max(epochs), metrics, trained_on=self.trained_on)
        log.info("SWA of epochs %s -> %s", epochs, self.paths.swa)
