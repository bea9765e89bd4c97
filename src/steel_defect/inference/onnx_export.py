"""Checkpoint -> ONNX export (fp32, and int8 by static quantization), with metadata.

    export_onnx("fold0/checkpoints/best.pth", "export/fold0.onnx")
    quantize_int8("export/fold0.onnx", "export/fold0.int8.onnx", calibration_frames)
    net = load_exported("fold0/checkpoints/best.pth")   # the onnx backend on a checkpoint
    net = load_exported("fold0/checkpoints/best.pth", backend="openvino")   # the same export on OpenVINO

The conversion sits between the backends and the predictor: it runs the torch model beside its
export to record their difference, and it writes the cache that lets the onnx backend take a
``.pth`` (for the onnx and the openvino backend alike). ``steel-defect export`` (:mod:`.export`)
adds the int8 check inside the tuned pipeline.

The exported graph is the model followed by its sigmoid(s): input ``image`` (N, C, H, W)
float32 normalised as the checkpoint's ``transforms.valid`` does, outputs ``probs`` and, for a
two-head segmenter, ``head``. The batch dimension is dynamic; height and width are those the
validation transform produces (TF-style "same" padding of some encoders is traced for them).
The metadata entry ``steel_defect`` (:mod:`.onnx_backend`) makes the file self-describing, like
a checkpoint, and records the largest probability difference from torch on a test input.
Only exporting needs torch; it is imported there, so :func:`load_exported` on a warm cache
starts as fast as an ``.onnx`` file does.

int8 uses ONNX Runtime's static quantization in QDQ format with per-channel weights, calibrated
on real frames. Only the convolutions and matrix products are quantized: the sigmoid and the
upsampling stay in float, so probabilities near a threshold keep their resolution.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.constants import IMAGE_SHAPE
from steel_defect.inference.networks import PROVENANCE_KEYS, Network, describe_state, network_input
from steel_defect.inference.onnx_backend import (
    FORMAT,
    METADATA_KEY,
    VERSION,
    ExportError,
    cache_path,
    file_sha256,
    load_onnx,
    network_from_session,
    open_session,
    read_metadata,
)

log = logging.getLogger(__name__)

OPSET = 17
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def _with_sigmoid(model):
    """``model`` followed by its sigmoid(s), the graph that is exported."""
    import torch

    class WithSigmoid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            if isinstance(out, tuple):  # two-head segmenter: (maps, labels)
                return tuple(torch.sigmoid(o) for o in out)
            return torch.sigmoid(out)

    return WithSigmoid()


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


def export_onnx(
    checkpoint: str | Path, out: str | Path, opset: int = OPSET, input_hw: tuple[int, int] | None = None
) -> Path:
    """Write ``checkpoint``'s model as ONNX to ``out`` (atomically) and return ``out``.
    ``input_hw``: the (H, W) it takes, when not its validation transform's (the clean-frame
    gate's coarse pass, :mod:`.gate`)."""
    import torch  # here, not at the top: a warm export cache opens without torch

    from steel_defect.models.checkpoint import load_checkpoint, model_from_checkpoint, weights_digest

    checkpoint, out = Path(checkpoint), Path(out)
    state = load_checkpoint(checkpoint)
    model, _ = model_from_checkpoint(state)
    fields = describe_state(state, checkpoint)
    channels, height, width = input_shape(Network(run=None, **fields))
    if input_hw is not None:
        height, width = input_hw
    dummy = torch.from_numpy(
        np.random.default_rng(0).normal(size=(1, channels, height, width)).astype(np.float32)
    )
    wrapped = _with_sigmoid(model).eval()
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


def read_export_metadata(path: Path) -> dict:
    """The ``steel_defect`` metadata entry of an export, read without opening a session."""
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
            **read_export_metadata(fp32),
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
    meta = read_export_metadata(path)
    meta["int8"] = {**meta.get("int8", {}), **report}
    model_bytes = _with_metadata(path.read_bytes(), meta)
    with atomic_write(path, "wb") as handle:
        handle.write(model_bytes)


