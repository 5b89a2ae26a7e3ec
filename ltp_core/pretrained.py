"""Local pretrained weights for `ltp-train --pretrained PATH`: read a weights file (a
state_dict or a checkpoint that holds one, DDP's 'module.' prefixes, a pruned model's
parametrized weights) and load it into a fresh network, replacing the classifier head when the
class count differs. Nothing is downloaded; files load with weights_only=True.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cli import UsageError

__all__ = ["load_pretrained", "plain_state", "first_line"]


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), without
    terminal color codes (some of torch's messages carry them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
                         "tensors, or a checkpoint with a 'model' or 'state_dict' entry)")
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
    UsageError naming the tensors. Returns a one-line report."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--pretrained: no such file {path} (a local weights file; nothing is downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"--pretrained: cannot read {path} as PyTorch weights "
                         f"({type(e).__name__}: {first_line(e)})") from None
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
