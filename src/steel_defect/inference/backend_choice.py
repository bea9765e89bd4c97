"""Which runtime runs a model file: the named backend with the file its precision asks for, or
under ``auto`` the fastest CPU backend measured for this network on this CPU.

    net = open_network("export/fold0_best.onnx", "openvino", "cpu", threads=2, precision="int8")
    net = load_fastest("fold0/checkpoints/best.pth", threads=2, precision="fp32")   # backend auto

``auto`` (:func:`load_fastest`): on a CPU with ONNX Runtime and OpenVINO both installed, the first
load of a network opens it on both, runs one frame through each a few times, interleaved, and
keeps the faster; the other is dropped. The choice and both timings are stored in
``$XDG_CACHE_HOME/steel-defect/backend-choice.json`` (default ``~/.cache``), keyed on the model
file's SHA-256, OpenVINO's performance hint, the precision, the thread count and the CPU's model
name, so later loads open the winner alone and pick the same backend every time. A retrained
checkpoint, another machine or another ``--threads`` is measured again. The measurement takes
about a second (it is capped by :data:`BUDGET_S` once the first run says how long one frame
takes) and is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.errors import UserError
from steel_defect.inference.gate import coarse_shape
from steel_defect.inference.networks import (
    Network,
    check_backend,
    check_precision,
    default_threads,
    installed_cpu_backends,
)
from steel_defect.inference.onnx_backend import ExportError, file_sha256
from steel_defect.inference.onnx_export import input_shape
from steel_defect.inference.openvino_backend import PERFORMANCE_HINT, load_openvino

log = logging.getLogger(__name__)

# Timed runs of each backend, and the seconds the timed runs may take in all (at least one each).
RUNS = 3
BUDGET_S = 1.0
# Measurements kept in the choice file, the latest first: enough for every model of a few
# pipelines on a few thread counts, and the file of a machine that tries many models stays small.
KEEP = 64
# The int8 twin of an export X.onnx that `steel-defect export --int8` writes beside it, per backend.
INT8_SUFFIX = {"onnx": ".int8.onnx", "openvino": ".int8.xml"}


def _is_int8_file(path: Path) -> bool:
    return path.name.endswith(tuple(INT8_SUFFIX.values()))


def int8_model(path: Path, backend: str) -> Path:
    """The int8 model that ``inference.precision: int8`` runs for ``path`` on ``backend``: the
    file itself when it is int8, else the twin ``export --int8`` wrote beside an export."""
    if _is_int8_file(path):
        return path
    twin = path.with_name(f"{path.stem}{INT8_SUFFIX[backend]}")
    if path.suffix == ".pth":
        raise ExportError(
            f"{path}: inference.precision int8 runs the int8 model that `steel-defect export --int8` "
            "writes beside an export (X.int8.onnx, X.int8.xml); export this checkpoint and give its "
            ".onnx (or the .int8 file) as the model, or use precision fp32"
        )
    if not twin.is_file():
        raise ExportError(
            f"{path}: inference.precision int8 on {backend} runs {twin.name} beside it, which does "
            f"not exist; write it with `steel-defect export --int8` (with {backend} installed), or "
            "use precision fp32"
        )
    return twin


def open_network(path, backend: str, device: str = "cpu", threads: int | None = None, precision="fp32"):
    """``path`` (``.pth``, ``.onnx``, ``.xml``) on the named ``backend`` at ``precision``.
    An ``.onnx`` file given to torch runs on ONNX Runtime, an ``.xml`` on OpenVINO."""
    check_backend(backend)
    check_precision(precision)
    path = Path(path)
    if path.suffix == ".xml":
        backend = "openvino"
    elif path.suffix == ".onnx" and backend == "torch":
        backend = "onnx"
    if precision == "bf16" and backend != "openvino":
        raise UserError(
            f"inference.precision: bf16 runs on the openvino backend only, not on {backend}; "
            "set inference.backend openvino (or auto), or precision fp32"
        )
    if precision == "int8" and backend != "torch":
        path = int8_model(path, backend)
    if backend == "torch":
        if precision == "int8":
            raise UserError(
                "inference.precision: int8 runs on the onnx or openvino backend (an `export --int8` "
                "model), not on torch; set inference.backend, or precision fp32"
            )
        from steel_defect.inference.torch_backend import load_torch

        return load_torch(path, device, threads)
    if backend == "onnx":
        if path.suffix == ".pth":
            from steel_defect.inference.onnx_export import load_exported

            return load_exported(path, threads)
        from steel_defect.inference.onnx_backend import load_onnx

        return load_onnx(path, threads)
    if path.suffix == ".pth":
        from steel_defect.inference.onnx_export import load_exported

        return load_exported(path, threads, backend="openvino", precision=precision)

    return load_openvino(path, threads, "fp32" if precision == "int8" else precision)


def open_coarse(network: Network, source, scale: int, threads: int | None, precision: str = "fp32"):
    """(network, input (H, W)) of ``network``'s coarse pass at ``scale`` (the clean-frame gate,
    :mod:`.gate`), on ``network``'s own backend. Torch runs any input size, so it is the network
    itself; an export has a fixed frame size, so the coarse pass runs its own export of the
    checkpoint ``source``, written once beside it (int8 pipelines run it in fp32: the int8 twin is
    calibrated at the full size)."""
    _, height, width = input_shape(network)
    shape = coarse_shape((height, width), scale)
    if network.backend == "torch":
        return network, shape
    source = Path(source)
    if source.suffix != ".pth" or not source.is_file():
        raise ExportError(
            f"the clean-frame gate runs {network.path} at 1/{scale} scale through an export of its "
            f"checkpoint, and {source} is not one: keep the tuned pipeline's .pth files where it names "
            "them, or turn the gate off (--no-clean-gate, inference.clean_gate: false)"
        )
    from steel_defect.inference.onnx_export import load_exported

    precision = "fp32" if precision == "int8" else precision
    return load_exported(source, threads, backend=network.backend, precision=precision, input_hw=shape), shape


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), part of the key a measurement is stored under."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def choice_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "steel-defect" / "backend-choice.json"


def read_choices(path: Path | None = None) -> dict:
    path = path or choice_file()
    try:
        choices = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # unreadable or cut short: measure again, write anew
        log.warning("ignoring %s (%s): the backends will be measured again", path, err)
        return {}
    if not isinstance(choices, dict):
        return {}
    return {key: entry for key, entry in choices.items() if isinstance(entry, dict)}


def _record(key: str, entry: dict) -> Path | None:
    path = choice_file()
    choices = read_choices(path)
    choices[key] = {**entry, "measured_at": time.time()}
    latest = sorted(choices, key=lambda k: choices[k].get("measured_at", 0), reverse=True)[:KEEP]
    choices = {k: choices[k] for k in latest}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            handle.write(json.dumps(choices, indent=1, sort_keys=True))
    except OSError as err:  # a read-only home: the choice holds for this process only
        log.info("cannot store the backend choice in %s (%s)", path, err)
        return None
    return path


def measure(networks: dict[str, Network]) -> tuple[dict[str, float], int]:
    """({backend: fastest seconds of a batch of one frame}, timed runs each), the backends run
    in turn so that a busy moment of the machine slows both."""
    first = next(iter(networks.values()))
    shape = input_shape(first)
    batch = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    warm = {}
    for name, network in networks.items():  # the first run allocates and, on OpenVINO, reshapes
        start = time.perf_counter()
        network.run(batch)
        warm[name] = time.perf_counter() - start
    runs = int(min(RUNS, max(1, BUDGET_S // max(sum(warm.values()), 1e-6))))
    best = dict.fromkeys(networks, float("inf"))
    for _ in range(runs):
        for name, network in networks.items():
            start = time.perf_counter()
            network.run(batch)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, runs


def load_fastest(path, threads: int | None = None, precision: str = "fp32") -> Network:
    """``path`` on the CPU backend measured fastest for it here (see the module's docstring);
    with one CPU backend installed, that one; with none, torch on the CPU."""
    check_precision(precision)
    path = Path(path)
    threads = threads or default_threads()
    candidates = installed_cpu_backends()
    if path.suffix == ".xml" or precision == "bf16":
        candidates = [b for b in candidates if b == "openvino"] or ["openvino"]
    if len(candidates) <= 1:
        return open_network(path, candidates[0] if candidates else "torch", "cpu", threads, precision)
    if not path.is_file():
        raise ExportError(f"model {path} does not exist")
    # OpenVINO's hint is in the key: a choice measured under another hint (THROUGHPUT, before
    # LATENCY ran a request on every thread) timed another runtime and is measured again.
    key = f"{file_sha256(path)}|openvino {PERFORMANCE_HINT}|{precision}|{threads} threads|{cpu_name()}"
    known = read_choices().get(key, {})
    if known.get("backend") in candidates:
        network = open_network(path, known["backend"], "cpu", threads, precision)
        log.info(
            "backend auto for %s: %s (measured on this CPU, %s)", path.name, known["backend"], choice_file()
        )
        return network
    networks, errors = {}, []
    for backend in candidates:
        try:
            networks[backend] = open_network(path, backend, "cpu", threads, precision)
        except UserError as err:  # e.g. only one int8 twin was written: the other backend runs
            errors.append(err)
            log.info("backend auto for %s: %s cannot run it (%s)", path.name, backend, err)
    if not networks:
        raise errors[0]
    seconds, runs = measure(networks) if len(networks) > 1 else ({b: None for b in networks}, 0)
    winner = min(networks, key=lambda b: (seconds[b] or 0.0, candidates.index(b)))
    entry = {"backend": winner, "seconds": seconds, "runs": runs, "model": str(path)}
    where = _record(key, entry) if runs else None
    timings = ", ".join(f"{b} {s * 1000:.1f} ms" for b, s in seconds.items() if s is not None)
    log.info(
        "backend auto for %s: %s, measured on this CPU (%s, %d threads; a frame: %s)%s",
        path.name,
        winner,
        cpu_name(),
        threads,
        timings or "one backend could run it",
        f"; stored in {where}" if where else "",
    )
    return networks[winner]