def user_cache(checkpoint: Path, digest: str | None = None) -> Path:
    """The export's place when the checkpoint's folder cannot hold it: the user's cache
    (``$XDG_CACHE_HOME``, else ``~/.cache``) under ``steel-defect/onnx``, named by the
    checkpoint's SHA-256, so a retrained checkpoint never meets an old export."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = digest or file_sha256(checkpoint)
    return root / "steel-defect" / "onnx" / f"{checkpoint.stem}-{digest[:16]}.onnx"


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, not guessed from its mode bits)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _open(onnx_path: Path, threads, spin, backend: str, precision: str) -> Network:
    """The export at ``onnx_path`` on ``backend`` (``onnx`` or ``openvino``)."""
    if backend == "openvino":
        from steel_defect.inference.openvino_backend import load_openvino

        return load_openvino(onnx_path, threads, precision)
    session = open_session(onnx_path, threads, spin)
    return network_from_session(onnx_path, session, read_metadata(session, onnx_path))


def _standing_for(checkpoint: Path, onnx_path: Path, network: Network) -> Network:
    """The cached export's network under the checkpoint's name: a tuned pipeline, the page and
    the logs name the ``.pth`` the user gave, and ``info["onnx"]`` says where its export is."""
    network.info["onnx"] = str(onnx_path)
    return dataclasses.replace(network, path=str(checkpoint))


def _fresh(onnx_path: Path, checkpoint: Path, digest: str, opener) -> Network | None:
    """The cached export at ``onnx_path`` when it is readable, ours, fp32 and of this checkpoint."""
    if not onnx_path.is_file():
        return None
    try:
        network = opener(onnx_path)
    except ExportError:
        return None  # unreadable or foreign: export again
    if network.info.get("source_sha256") != digest or network.info.get("precision") != "fp32":
        return None
    return _standing_for(checkpoint, onnx_path, network)


def load_exported(
    checkpoint: str | Path,
    threads: int | None = None,
    spin: bool | None = None,
    backend: str = "onnx",
    precision: str = "fp32",
    input_hw: tuple[int, int] | None = None,
) -> Network:
    """``checkpoint`` on the onnx (or ``backend="openvino"``) backend, through its cached export:
    beside it (:func:`.onnx_backend.cache_path`), or in :func:`user_cache` when that folder cannot
    be written (a read-only model share, say). The export is written on first use, and again when
    the checkpoint's SHA-256 no longer matches it (that needs torch); a valid cached export is
    opened once, not once to check it and again to run it. ``precision`` is OpenVINO's (fp32,
    bf16, auto); ONNX Runtime runs the export as it is. ``input_hw``: an export taking frames of
    that (H, W) instead of the transform's, cached as ``<stem>.<H>x<W>.onnx`` (the clean-frame
    gate's coarse pass)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint} does not exist")
    if backend == "openvino":  # refused before any export is written, not taken for a stale cache
        from steel_defect.inference.openvino_backend import resolve_precision

        precision = resolve_precision(precision)

    def opener(onnx_path: Path) -> Network:
        return _open(onnx_path, threads, spin, backend, precision)

    digest = file_sha256(checkpoint)  # read once: a checkpoint is tens of megabytes
    beside, fallback = cache_path(checkpoint), user_cache(checkpoint, digest)
    if input_hw is not None:
        tag = f".{input_hw[0]}x{input_hw[1]}.onnx"
        beside, fallback = (p.with_name(p.name.removesuffix(".onnx") + tag) for p in (beside, fallback))
    for onnx_path in (beside, fallback):
        network = _fresh(onnx_path, checkpoint, digest, opener)
        if network is not None:
            return network
    onnx_path = None
    if _writable(beside.parent):
        try:
            onnx_path = export_onnx(checkpoint, beside, input_hw=input_hw)
        except OSError as err:  # the name is taken (a folder, say), or the disk refused
            log.info("cannot write %s (%s)", beside, err)
    if onnx_path is None:
        log.info("caching the export of %s in %s", checkpoint, fallback)
        onnx_path = export_onnx(checkpoint, fallback, input_hw=input_hw)
    log.info("exported %s once for %s: %s (--backend torch skips it)", checkpoint, backend, onnx_path)
    return _standing_for(checkpoint, onnx_path, opener(onnx_path))
