"""flush_denormals: denormal results become 0 in torch's worker threads too, not just the caller's."""
import platform
import subprocess
import sys

import pytest
import torch

from ltp_core import flush_denormals

# Two threads, started before the flags are set (as in any session that made a tensor first);
# 1e-20 ** 2 = 1e-40 is a denormal float32, and the product is split across both threads.
_SCRIPT = """
import torch
from ltp_core import flush_denormals
torch.set_num_threads(2)
tiny = torch.full((1 << 20,), 1e-20)
(tiny * tiny).sum()
{flush}
print(torch.count_nonzero(tiny * tiny).item())
"""


def _denormals_left(flush: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(flush=flush)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


def _runtime_is_libgomp() -> bool:
    with open("/proc/self/maps") as maps:
        return "libgomp" in maps.read()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")),
                    reason="x86 flush-to-zero flags, reached through a Linux OpenMP runtime")
def test_denormal_results_are_zero_in_every_thread():
    if _runtime_is_libgomp():  # GNU's runtime does not pass the caller's flags to its workers...
        assert _denormals_left("torch.set_flush_denormal(True)") > 0
    # ...flush_denormals reaches them
    assert _denormals_left("assert flush_denormals()") == 0


def test_flush_denormals_with_one_thread_covers_the_caller():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert flush_denormals() is False  # no team to reach
        if torch.set_flush_denormal(True):  # an x86 CPU: the caller's own results are flushed
            tiny = torch.full((8,), 1e-20)
            assert torch.count_nonzero(tiny * tiny) == 0
    finally:
        torch.set_num_threads(threads)
