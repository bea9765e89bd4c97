"""Catalyst engines from config: cpu, gpu, dp (DataParallel) and ddp (gloo on CPU, NCCL on GPU).

``train.engine: ddp`` with ``--nproc N`` spawns N local workers through Catalyst's
``DistributedDataParallelEngine``. Several nodes: start the same command on every node with
``MASTER_ADDR``/``MASTER_PORT`` of node 0, ``NNODES`` and ``NODE_RANK`` set; each node
spawns ``--nproc`` workers and ranks are ``NODE_RANK * nproc + local_rank``.

catalyst 22.4's ``all_gather`` helper moves every buffer to CUDA, so metric syncing under
gloo fails on CPU; :func:`patch_catalyst_all_gather` swaps in a device-agnostic version.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState
from catalyst import dl

from steel_defect.constants import ENGINES
from steel_defect.errors import UserError

log = logging.getLogger(__name__)

_AMP = {None: "no", "fp16": "fp16", "bf16": "bf16"}  # train.amp -> accelerate's mixed_precision


def all_gather(data: Any) -> list[Any]:
    """Gather any picklable object from every process (gloo or NCCL); ``[data]`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [data]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, data)
    return gathered


def patch_catalyst_all_gather() -> None:
    """Replace catalyst's CUDA-only ``all_gather`` everywhere catalyst imported it by name."""
    import catalyst.metrics._classification as classification
    import catalyst.metrics._confusion_matrix as confusion
    import catalyst.metrics._segmentation as segmentation
    import catalyst.utils.distributed as distributed

    for module in (distributed, classification, confusion, segmentation):
        module.all_gather = all_gather


def free_port() -> int:
    """A free TCP port on localhost for a single-node DDP rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ONEDNN_MAX_CPU_ISA values (oneDNN's names) below and at or above native bf16 compute.
LOWER_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
BF16_ISAS = (
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "DEFAULT",
    "ALL",
)


def native_bf16(on_gpu: bool) -> bool:
    """Whether the device computes bf16 natively, so that bf16 autocast is a speed-up: on this
    project's 2-core CPU with AMX, 1.5x the images/s of fp32 (bench/train.py). Elsewhere the CPU
    emulates bf16, slower than fp32, and so does oneDNN capped below bf16 by
    ``ONEDNN_MAX_CPU_ISA`` (how an AVX2-only machine is imitated on this one)."""
    if on_gpu:
        return torch.cuda.is_bf16_supported()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in BF16_ISAS and cap in LOWER_ISAS:
        # oneDNN is capped below bf16 (an AVX2 machine imitated on this one): it would emulate
        # bf16, so auto means fp32 here as it does on the machine being imitated
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the guard
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def build_engine(name: str, nproc: int = 1, amp: str | None = None):
    """Catalyst engine for ``name`` (one of :data:`ENGINES`).

    ``amp``: fp16 needs a GPU and is ignored on the CPU with a note; bf16 runs on both (on the
    CPU through ``torch.autocast("cpu")``; fast where the CPU has bf16 instructions); ``auto``
    is bf16 where :func:`native_bf16`, else fp32.
    """
    if name not in ENGINES:
        raise UserError(f"engine '{name}' is unknown; valid: {', '.join(ENGINES)}")
    cuda = torch.cuda.is_available()
    if name in ("gpu", "dp") and not cuda:
        raise UserError(f"engine '{name}' needs a CUDA device and none is visible; use --engine cpu")
    on_gpu = cuda and name != "cpu"
    if amp == "auto":
        amp = "bf16" if native_bf16(on_gpu) else None
        log.info("train.amp=auto: %s", amp or "fp32 (no native bf16 on this device)")
    if amp == "fp16" and not on_gpu:
        log.info("train.amp=fp16 ignored: fp16 needs a GPU and this run is on the CPU (bf16 runs there)")
        amp = None
    kwargs = {"mixed_precision": _AMP[amp]}
    if name != "ddp":
        # accelerate keeps one precision per process and refuses another one later; a process
        # that trains twice (the demo, the tests) may change train.amp between runs.
        AcceleratorState._reset_state()
    if name == "cpu":
        return dl.CPUEngine(**kwargs)
    if name == "gpu":
        return dl.GPUEngine(**kwargs)
    if name == "dp":
        return dl.DataParallelEngine(**kwargs)
    patch_catalyst_all_gather()
    nodes = int(os.environ.get("NNODES", "1"))
    node_rank = int(os.environ.get("NODE_RANK", "0"))
    port = os.environ.get("MASTER_PORT") or (str(free_port()) if nodes == 1 else "29500")
    os.environ["MASTER_PORT"] = port  # spawned workers must agree on the port
    return dl.DistributedDataParallelEngine(
        address=os.environ.get("MASTER_ADDR", "127.0.0.1"),
        port=port,
        world_size=nodes * nproc,
        workers_dist_rank=node_rank * nproc,
        num_node_workers=nproc,
        process_group_kwargs={"backend": "nccl" if cuda else "gloo"},
        cpu=not cuda,
        **kwargs,
    )
