"""Local pretrained weights for `ltp-train --pretrained PATH`: read a weights file (a
state_dict or a checkpoint that holds one, DDP's 'module.' prefixes, a pruned model's
parametrized weights, or an ltp-sparse file from `ltp-pick --sparse`) and load it into a fresh
network, replacing the classifier head when the class count differs. Nothing is downloaded;
files load with weights_only=True.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..deploy.sparse_file import SPARSE_FORMAT, load_sparse
from .config import UsageError

__all__ = ["load_pretrained", "plain_state", "first_line", "load_torch_file"]


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), without
    terminal color codes (some of torch's messages carry them). An exception a DataLoader
    worker raised comes back in the main process as "Caught X in DataLoader worker process N."
    and the worker's traceback: its message is the traceback's last line, which is returned."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    lines = text.splitlines()
    if len(lines) > 1 and re.match(r"Caught \w+ in DataLoader worker process \d+", lines[0]) \
            and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]  # "package.module.ErrorType: message"
    return lines[0] if lines else type(e).__name__


def load_torch_file(path: Path, flag: str) -> Any:
    """torch.load(path, weights_only=True) on the CPU; a file it cannot read is a UsageError
    naming `flag` and the file. torch's own advice to retry with weights_only=False is left out:
    for a file that is no checkpoint (the usual case) it is wrong, and unsafe for one from
    elsewhere."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:  # a real pickle holding an object that is not plain data (e.g. argparse.Namespace)
            raise UsageError(f"{flag}: {path} holds a Python object ({refused[1]}) that weights_only loading refuses; "
                             "save the weights alone (the model's state_dict) and pass that file") from None
        why = ""
        if "Weights only load failed" not in text:  # else: not a pickle torch knows; the rest is advice
            why = f" ({type(e).__name__}: {first_line(e).split('. ')[0]})" if text.strip() else f" ({type(e).__name__})"
        raise UsageError(f"{flag}: {path} is not a PyTorch checkpoint, or it is damaged{why}") from None


def plain_state(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state_dict inside a weights file: a plain state_dict, or {'model': ...} /
    {'state_dict': ...}; 'module.' prefixes dropped; a pruned (parametrized) layer's weight
    given as its hard-pruned value."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())):
        raise UsageError(f"--pretrained: {path} holds no state_dict (expected a mapping of parameter names to "
                         "tensors, a checkpoint with a 'model' or 'state_dict' entry, or an ltp-sparse file)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    suffix, tau_suffix = "parametrizations.weight.original", "parametrizations.weight.0.threshold"
    for key in [k for k in state if k.endswith(suffix)]:
        base = key[: -len(suffix)]
        w = state.pop(key)
        tau = state.pop(base + tau_suffix, None)
        state[base + "weight"] = w * (w * w > tau) if tau is not None else w
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike, num_classes: int) -> str:
    """Load a local weights file into `model` (a plain, not yet pruned network). Tensors whose
    shape differs only in the first dimension, where the model has `num_classes`, are the
    classifier head: they keep the model's fresh initialization. Any other difference is a
    UsageError naming the tensors. `path` is a torch.save file (a state_dict or a checkpoint
    holding one) or an ltp-sparse file (`ltp_core.sparse_file.save_sparse`, `ltp-pick
    --sparse`). Returns a one-line report."""
    path = Path(path)
    if path.is_dir():
        inside = f" (it holds {path / 'checkpoint.pth'})" if (path / "checkpoint.pth").is_file() else ""
        raise UsageError(f"--pretrained: {path} is a folder; give a weights file{inside}")
    if not path.is_file():
        raise UsageError(f"--pretrained: no such file {path} (a local weights file; nothing is downloaded)")
    obj = load_torch_file(path, "--pretrained")
    if isinstance(obj, dict) and obj.get("format") == SPARSE_FORMAT:  # ltp-pick --sparse, save_sparse
        try:
            obj = load_sparse(path)  # checks the archive and decodes every tensor
        except ValueError as e:
            raise UsageError(f"--pretrained: {first_line(e)}") from None
    state = plain_state(obj, path)
    own = model.state_dict()
    head, bad = [], []
    for key in set(state) & set(own):
        a, b = state[key].shape, own[key].shape
        if a != b:
            if len(a) == len(b) and a[1:] == b[1:] and b[0] == num_classes:
                head.append((key, a[0]))
            else:
                bad.append(f"{key} {tuple(a)} vs {tuple(b)}")
    if bad:
        raise UsageError(f"--pretrained: {path} does not fit this model: {', '.join(sorted(bad)[:4])}"
                         f"{' ...' if len(bad) > 4 else ''}")
    optional = ("num_batches_tracked",)
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(optional))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UsageError(f"--pretrained: {path} does not fit this model: missing {missing[:4]}"
                         f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                         f"{' ...' if len(unexpected) > 4 else ''}")
    for key, _ in head:
        del state[key]
    model.load_state_dict(state, strict=False)
    report = f"loaded {len(state)} tensors from {path}"
    if head:
        report += (f"; replaced the {num_classes}-class head ({', '.join(sorted(k for k, _ in head))}; "
                   f"the file has {head[0][1]} classes)")
    return report
