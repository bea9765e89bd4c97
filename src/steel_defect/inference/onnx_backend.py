"""The ONNX Runtime backend: an exported network on the CPU execution provider, without torch.

An export (:mod:`steel_defect.inference.onnx_export`, ``steel-defect export``) is one ``.onnx`` file
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

from steel_defect.errors import UserError
from steel_defect.inference.networks import Network, default_threads, describe_state

FORMAT = "steel-defect-onnx"
VERSION = 1
METADATA_KEY = "steel_defect"


class ExportError(UserError):
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


def open_session(path: Path, threads: int | None, spin: bool | None = None):
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


def load_onnx(path: str | Path, threads: int | None = None, spin: bool | None = None) -> Network:
    """An ``.onnx`` export as it is. ``spin``: let idle worker threads busy-wait (default
    :data:`SPIN`). A ``.pth`` checkpoint runs here through its cached export
    (:func:`steel_defect.inference.onnx_export.load_exported`, which needs torch to write it)."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportError(
            f"{path} is not an .onnx file; a checkpoint runs on ONNX Runtime with "
            "load_network(path, backend='onnx')"
        )
    if not path.is_file():
        raise ExportError(f"ONNX model {path} does not exist")
    session = open_session(path, threads, spin)
    return network_from_session(path, session, read_metadata(session, path))


def network_from_session(path: Path, session, meta: dict) -> Network:
    """The :class:`Network` of an open ONNX Runtime ``session`` of the export at ``path``."""
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
