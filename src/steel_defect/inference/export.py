"""Checkpoint -> ONNX export (fp32, and int8 by static quantization), with metadata.

    export_onnx("fold0/checkpoints/best.pth", "export/fold0.onnx")
    quantize_int8("export/fold0.onnx", "export/fold0.int8.onnx", calibration_frames)

The exported graph is the model followed by its sigmoid(s): input ``image`` (N, C, H, W)
float32 normalised as the checkpoint's ``transforms.valid`` does, outputs ``probs`` and, for a
two-head segmenter, ``head``. The batch dimension is dynamic; height and width are those the
validation transform produces (TF-style "same" padding of some encoders is traced for them).
The metadata entry ``steel_defect`` (:mod:`.onnx_backend`) makes the file self-describing, like
a checkpoint, and records the largest probability difference from torch on a test input.

int8 uses ONNX Runtime's static quantization in QDQ format with per-channel weights, calibrated
on real frames. Only the convolutions and matrix products are quantized: the sigmoid and the
upsampling stay in float, so probabilities near a threshold keep their resolution.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from steel_defect.atomic import atomic_write
from steel_defect.constants import IMAGE_SHAPE
from steel_defect.inference.networks import PROVENANCE_KEYS, Network, describe_state
from steel_defect.inference.onnx_backend import FORMAT, METADATA_KEY, VERSION, file_sha256, load_onnx
from steel_defect.inference.predictor import network_input
from steel_defect.models.checkpoint import load_checkpoint, model_from_checkpoint, weights_digest

OPSET = 17
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


class _WithSigmoid(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, tuple):  # two-head segmenter: (maps, labels)
            return tuple(torch.sigmoid(o) for o in out)
        return torch.sigmoid(out)


def input_shape(network: Network) -> tuple[int, int, int]:
    """(C, H, W) the network sees for a full-size frame."""
    frame = np.zeros((*IMAGE_SHAPE, network.channels), np.uint8)
    height, width = network.transform(image=frame)["image"].shape[:2]
    return network.channels, height, width


def _with_metadata(model_bytes: bytes, meta: dict) -> bytes:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, default=float)
    return proto.SerializeToString()


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Write ``checkpoint``'s model as ONNX to ``out`` (atomically) and return ``out``."""
    checkpoint, out = Path(checkpoint), Path(out)
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state)
    fields = describe_state(state, checkpoint)
    channels, height, width = input_shape(Network(run=None, **fields))
    dummy = torch.from_numpy(
        np.random.default_rng(0).normal(size=(1, channels, height, width)).astype(np.float32)
    )
    wrapped = _WithSigmoid(model).eval()
    outputs = ["probs", "head"] if fields["head_gate"] else ["probs"]
    buffer = io.BytesIO()
    # The TorchScript exporter needs neither onnxscript nor torch.export; torch 2.9+ calls it
    # legacy and warns. Both give the same graph for these models (max difference 4e-5).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapped,
            (dummy,),
            buffer,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
            opset_version=opset,
            dynamo=False,
        )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "task": state["task"],
        "config": state["config"],
        "epoch": state["epoch"],
        "metrics": state["metrics"],
        **{key: state.get(key) for key in PROVENANCE_KEYS},
        # the source's identity: a tuned pipeline accepts the export in its checkpoint's place
        "weights_sha256": state.get("weights_sha256") or weights_digest(state["model_state"]),
        "source": checkpoint.name,
        "source_sha256": file_sha256(checkpoint),
        "precision": "fp32",
        "opset": opset,
        "input_shape": [channels, height, width],
    }
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        probe.write_bytes(_with_metadata(buffer.getvalue(), meta))
        with torch.inference_mode():
            expected = wrapped(dummy)
        got = load_onnx(probe, threads=1).run(dummy.numpy())
        expected = expected if isinstance(expected, tuple) else (expected,)
        meta["max_abs_diff_vs_torch"] = max(
            float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got, strict=False) if g is not None
        )
    with atomic_write(out, "wb") as handle:
        handle.write(_with_metadata(buffer.getvalue(), meta))
    return out


def _read_meta(path: Path) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    entries = {p.key: p.value for p in proto.metadata_props}
    return json.loads(entries[METADATA_KEY])


