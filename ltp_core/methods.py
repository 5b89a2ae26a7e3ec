"""The registry of pruning methods: the engine and notebooks pick a method by name here.

Every method has one shape (LTP is the model for it):

    method = build("ltp", model, **options)   # attaches to the model in place
    loss = task_loss + method.regularizer()   # a 0-d tensor (0 for methods without a term)
    method.after_step(step)                   # optional per-step hook (schedules, masks)
    method.sparsity()                         # {layer: fraction, "total": fraction}
    method.finalize()                         # a plain model the architecture loads strictly

`build` looks the name up in METHODS, never through a chain of ifs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .pruner import LTP

__all__ = ["METHODS", "build", "method_names"]

METHODS: dict[str, Callable[..., Any]] = {
    "ltp": LTP,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def build(name: str, model: nn.Module, **options: Any) -> Any:
    """Attach the method `name` to `model` with `options`; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid methods: {method_names()}")
    return METHODS[name](model, **options)
