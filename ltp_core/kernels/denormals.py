"""Flush denormal floats to zero in every thread that does torch's CPU work.

Soft-masked weights make denormal floats: w * sigmoid(z) for a pruned weight is tiny, and the
products a convolution forms with it, or exp(-z) inside the sigmoid, fall below float32's
smallest normal number (1.2e-38). x86 CPUs take a slow path for every denormal operand, and a
CPU training step measured several times slower for it.

`torch.set_flush_denormal(True)` fixes this, but only for the thread that calls it: the CPU's
flush-to-zero flags (MXCSR) belong to each thread. Threads created afterwards inherit them, but
torch's OpenMP worker threads usually exist already (the first parallel op starts them, and they
run the convolutions and compiled kernels), and GNU's OpenMP runtime (libgomp, which Linux
wheels of torch ship) does not pass the flags on to them. `flush_denormals()` therefore also
runs the call once on every thread of the calling thread's OpenMP team, through the runtime's
`GOMP_parallel` entry point. (LLVM's and Intel's runtimes copy the caller's flags into their
workers at every parallel region themselves; there the extra call is harmless.)
"""
from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import torch

__all__ = ["flush_denormals"]

_TEAM_TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _gomp_parallel():
    """`GOMP_parallel` of the OpenMP runtime torch itself uses, or None where there is none.

    Looked up through torch's CPU library, so the dynamic linker resolves it among that
    library's own dependencies: the runtime torch runs on, not some other copy.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        gomp_parallel = lib.GOMP_parallel
    except (OSError, AttributeError):  # another layout or build, or no OpenMP
        return None
    gomp_parallel.argtypes = [_TEAM_TASK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp_parallel.restype = None
    return gomp_parallel


def flush_denormals() -> bool:
    """Treat denormal floats as zero (flush-to-zero and denormals-are-zero) in the calling
    thread and in every thread of its OpenMP team (torch's intra-op threads); returns whether
    the team was reached.

    Call it once, from the thread that trains, before training on a CPU (`fit`, `ltp-train`
    and the benchmark do). Where the CPU has no such flags (not x86), or no `GOMP_parallel` is
    found (not Linux, other builds), or torch runs one thread, it covers the calling thread and
    the threads created after it, which is what `torch.set_flush_denormal(True)` alone gives.
    """
    if not torch.set_flush_denormal(True):
        return False  # this CPU has no such flags
    gomp_parallel = _gomp_parallel()
    if gomp_parallel is None or torch.get_num_threads() < 2:
        return False
    task = _TEAM_TASK(lambda _: torch.set_flush_denormal(True))
    # Every thread of a team of torch's size runs `task` once (the caller included); ctypes
    # releases the GIL around the call, and each thread takes it to run the Python callback.
    gomp_parallel(task, None, torch.get_num_threads(), 0)
    return True