def quantize_int8(
    fp32: str | Path, out: str | Path, frames: list[np.ndarray], extra: dict | None = None
) -> Path:
    """Static int8 (QDQ, per-channel weights) of an fp32 export, calibrated on uint8 ``frames``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, out = Path(fp32), Path(out)
    network = load_onnx(fp32, threads=1)
    batches = iter([{"image": network_input(network, [frame])} for frame in frames])

    class Frames(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS,
        )
        meta = {
            **_read_meta(fp32),
            "precision": "int8",
            "int8": {"calibration_frames": len(frames), **(extra or {})},
        }
        model_bytes = _with_metadata(quantized.read_bytes(), meta)
    with atomic_write(out, "wb") as handle:
        handle.write(model_bytes)
    return out


def set_int8_report(path: str | Path, report: dict) -> None:
    """Merge ``report`` (the Dice change against fp32) into an int8 export's metadata."""
    path = Path(path)
    meta = _read_meta(path)
    meta["int8"] = {**meta.get("int8", {}), **report}
    model_bytes = _with_metadata(path.read_bytes(), meta)
    with atomic_write(path, "wb") as handle:
        handle.write(model_bytes)


# ---------------------------------------------------------------------------------------------
# `steel-defect export`: checkpoints -> a folder of ONNX files, int8 checked against fp32 on
# the frames the model did not train on, inside the tuned pipeline.

INT8_MAX_DICE_LOSS = 0.005


def export_name(checkpoint: Path, taken: set[str]) -> str:
    """``fold0/checkpoints/best.pth`` -> ``fold0_best``; unique within one export."""
    stem = checkpoint.stem
    if checkpoint.parent.name == "checkpoints":
        stem = f"{checkpoint.parent.parent.name}_{stem}"
    name, index = stem, 1
    while name in taken:
        index += 1
        name = f"{stem}_{index}"
    taken.add(name)
    return name


def int8_frame_ids(cfg, trained_on: dict | None, source: str, n_calib: int, n_holdout: int, seed: int = 0):
    """(calibration ids, held-out ids) for a model's int8 check.

    The held-out frames are the validation frames its checkpoint records
    (``trained_on.split.valid_ids``): frames the model never learnt from, whatever split file
    is around now. Calibration frames are other frames of ``paths.train_csv``. A model that does
    not record its validation frames is refused (ValueError): scoring it on frames it may have
    learnt from would make the check meaningless.
    """
    from steel_defect.data.annotations import read_annotations, resolve_image_ids

    valid = ((trained_on or {}).get("split") or {}).get("valid_ids")
    if not valid:
        raise ValueError(
            f"{source} does not record its validation frames (trained before checkpoints recorded "
            "the split): the int8 check cannot tell which frames it never learnt from; retrain it, "
            "or export without --int8"
        )
    annotations = read_annotations(cfg.paths.train_csv)
    known = set(resolve_image_ids(annotations, cfg.paths.train_images))
    holdout = [i for i in valid if i in known][:n_holdout]
    rng = np.random.default_rng(seed)
    others = sorted(known - set(valid))
    calib = [str(i) for i in rng.permutation(others)[:n_calib]] if others else []
    if not calib or not holdout:
        raise ValueError(
            f"{cfg.paths.train_csv}: {len(holdout)} of {source}'s validation frames and {len(calib)} "
            f"other frames found; the int8 check needs at least one of each"
        )
    return calib, holdout


def read_frames(cfg, ids: list[str]):
    """(uint8 RGB frames, truth masks (N, 4, H, W)) of ``ids`` in ``paths.train_images``."""
    from steel_defect.data.annotations import read_annotations
    from steel_defect.data.images import read_image
    from steel_defect.data.rle import rles_to_masks

    annotations = read_annotations(cfg.paths.train_csv)
    images = Path(cfg.paths.train_images)
    frames = [read_image(images / i, channels=3) for i in ids]
    return frames, np.stack([rles_to_masks(annotations.rles(i)) for i in ids])


def mean_dice(models: list[Path], frames, truth, post, tta=(), batch: int = 4) -> float:
    """Mean Dice of the pipeline of ``models`` (``.onnx`` on ONNX Runtime, ``.pth`` on torch)."""
    from steel_defect.evaluation.metric import dice_pairs
    from steel_defect.inference.predictor import Predictor

    predictor = Predictor(models, post, tta=tuple(tta), backend="torch")
    masks = [
        p.masks
        for start in range(0, len(frames), batch)
        for p in predictor.predict(frames[start : start + batch])
    ]
    return float(dice_pairs(np.stack(masks), truth).mean())


