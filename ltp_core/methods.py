"""The registry of pruning methods: the engine and notebooks pick a method by name here.

Every method has one shape (LTP is the model for it):

    method = build("ltp", model, **options)   # attaches to the model in place
    loss = task_loss + method.regularizer()   # a 0-d tensor (0 for methods without a term)
    method.after_step(step)                   # per-step hook (schedules, masks); step = steps done
    method.sparsity()                         # {layer: fraction, "total": fraction}
    method.finalize()                         # a plain model the architecture loads strictly

plus `param_groups(weight_decay=0., **opts)`, `hard_masks()` and `hard_state_dict()`.
Every entry accepts `total_steps=` (the run's optimizer steps; schedules need it) and
`example_input=` (a batch, e.g. one sample, for FLOPs; DSA needs it), ignoring them when
unused, so an engine can always pass both. A method whose options count optimizer steps
(a schedule's start, end or length) names them in its class's `STEP_OPTIONS`: ltp-train can
rescale a schedule built from `total_steps` when a run is resumed with another number of steps
per epoch, not one given in steps. Build the method before the optimizer (from
`param_groups`) and before wrapping the model (DDP, torch.compile): the structured methods
need the plain nn.Sequential and L1-filter changes it at construction.

`build` looks the name up in METHODS, never through a chain of ifs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .baselines import DSA, GDP, GMP, LATS, STR, GReg, L1Filter, Magnitude
from .pruner import LTP

__all__ = ["METHODS", "build", "method_names"]


def _ltp(model: nn.Module, *, total_steps: int | None = None, example_input: Tensor | None = None,
         **options: Any) -> LTP:
    """LTP(model, **options); total_steps / example_input are accepted and unused."""
    return LTP(model, **options)


METHODS: dict[str, Callable[..., Any]] = {
    "ltp": _ltp,
    "magnitude": Magnitude,
    "gmp": GMP,
    "str": STR,
    "lats": LATS,
    "greg": GReg,
    "gdp": GDP,
    "l1_filter": L1Filter,
    "dsa": DSA,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def build(name: str, model: nn.Module, **options: Any) -> Any:
    """Attach the method `name` to `model` with `options`; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid methods: {method_names()}")
    return METHODS[name](model, **options)
