"""Writing files so that a crash never leaves a half-written one: a temporary file, then a rename."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_save", "standard_json", "write_target", "nearest_existing", "publish"]


def _umask_mode() -> int:
    # mkstemp creates files 0600; a finished file gets the mode open() would have given it.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def nearest_existing(path: str | os.PathLike) -> Path | None:
    """`path`, or its nearest ancestor, that exists (None when none does)."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists()), None)


def write_target(path: str | os.PathLike) -> Path:
    """Where a write to `path` goes: a symlink's target (the link stays a link). An existing
    folder is an IsADirectoryError naming it; a file where one of its folders should be, a
    NotADirectoryError naming that file."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path")
    blocker = nearest_existing(path.parent)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {blocker} is a file, not a folder")
    return path


def _is_device(path: Path) -> bool:
    # /dev/null, /dev/stdout, a named pipe: written into, never replaced
    return path.exists() and not path.is_file()


def publish(tmp: str | os.PathLike, path: Path) -> None:
    """Move the finished temporary file `tmp` to `path` (from `write_target`): a rename, or,
    where `path` is a device or a pipe (/dev/null, /dev/stdout), a copy of its bytes into it."""
    if _is_device(path):
        shutil.copyfile(tmp, path)
        os.unlink(tmp)
    else:
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a
    crash never leaves a half-written file and an existing one survives until replaced."""
    path = write_target(path)
    if _is_device(path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through a temporary file and a rename."""
    path = write_target(path)
    if _is_device(path):  # written in one sequential go: a pipe cannot seek
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        path.write_bytes(buffer.getvalue())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def standard_json(obj: Any) -> bytes:
    """`obj` as indented, standard JSON: NaN and infinities (which jq, JavaScript and pandas'
    strict readers refuse) become null, and tensors and numpy scalars become numbers."""
    def finite(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(obj), indent=1, allow_nan=False, default=lambda number: finite(float(number))).encode()