def _check_pipeline(checkpoint: Path, digest: str, spec):
    """(the other models of ``checkpoint``'s fold in the tuned pipeline, post-processing, TTA):
    the int8 model is scored inside the pipeline it will run in, gate included. ``digest``: the
    checkpoint's weights SHA-256."""
    from steel_defect.inference.postprocess import PostProcessing

    if spec is None:  # --untuned: the model alone, threshold 0.5
        return [], PostProcessing(), ()
    mine = [m for m in spec.models if m.weights_sha256 == digest]
    if not mine:
        raise ValueError(f"{checkpoint} is not a model of the tuned pipeline {spec.source}")
    others = [m.path for m in spec.of_fold(mine[0].fold) if m.weights_sha256 != digest]
    return others, spec.post, spec.tta


def export_all(
    checkpoints,
    out_dir,
    cfg=None,
    postprocessing=None,
    untuned=False,
    int8=False,
    n_calib=16,
    n_holdout=16,
    force=False,
):
    """Export every checkpoint to ``out_dir`` (and its int8 twin); a list of per-file summaries.

    ``postprocessing``: the tuned pipeline (:mod:`.pipeline`); ``checkpoints`` default to its
    models. The int8 check scores each model on the validation frames its checkpoint records,
    inside its fold's share of the tuned pipeline (same gate, TTA and thresholds), fp32 against
    int8; without a pipeline it needs ``untuned`` and scores the model alone at threshold 0.5.
    An int8 model that loses more than ``INT8_MAX_DICE_LOSS`` mean Dice is not written unless
    ``force``; the fp32 file is written either way.
    """
    from steel_defect.inference.pipeline import UNTUNED_HINT, PipelineError, read_tuned

    spec = read_tuned(postprocessing)[1] if postprocessing is not None else None
    if int8 and spec is None and not untuned:
        raise PipelineError(f"the int8 check runs the tuned pipeline: {UNTUNED_HINT}")
    checkpoints = checkpoints or (spec.checkpoints if spec else None)
    if not checkpoints:
        raise PipelineError("nothing to export: pass --checkpoints or --postprocessing (a tuned pipeline)")
    out_dir, taken, summary = Path(out_dir), set(), []
    for checkpoint in map(Path, checkpoints):
        name = export_name(checkpoint, taken)
        fp32 = export_onnx(checkpoint, out_dir / f"{name}.onnx")
        meta = _read_meta(fp32)
        entry = {
            "checkpoint": str(checkpoint),
            "onnx": str(fp32),
            **{k: meta[k] for k in ("source_sha256", "max_abs_diff_vs_torch")},
        }
        summary.append(entry)
        if not int8:
            continue
        try:
            calib_ids, holdout_ids = int8_frame_ids(
                cfg, meta.get("trained_on"), str(checkpoint), n_calib, n_holdout
            )
        except ValueError as err:
            entry["int8"] = {"refused": str(err)}
            continue
        others, post, tta = _check_pipeline(checkpoint, meta["weights_sha256"], None if untuned else spec)
        calib, _ = read_frames(cfg, calib_ids)
        holdout, truth = read_frames(cfg, holdout_ids)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            candidate = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib)
            dice_fp32, dice_int8 = (
                mean_dice([fp32, *others], holdout, truth, post, tta),
                mean_dice([candidate, *others], holdout, truth, post, tta),
            )
            report = {
                "holdout_frames": len(holdout),
                "holdout_ids": holdout_ids,
                "pipeline": [str(p) for p in others],
                "dice_fp32": dice_fp32,
                "dice_int8": dice_int8,
                "dice_change": dice_int8 - dice_fp32,
            }
            set_int8_report(candidate, report)
            entry["int8"] = report
            if dice_int8 - dice_fp32 < -INT8_MAX_DICE_LOSS and not force:
                entry["int8"]["refused"] = (
                    f"int8 loses {dice_fp32 - dice_int8:.4f} mean Dice on {len(holdout)} held-out frames "
                    f"(> {INT8_MAX_DICE_LOSS}); pass --force to write it anyway"
                )
                continue
            target = out_dir / f"{name}.int8.onnx"
            candidate.replace(target)
            entry["int8"]["onnx"] = str(target)
    return summary
