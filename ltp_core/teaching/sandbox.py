"""The kernel manager nbgrader grades the course with: every kernel in this Python, with limits.

nbgrader runs each submitted notebook in a Jupyter kernel. The course's nbgrader_config.py sets
`c.Execute.kernel_manager_class` to `SandboxKernelManager`, which starts that kernel, whatever
kernelspec the submission names, as

    <this Python> .../sandbox_kernel.py --workdir DIR [limits] --hide COURSE -- <kernel arguments>

so a submission is always graded in the project's environment (a kernel without torch or
ltp_core would score every student zero without a word). `sandbox_kernel.py` says what the
launcher does: the kernel's own empty folder (removed at shutdown), a clean environment,
CPU-time, memory, file-size and process limits, and, when grading as root, another account
that cannot see the course folder. Per-cell time limits are nbgrader's (`c.Execute.timeout`).
What this stops and what it does not: docs/assignments.md.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Integer, List, Unicode

__all__ = ["SandboxKernelManager", "LAUNCHER"]

LAUNCHER = Path(__file__).with_name("sandbox_kernel.py")


class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that starts every kernel through the sandbox launcher, in this Python.

    The limits are traits, so nbgrader_config.py can set them, e.g.
    `c.SandboxKernelManager.memory_mb = 8192`. The course folder (`CourseDirectory.root`) and
    the gradebook's folder are hidden from the kernel where the launcher can hide them.
    """

    cpu_seconds = Integer(600, help="CPU seconds the whole kernel may use; past them it is killed").tag(config=True)
    memory_mb = Integer(6144, help="address space of the kernel in MiB (0: no limit)").tag(config=True)
    file_size_mb = Integer(64, help="largest file the kernel may write, in MiB").tag(config=True)
    processes = Integer(256, help="processes and threads of the kernel's account (when grading as root)"
                        ).tag(config=True)
    threads = Integer(1, help="OMP/MKL/OpenBLAS threads of the kernel").tag(config=True)
    user = Unicode("nobody", help="account the kernel runs as when grading as root ('' keeps root)").tag(config=True)
    hidden_paths = List(Unicode(), help="more folders the kernel must not see").tag(config=True)
    workdir_root = Unicode("", help="where the kernels' folders go (default: the system's temp folder)"
                           ).tag(config=True)

    _workdir: str | None = None

    def hidden(self) -> list[str]:
        """The folders hidden from the kernel: the course folder, the gradebook's, `hidden_paths`."""
        course = self.config.get("CourseDirectory", {})
        paths = list(self.hidden_paths)
        if course.get("root"):
            paths.append(str(course["root"]))
        db_url = str(course.get("db_url", ""))
        if db_url.startswith("sqlite:///"):
            paths.append(os.path.dirname(db_url[len("sqlite:///"):]))
        return sorted({os.path.realpath(p) for p in paths if p})

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        self._remove_workdir()
        self._workdir = tempfile.mkdtemp(prefix="ltp-grading-", dir=self.workdir_root or None)
        hide = [arg for path in self.hidden() for arg in ("--hide", path)]
        return [sys.executable, str(LAUNCHER), "--workdir", self._workdir,
                "--connection-file", os.path.realpath(self.connection_file),
                "--cpu-seconds", str(self.cpu_seconds), "--memory-mb", str(self.memory_mb),
                "--file-size-mb", str(self.file_size_mb), "--processes", str(self.processes),
                "--threads", str(self.threads), "--user", self.user, *hide, "--", *(extra_arguments or [])]

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            self._remove_workdir()

    def _remove_workdir(self) -> None:
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
