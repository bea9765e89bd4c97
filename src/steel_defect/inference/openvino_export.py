"""An fp32 export -> an int8 OpenVINO IR, by NNCF post-training quantisation on real frames.

    quantize_openvino_int8("export/fold0_best.onnx", "export/fold0_best.int8.xml", calibration_frames)
    net = load_openvino("export/fold0_best.int8.xml")     # or precision int8 beside fold0_best.onnx

``steel-defect export --int8`` (:mod:`.export`) calls it with the calibration frames it gives ONNX
Runtime's quantizer and checks the result the same way: inside the tuned pipeline, on held-out
frames. The IR is the ``.xml`` graph with its ``.bin`` weights beside the export, named
``X.int8.xml`` for ``X.onnx``, so that ``inference.precision: int8`` on the openvino backend finds
it next to the fp32 export. Its ``rt_info`` carries the export's ``steel_defect`` metadata with
``precision: int8`` and the calibration and Dice change under ``int8``, as ``X.int8.onnx`` does.

NNCF's ``MIXED`` preset mirrors the ONNX int8 model: symmetric per-channel int8 weights and
asymmetric 8-bit activations. The sigmoid stays in float, as it does there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from steel_defect.inference.networks import Network, describe_state, network_input
from steel_defect.inference.onnx_backend import METADATA_KEY
from steel_defect.inference.openvino_backend import read_model


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test's capture, later the terminal)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _Stderr()


def _save(model, meta: dict, out: Path) -> Path:
    """Write ``model`` with ``meta`` as the IR ``out`` (``.xml`` and ``.bin``). The ``.bin`` is
    moved into place first, so an ``.xml`` never names weights that are not there yet."""
    import openvino as ov

    model.set_rt_info(json.dumps(meta, default=float), [METADATA_KEY])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        xml = Path(tmp) / out.name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        os.replace(xml.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(xml, out)
    return out


def quantize_openvino_int8(
    fp32: str | Path, out: str | Path, frames: list[np.ndarray], extra: dict | None = None
) -> Path:
    """Static int8 IR of an fp32 ``.onnx`` export at ``out`` (``.xml``), calibrated on uint8 ``frames``."""
    fp32, out = Path(fp32), Path(out)
    model, meta = read_model(fp32)
    network = Network(run=None, **describe_state(meta, fp32))  # its validation transform, no session
    # NNCF's log and progress bars go to stdout, where `steel-defect export` prints its JSON summary
    with contextlib.redirect_stdout(sys.stderr):
        import nncf

        # its own handler holds the stdout of its import (others, a test's log capture, stay)
        for handler in logging.getLogger("nncf").handlers:
            if type(handler) is logging.StreamHandler:
                handler.setStream(_STDERR)
        dataset = nncf.Dataset(frames, lambda frame: network_input(network, [frame]))
        quantized = nncf.quantize(
            model, dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(frames)
        )
    meta = {
        **meta,
        "precision": "int8",
        "int8": {"calibration_frames": len(frames), "method": "nncf", **(extra or {})},
    }
    return _save(quantized, meta, out)


def set_openvino_int8_report(path: str | Path, report: dict, out: str | Path | None = None) -> Path:
    """Merge ``report`` (the Dice change against fp32) into an int8 IR's metadata; write it to
    ``out`` (default: in place) and return where it went."""
    path = Path(path)
    model, meta = read_model(path)
    meta["int8"] = {**meta.get("int8", {}), **report}
    return _save(model, meta, Path(out) if out is not None else path)
