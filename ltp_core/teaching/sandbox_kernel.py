"""Start one grading kernel with limits: the launcher `SandboxKernelManager` runs (as a script).

    python .../sandbox_kernel.py --workdir DIR --connection-file FILE [limits] [--hide PATH ...] -- [kernel args]

It runs as a script, not as `-m ltp_core...`, so that starting a kernel does not import the
package (and torch) twice, and it uses the standard library only. In order it:

1. copies the connection file into DIR (the kernel's own new folder) and moves there;
2. builds the kernel's environment from scratch: PATH, the locale, the variables a kernel needs,
   HOME and TMPDIR in DIR, one thread per math library;
3. when it runs as root and `--user` names an account: in a private mount namespace, lays an
   empty, read-only folder over each `--hide` path (the course folder: gradebook, sources,
   hidden tests) and over each folder on the way to the Python installation that the account
   cannot enter (the installation itself stays reachable through it), then becomes that account;
   without a mount namespace it still becomes the account when the account can reach Python,
   and else stays root with a warning on stderr;
4. sets CPU-time, address-space, file-size, core and (as another account) process limits;
5. replaces itself with ipykernel, so interrupts and shutdowns reach the kernel directly.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import pwd
import resource
import shutil
import stat
import sys
import tempfile

KEPT_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "JPY_PARENT_PID",
                    "NBGRADER_EXECUTION", "LTP_PROFILE")
_MIB = 1 << 20
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 4096, 8192, 16384, 1 << 18


def _warn(message: str) -> None:
    print(f"ltp sandbox: {message}", file=sys.stderr, flush=True)


def can_enter(path: str, uid: int, gid: int) -> bool:
    """Whether the account (uid, gid, no other groups) may enter the folder `path`."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def closed_folders(path: str, uid: int, gid: int) -> list[str]:
    """The folders on the way to `path` (itself included, if a folder) that the account cannot enter."""
    path = os.path.realpath(path)
    parts = path.strip("/").split("/")
    folders = ["/" + "/".join(parts[:i]) for i in range(len(parts) + 1)]
    return [f for f in folders if os.path.isdir(f) and not can_enter(f, uid, gid)]


