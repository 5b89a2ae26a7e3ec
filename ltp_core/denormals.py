"""Flush denormal floats to zero in every thread that does torch's CPU work.

Soft-masked weights make denormal floats: w * sigmoid(z) for a pruned weight is tiny, and the
products a convolution forms with it, or exp(-z) inside the sigmoid, fall below float32's
smallest normal number (1.2e-38). x86 CPUs take a slow path for every denormal operand, and a
CPU training step measured several times slower for it.

`torch.set_flush_denormal(True)` fixes this, but only for the thread that calls it: the CPU's
flush-to-zero flags (MXCSR) belong to each thread. Threads created afterwards inherit them, but
torch's OpenMP worker threads usually exist already (the first parallel op starts them, and they
run the convolutions and compiled kernels), and there a ResNet-18 LTP step measured 1.33x dense
instead of 1.17x. `flush_denormals()` therefore also runs the call once on every thread of the
OpenMP team, through the runtime's `GOMP_parallel` entry point (libgomp, and the LLVM/Intel
runtimes that export it too).
"""
from __future__ import annotations

import ctypes
import functools
import sys

import torch

__all__ = ["flush_denormals"]

_TEAM_TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime this process has loaded (torch's), or None where none is found."""
    if not sys.platform.startswith("linux"):
        return None
    torch.ones(1 << 16).sum()  # make sure torch has loaded (and started) its OpenMP runtime
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if line.rstrip().endswith((".so", ".so.1", ".so.5"))}
    for path in sorted(paths):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(("libgomp", "libiomp", "libomp")):
            lib = ctypes.CDLL(path)  # already loaded: the same runtime, not a second copy
            if hasattr(lib, "GOMP_parallel"):
                return lib
    return None


def flush_denormals() -> bool:
    """Treat denormal floats as zero (flush-to-zero and denormals-are-zero) in the calling
    thread and in every thread of torch's OpenMP team; returns whether the team was reached.

    Call it once before training on a CPU (`fit`, `ltp-train` and the benchmark do). Without an
    OpenMP runtime that exports `GOMP_parallel` (non-Linux, other builds) only the calling
    thread and the threads created after it are covered, which is what
    `torch.set_flush_denormal(True)` alone gives.
    """
    if not torch.set_flush_denormal(True):
        return False  # this CPU has no such flags (not x86 with SSE3)
    lib = _openmp_runtime()
    if lib is None or torch.get_num_threads() < 2:
        return False
    task = _TEAM_TASK(lambda _: torch.set_flush_denormal(True))
    lib.GOMP_parallel.argtypes = [_TEAM_TASK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    # Every thread of a team of torch's size runs `task` once (the caller included); ctypes
    # releases the GIL around the call, and each thread takes it to run the Python callback.
    lib.GOMP_parallel(task, None, torch.get_num_threads(), 0)
    return True
