"""Reproducible training: what ``train.deterministic`` and ``train.threads`` switch on.

Seeds alone make a run repeat on the same machine with the same number of torch threads:
catalyst reseeds torch, numpy and ``random`` at every epoch and loader, and the augmentation
pipelines and batch mixing are reseeded per epoch (see ``EpochCallback``). What still moves
between machines is the thread count: oneDNN splits the reduction of a convolution's weight
gradient over the threads, so 1 and 2 threads add the same products in a different order
(forward passes match bit for bit; after one step the weights differ by about 1e-8, and
training amplifies that). ``train.deterministic`` therefore pins the thread count
(``train.threads``, 1 when null) and asks torch for deterministic kernels, so a run repeats
bit for bit on any machine with the same CPU instruction set and library versions.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def configure(deterministic: bool, threads: int | None) -> int:
    """Apply ``train.deterministic`` / ``train.threads`` to this process; returns the thread count.

    Called in every training process (DDP workers too), before the model is built.
    """
    if deterministic and threads is None:
        threads = 1  # the only count every machine can give
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it reads this before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn where a GPU kernel has no twin
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        log.info("deterministic training: %d torch thread(s), deterministic kernels", threads)
    return torch.get_num_threads()
