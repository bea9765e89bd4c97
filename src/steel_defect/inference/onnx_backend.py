"""The ONNX Runtime backend: an exported network on the CPU execution provider, without torch.

An export (``steel-defect export``, :mod:`steel_defect.inference.export`) is one ``.onnx`` file
whose graph ends in the sigmoid, with a dynamic batch dimension, and whose metadata entry
``steel_defect`` holds the checkpoint's resolved config (task, classes, transforms,
normalisation, encoder), epoch, metrics, provenance, the SHA-256 of the source checkpoint and,
for int8 exports, the calibration and the Dice change against fp32.

    net = load_onnx("best.onnx", threads=2)       # or load_network(..., backend="onnx")
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from steel_defect.inference.networks import Network, default_threads, describe_state

FORMAT = "steel-defect-onnx"
VERSION = 1
METADATA_KEY = "steel_defect"


class ExportError(ValueError):
    """An ONNX file that is missing, unreadable, not ours, or stale against its checkpoint."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(checkpoint: str | Path) -> Path:
    """Where the ONNX backend keeps a ``.pth`` checkpoint's export: beside it, ``<stem>.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


# Whether ONNX Runtime's worker threads busy-wait for the next operator instead of sleeping
# (its default). A thread that keeps spinning after ``run`` returns takes a core from the
# decoding and post-processing around it. On the 2-core CPU (bench/inference.py, side by side)
# sleeping won two pipeline runs, tied one and lost one: within the noise, so the threads sleep
# and leave the cores to the rest of the machine.
SPIN = False


def _session(path: Path, threads: int | None, spin: bool | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the onnx backend needs onnxruntime: pip install 'steel-defect[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = SPIN if spin is None else spin
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # truncated file, not ONNX, unsupported operator
        raise ExportError(f"ONNX model {path} cannot be loaded: {err}") from None


def read_metadata(session, path: Path) -> dict:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ExportError(f"{path} is not a steel-defect export (no '{METADATA_KEY}' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise ExportError(f"{path}: unsupported export format {meta.get('format')} v{meta.get('version')}")
    return meta


def _cached_session(checkpoint: Path, threads: int | None, spin: bool | None = None):
    """(path, session, metadata) of ``checkpoint``'s up-to-date export, written first if missing
    or stale (that needs torch). A valid cached export is opened once, not once to check it and
    again to run it."""
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint} does not exist")
    onnx_path = cache_path(checkpoint)
    if onnx_path.is_file():
        try:
            session = _session(onnx_path, threads, spin)
            meta = read_metadata(session, onnx_path)
            if meta.get("source_sha256") == file_sha256(checkpoint) and meta.get("precision") == "fp32":
                return onnx_path, session, meta
        except ExportError:
            pass  # unreadable or foreign: export again
    from steel_defect.inference.export import export_onnx

    export_onnx(checkpoint, onnx_path)
    session = _session(onnx_path, threads, spin)
    return onnx_path, session, read_metadata(session, onnx_path)


def load_onnx(path: str | Path, threads: int | None = None, spin: bool | None = None) -> Network:
    """An ``.onnx`` export as it is, or a ``.pth`` checkpoint through its cached export.
    ``spin``: let idle worker threads busy-wait (default :data:`SPIN`)."""
    path = Path(path)
    if path.suffix != ".onnx":
        path, session, meta = _cached_session(path, threads, spin)
    elif not path.is_file():
        raise ExportError(f"ONNX model {path} does not exist")
    else:
        session = _session(path, threads, spin)
        meta = read_metadata(session, path)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = session.run(output_names, {input_name: np.ascontiguousarray(batch, np.float32)})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    fields = describe_state(meta, path)
    fields["info"].update(
        {key: meta[key] for key in ("precision", "source", "source_sha256", "int8") if key in meta}
    )
    if meta.get("precision") == "int8":
        fields["name"] += " (int8)"
    return Network(run=run, backend="onnx", **fields)
