"""The OpenVINO backend: an export on OpenVINO's own CPU runtime, in fp32, bf16 or int8, without torch.

    net = load_openvino("export/fold0_best.onnx", threads=2)                    # fp32
    net = load_openvino("export/fold0_best.onnx", threads=2, precision="bf16")  # AMX / AVX512-BF16 only
    net = load_openvino("export/fold0_best.int8.xml", threads=2)                # export --int8 (NNCF)

It reads the files the onnx backend reads (:mod:`.onnx_backend`): an ``.onnx`` export, whose
``steel_defect`` metadata OpenVINO's ONNX reader keeps under ``rt_info["framework"]``, and the
int8 IR (``.int8.xml`` with its ``.bin``) that ``steel-defect export --int8`` writes beside an
export through NNCF (:mod:`.openvino_export`), which carries the same entry under
``rt_info["steel_defect"]``. A ``.pth`` runs here through the onnx backend's cached export
(``load_network(path, backend="openvino")``). The batch dimension stays dynamic.
"""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path

import numpy as np

from steel_defect.errors import UserError
from steel_defect.inference.networks import Network, check_precision, default_threads, describe_state
from steel_defect.inference.onnx_backend import FORMAT, METADATA_KEY, VERSION, ExportError

# OpenVINO's CPU plugin for a sync request of 1-4 frames on 2 threads: LATENCY (one stream using
# both threads) or THROUGHPUT (two streams of one thread: one request runs on one thread). On the
# 2-core AVX2 EPYC with nothing else running, the line's student took 52 ms a frame with LATENCY
# against 88 with THROUGHPUT (1.7x; ONNX Runtime 63), batch 1 and 4 alike; with the machine shared
# (load average ~4) THROUGHPUT had been 1.12x faster (bench/backends.py, docs/inference.md). A line
# machine runs `watch` and little else, and a loss of 1.12x under load costs less than 1.7x idle.
PERFORMANCE_HINT = "LATENCY"
# inference.precision -> OpenVINO's INFERENCE_PRECISION_HINT. fp32 is asked for explicitly:
# on an AMX CPU OpenVINO would otherwise run bf16 by default.
RUNTIME_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


@cache
def core():
    """One OpenVINO ``Core`` per process (it loads the CPU plugin once)."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError(
            "the openvino backend needs OpenVINO: pip install 'steel-defect[openvino]'"
        ) from None
    return ov.Core()


def cpu_capabilities() -> tuple[str, list[str]]:
    """(the CPU's name, OpenVINO's OPTIMIZATION_CAPABILITIES of it: FP32, INT8, BF16...)."""
    ov_core = core()
    return (
        str(ov_core.get_property("CPU", "FULL_DEVICE_NAME")),
        [str(c) for c in ov_core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")],
    )


def has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16), as OpenVINO reports it."""
    return "BF16" in cpu_capabilities()[1]


def resolve_precision(precision: str) -> str:
    """``inference.precision`` for this backend: ``auto`` is bf16 where the CPU computes it
    natively, else fp32; bf16 on a CPU without it is refused, naming what the CPU offers."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if has_bf16() else "fp32"
    if precision == "bf16" and not has_bf16():
        name, caps = cpu_capabilities()
        raise UserError(
            f"inference.precision: bf16 needs a CPU that computes bf16 natively (AMX or AVX-512 "
            f"BF16); this CPU ({name}) offers {', '.join(caps)}. Use fp32, or int8 "
            "(`steel-defect export --int8`)"
        )
    return precision


def _metadata(model, path: Path) -> dict:
    # An IR's own entry first: one converted from an export keeps the export's under "framework".
    for keys in ([METADATA_KEY], ["framework", METADATA_KEY]):
        if model.has_rt_info(keys):
            meta = json.loads(model.get_rt_info(keys).astype(str))
            break
    else:
        raise ExportError(f"{path} is not a steel-defect export (no '{METADATA_KEY}' metadata)")
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise ExportError(f"{path}: unsupported export format {meta.get('format')} v{meta.get('version')}")
    return meta


def read_model(path: Path):
    """(OpenVINO model, its ``steel_defect`` metadata) of an ``.onnx`` export or an ``.xml`` IR."""
    if not path.is_file():
        raise ExportError(f"model {path} does not exist")
    try:
        model = core().read_model(str(path))
    except RuntimeError as err:  # truncated file, not a model, an IR without its .bin
        raise ExportError(f"model {path} cannot be loaded by OpenVINO: {err}") from None
    return model, _metadata(model, path)


def compile_model(model, threads: int | None, precision: str, hint: str = PERFORMANCE_HINT):
    """``model`` compiled for the CPU; ``precision`` is fp32, bf16 or int8 (already resolved);
    ``hint``: OpenVINO's PERFORMANCE_HINT (bench/backends.py times both)."""
    config = {
        "INFERENCE_NUM_THREADS": threads or default_threads(),
        "PERFORMANCE_HINT": hint,
        "INFERENCE_PRECISION_HINT": RUNTIME_PRECISION[precision],
    }
    return core().compile_model(model, "CPU", config)


def load_openvino(path: str | Path, threads: int | None = None, precision: str = "fp32") -> Network:
    """An ``.onnx`` export or an ``.xml`` IR on OpenVINO's CPU runtime. ``precision``: fp32,
    bf16 (refused on a CPU without it), or auto (:func:`resolve_precision`); an int8 file runs
    int8 whatever it says (its float parts in fp32)."""
    path = Path(path)
    if path.suffix not in (".onnx", ".xml"):
        raise ExportError(
            f"{path} is not an .onnx export or an OpenVINO .xml; a checkpoint runs on OpenVINO with "
            "load_network(path, backend='openvino')"
        )
    precision = resolve_precision(precision)
    model, meta = read_model(path)
    if meta.get("precision") == "int8":
        precision = "int8"
    elif precision == "int8":
        raise ExportError(f"{path} is fp32; int8 runs the .int8.xml that `steel-defect export --int8` writes")
    try:
        compiled = compile_model(model, threads, precision)
    except RuntimeError as err:  # an operator the CPU plugin lacks
        raise ExportError(f"model {path} cannot be compiled by OpenVINO: {err}") from None
    return network_from_compiled(path, compiled, meta, precision)


def network_from_compiled(path: Path, compiled, meta: dict, precision: str) -> Network:
    """The :class:`Network` of a compiled export. Each thread gets its own infer request: a
    request is not thread-safe, and the web app predicts from several threads."""
    local = threading.local()
    outputs = len(compiled.outputs)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        # share_outputs=False: the arrays are copies the caller owns, not views of the request's
        # buffers that the next call overwrites
        result = request.infer({0: np.ascontiguousarray(batch, np.float32)}, share_outputs=False)
        return result[0], result[1] if outputs > 1 else None

    fields = describe_state(meta, path)
    fields["info"].update(
        {key: meta[key] for key in ("precision", "source", "source_sha256", "int8") if key in meta}
    )
    fields["info"]["runtime_precision"] = precision
    if precision != "fp32":
        fields["name"] += f" ({precision})"
    return Network(run=run, backend="openvino", **fields)
