"""The `ltp-train` runs notebooks 05 and 07 make: their command lines and their folders.

    from ltp_core.teaching.runs import train_command, command_config, prepare_run_dir

- `train_command(settings, nproc_per_node=...)`: the exact `ltp-train` / `torchrun ... -m
  ltp_core.engine.train` command line for a set of `TrainConfig` values; `command_config(cmd)` parses
  one back, so a notebook can show that the command it prints is the run it made;
  `format_command` wraps it for display.
- `prepare_run_dir(path, cfg, policy)`: what to do with a run folder that already exists
  (reuse a finished identical run, resume an unfinished one, or start over); `run_state(path)`
  reads where a run folder stands.
- `repo_root()`, `resolve_path(p)`, `display_path(p)`, `sample_maker()`: small helpers around
  them.

Nothing here downloads anything or imports the notebooks' plotting stack.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engine.config import FIELDS, UsageError, config_to_dict, flag_name, make_config, schedule_fixes_epochs

__all__ = ["train_flags", "train_command", "command_config", "format_command", "prepare_run_dir", "run_state",
           "repo_root", "resolve_path", "display_path", "sample_maker"]


# -- the command line of a run ---------------------------------------------------------------

def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        import yaml

        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return str(value)


def train_flags(settings: Mapping[str, Any]) -> list[str]:
    """`ltp-train` flags giving exactly `settings` ({TrainConfig field name: value}), in the
    order given. None values and empty lists/mappings are left out (they are the defaults of
    the fields that allow them). Unknown names raise UsageError."""
    cfg = make_config(**settings)  # checks every name and value, and converts them
    argv: list[str] = []
    for key in settings:
        name = key.replace("-", "_")
        name = {"wd": "weight_decay", "j": "workers", "b": "batch_size"}.get(name, name)
        kind, flag, value = FIELDS[name].metadata["kind"], flag_name(name), getattr(cfg, name)
        if value is None or (kind in ("list", "dict") and not value):
            continue
        if kind == "bool":
            argv.append(flag if value else "--no-" + flag[2:])
        elif kind == "list":
            argv += [flag, *(str(v) for v in value)]
        elif kind == "dict":
            for k, v in value.items():
                argv += [flag, f"{k}={_flag_value(v)}"]
        else:
            argv += [flag, _flag_value(value)]
    return argv


def train_command(settings: Mapping[str, Any], *, nproc_per_node: int | str | None = None,
                  standalone: bool = True, torchrun: str = "torchrun", ltp_train: str = "ltp-train") -> list[str]:
    """The command line (a list of words) that runs `ltp_core.engine.train` with `settings`.

    nproc_per_node None: `ltp-train FLAGS` (one process). Otherwise
    `torchrun [--standalone] --nproc_per_node N -m ltp_core.engine.train FLAGS`; N may be an int or
    torchrun's words `gpu` (one process per GPU), `cpu`, `auto`.
    """
    flags = train_flags(settings)
    if nproc_per_node is None:
        return [ltp_train, *flags]
    if isinstance(nproc_per_node, int) and nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1 or one of gpu, cpu, auto, got {nproc_per_node!r}")
    if isinstance(nproc_per_node, str) and nproc_per_node not in ("gpu", "cpu", "auto") \
            and not nproc_per_node.isdigit():
        raise ValueError(f"nproc_per_node must be >= 1 or one of gpu, cpu, auto, got {nproc_per_node!r}")
    launcher = [torchrun, *(["--standalone"] if standalone else []), "--nproc_per_node", str(nproc_per_node)]
    return [*launcher, "-m", "ltp_core.engine.train", *flags]


def command_config(command: Sequence[str]):
    """The `TrainConfig` a command from `train_command` runs (its flags parsed the way
    `ltp-train` parses them, `ltp_core.engine.train.parse_args`)."""
    from ..engine.train import parse_args

    words = list(command)
    if "ltp_core.engine.train" in words:
        flags = words[words.index("ltp_core.engine.train") + 1:]
    else:
        flags = words[1:]
    return parse_args(flags)


def format_command(command: Sequence[str], width: int = 100) -> str:
    """A shell-quoted command, wrapped with backslashes before flags so it stays readable
    (a flag and its values stay on one line)."""
    words = [shlex.quote(str(w)) for w in command]
    chunks: list[str] = []
    for i, w in enumerate(words):
        if chunks and not (w.startswith("-") and not (i and words[i - 1] == "-m")):
            chunks[-1] += " " + w
        else:
            chunks.append(w)
    lines, line = [], ""
    for chunk in chunks:
        if line and len(line) + 1 + len(chunk) > width:
            lines.append(line + " \\")
            line = "    " + chunk
        else:
            line = f"{line} {chunk}" if line else chunk
    lines.append(line)
    return "\n".join(lines)


# -- run folders -----------------------------------------------------------------------------

def run_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """What an `ltp-train` output folder holds: None when it is not one (no args.yaml),
    else {"args": the saved settings, "epoch": epochs done (0 without a checkpoint)}."""
    import torch
    import yaml

    path = Path(path)
    if not (path / "args.yaml").is_file():
        return None
    args = yaml.safe_load((path / "args.yaml").read_text()) or {}
    epoch = 0
    if (path / "checkpoint.pth").is_file():
        try:
            epoch = int(torch.load(path / "checkpoint.pth", map_location="cpu", weights_only=True)["epoch"])
        except Exception:  # a damaged checkpoint: the run cannot be resumed, only redone
            epoch = -1
    return {"args": args, "epoch": epoch}


_IGNORED_FOR_IDENTITY = {"output_dir", "resume", "progress", "workers", "test_only", "epochs"}  # more epochs: continue


def prepare_run_dir(path: str | os.PathLike, cfg, policy: str = "overwrite") -> str:
    """Decide what to do with the run folder `path` before running `cfg` (a TrainConfig) there.

    policy "overwrite": an earlier ltp-train run there is deleted (only a folder holding an
    args.yaml, i.e. an ltp-train output, is ever deleted; any other non-empty folder is a
    UsageError). policy "resume": a run with the same settings is reused when finished and
    continued (`--resume`) when not; a run with other settings is a UsageError naming the
    first difference. Returns "fresh", "resume" or "done".
    """
    if policy not in ("overwrite", "resume"):
        raise ValueError(f"policy must be 'overwrite' or 'resume', got {policy!r}")
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "fresh"
    state = run_state(path)
    if state is None:
        raise UsageError(f"{path} exists and is not an ltp-train run folder (no args.yaml); "
                         "choose another output folder")
    if policy == "overwrite":
        shutil.rmtree(path)
        return "fresh"
    wanted = config_to_dict(cfg)
    saved = {k: v for k, v in state["args"].items() if k in wanted}
    # More epochs continue a run, unless its schedule was built for the number it had.
    ignored = _IGNORED_FOR_IDENTITY - ({"epochs"} if schedule_fixes_epochs(cfg) else set())
    diff = sorted(k for k in wanted if k not in ignored and saved.get(k, wanted[k]) != wanted[k])
    if diff:
        k = diff[0]
        raise UsageError(f"{path} holds a run with other settings ({k}: {saved.get(k)!r} there, {wanted[k]!r} now"
                         f"{'' if len(diff) == 1 else f'; {len(diff) - 1} more'}); use existing_runs='overwrite' "
                         "or another output folder")
    if state["epoch"] >= cfg.epochs and (path / "trail.json").is_file():
        return "done"
    if state["epoch"] <= 0:
        shutil.rmtree(path)
        return "fresh"
    return "resume"


# -- small helpers ---------------------------------------------------------------------------

def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root: the working directory, or its parent when that is `notebooks/`
    (where papermill runs the notebooks)."""
    here = Path(start or os.getcwd()).resolve()
    return here.parent if here.name == "notebooks" else here


def resolve_path(path: str | os.PathLike) -> Path:
    """A user-given path: absolute as is; a relative one taken from the working directory
    when it exists there, else from the repository root (where the printed commands run)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return repo_root() / path


def display_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """`path` relative to the repository root when it lies inside it, else absolute."""
    path, root = Path(path).resolve(), repo_root(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def sample_maker() -> ModuleType:
    """`data/make_tiny_imagenet.py` of the repository as a module (its functions
    `make_tiny_imagenet` and `make_cifar10_sample` write tiny datasets in the real layouts)."""
    candidates = [repo_root() / "data" / "make_tiny_imagenet.py",
                  Path(__file__).resolve().parents[2] / "data" / "make_tiny_imagenet.py"]
    for path in candidates:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("make_tiny_imagenet", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(f"data/make_tiny_imagenet.py not found (looked at {', '.join(map(str, candidates))}); "
                            "run the notebook from the repository")
