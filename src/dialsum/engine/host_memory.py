"""Host memory allocation for training and generation on the CPU.

glibc's malloc serves each block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it
on `free`, and it hands a freed heap top back to the kernel. A CPU training step allocates and frees the same
large tensors every step (label logits over the vocabulary, activations, gradients), so every step pays the
kernel to map and zero those pages again: on a QLoRA step with a 151,936-row vocabulary that kernel time was
more than the arithmetic (bench/host_memory.py). `keep_freed_memory()` makes glibc serve every block from its
heaps and keep freed memory for the next step. Resident memory then stays near the run's peak, which a
training process reaches on every step anyway.

GPU runs are untouched: device memory has PyTorch's caching allocator. The setting `keep_freed_host_memory`
(DIALSUM_KEEP_FREED_HOST_MEMORY=false) turns this off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h: bytes free at the heap top before it is given back
M_MMAP_MAX = -4  # glibc malloc.h: how many blocks may be mmap-ed at once; 0 serves all from heaps
_applied = False


def supported() -> bool:
    """True where the C library is glibc on Linux, whose malloc this module tunes."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (once per process); False where libc is not glibc."""
    global _applied
    if _applied:
        return True
    if not supported():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        return False
    _applied = True
    log.debug("host memory: glibc malloc keeps freed memory (no mmap per block, no heap trim)")
    return True


def prepare_for(device: torch.device, enabled: bool) -> bool:
    """Apply `keep_freed_memory` when the run computes on the CPU and the setting allows it; True if in effect."""
    return enabled and device.type == "cpu" and keep_freed_memory()