def needed_paths(workdir: str) -> list[str]:
    """What a kernel of this Python must reach: the interpreter, its installation and
    environment, the import path, and the ltp_core package (this file's package)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [os.path.realpath(sys.executable), sys.base_prefix, sys.prefix, package, workdir,
             *(p for p in sys.path if p and os.path.exists(p))]
    return sorted({os.path.realpath(p) for p in paths})


class _Mounts:
    """mount(2) and unshare(2) through libc (the standard library has neither on Python 3.11)."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def unshare(self) -> None:
        self._check(self.libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        self.mount(None, "/", None, _MS_REC | _MS_PRIVATE)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        self._check(self.libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

    def cover(self, folder: str, keep: list[str], staging: str) -> None:
        """Lay an empty read-only tmpfs over `folder`, with the entries `keep` (names directly in
        it) bound back in: they stay reachable, everything else in the folder vanishes."""
        staged = []
        for i, name in enumerate(keep):
            source = os.path.join(folder, name)
            stage = os.path.join(staging, str(i))
            if os.path.isdir(source):
                os.mkdir(stage)
            else:
                open(stage, "w").close()
            self.mount(source, stage, None, _MS_BIND | _MS_REC)
            staged.append((name, stage, os.path.isdir(source)))
        self.mount("tmpfs", folder, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "mode=0755,size=1m")
        for name, stage, is_dir in staged:
            target = os.path.join(folder, name)
            if is_dir:
                os.mkdir(target)
            else:
                open(target, "w").close()
            self.mount(stage, target, None, _MS_MOVE)
        self.mount(None, folder, None, _MS_BIND | _MS_REMOUNT_RDONLY)


_MS_REMOUNT_RDONLY = 32 | _MS_RDONLY  # MS_REMOUNT | MS_RDONLY (with MS_BIND: this mount only)


def isolate(account: pwd.struct_passwd, hide: list[str], needed: list[str]) -> list[str]:
    """Hide `hide` and open the way to `needed` for `account` in a new mount namespace; returns the
    folders covered. Raises OSError where the namespace or a mount is refused."""
    uid, gid = account.pw_uid, account.pw_gid
    covers: dict[str, set[str]] = {}
    for path in hide:
        if os.path.isdir(path):
            covers.setdefault(os.path.realpath(path), set())
    for path in needed:
        for folder in closed_folders(path, uid, gid):
            covers.setdefault(folder, set())
    for path in needed:  # every covered folder keeps the next step on the way to each needed path
        for folder, keep in covers.items():
            if path == folder:
                raise OSError(f"{path} is both needed by the kernel and hidden from it")
            if path.startswith(folder.rstrip("/") + "/"):
                keep.add(path[len(folder.rstrip("/")) + 1:].split("/")[0])
    if not covers:
        return []
    mounts = _Mounts()
    mounts.unshare()
    staging = tempfile.mkdtemp(prefix="ltp-stage-")
    for folder in sorted(covers, key=lambda f: f.count("/")):  # outer folders first
        mounts.cover(folder, sorted(covers[folder]), staging)
    shutil.rmtree(staging, ignore_errors=True)
    return sorted(covers)


def _limit(which: int, value: int) -> None:
    """Lower both the soft and the hard limit (the kernel cannot raise a hard limit again)."""
    _, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Start an ipykernel with limits (used by SandboxKernelManager).")
    p.add_argument("--workdir", required=True, help="the kernel's own folder (created by the manager)")
    p.add_argument("--connection-file", required=True)
    p.add_argument("--cpu-seconds", type=int, default=600)
    p.add_argument("--memory-mb", type=int, default=6144, help="0: no limit")
    p.add_argument("--file-size-mb", type=int, default=64)
    p.add_argument("--processes", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--user", default="nobody", help="the account to run as when started as root ('' keeps root)")
    p.add_argument("--hide", action="append", default=[], help="a folder the kernel must not see (repeatable)")
    p.add_argument("kernel_args", nargs="*", help="passed on to ipykernel")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    for name in ("cpu_seconds", "file_size_mb", "processes", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    workdir = os.path.realpath(args.workdir)
    account = None
    if os.geteuid() == 0 and args.user:
        try:
            account = pwd.getpwnam(args.user)
        except KeyError:
            raise SystemExit(f"--user {args.user!r} does not exist on this machine; name an existing "
                             "unprivileged account, or '' to keep root") from None
    connection = os.path.join(workdir, "connection.json")  # the kernel reads its own copy
    shutil.copyfile(args.connection_file, connection)
    os.chmod(workdir, 0o700)
    os.chmod(connection, 0o600)

    if account is not None:
        os.chown(workdir, account.pw_uid, account.pw_gid)
        os.chown(connection, account.pw_uid, account.pw_gid)
        needed = needed_paths(workdir)
        try:
            isolate(account, args.hide, needed)
        except OSError as e:
            closed = sorted({f for p in needed for f in closed_folders(p, account.pw_uid, account.pw_gid)})
            if closed:
                _warn(f"kernel stays root ({e}; and {args.user} cannot enter {closed})")
                account = None
            else:
                _warn(f"{args.hide} stay visible to the kernel ({e}); only their permissions protect them")

    env = {k: v for k, v in os.environ.items() if k in KEPT_ENVIRONMENT or k.startswith("LC_")}
    threads = str(args.threads)
    env.update(HOME=workdir, TMPDIR=workdir, MPLCONFIGDIR=os.path.join(workdir, ".matplotlib"),
               IPYTHONDIR=os.path.join(workdir, ".ipython"), PYTHONNOUSERSITE="1", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, PYDEVD_DISABLE_FILE_VALIDATION="1",
               LTP_SANDBOX_USER=account.pw_name if account is not None else pwd.getpwuid(os.getuid()).pw_name)
    os.chdir(workdir)

    _limit(resource.RLIMIT_CPU, args.cpu_seconds)
    if args.memory_mb > 0:
        _limit(resource.RLIMIT_AS, args.memory_mb * _MIB)
    _limit(resource.RLIMIT_FSIZE, args.file_size_mb * _MIB)
    _limit(resource.RLIMIT_CORE, 0)
    if account is not None:
        _limit(resource.RLIMIT_NPROC, args.processes)  # counts the account's processes: only for that account
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    os.umask(0o077)
    # the kernel's own log (e.g. its note on unencrypted local TCP) would repeat for every submission
    os.execve(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", connection,
                               "--IPKernelApp.log_level=ERROR", *args.kernel_args], env)


if __name__ == "__main__":
    main()
