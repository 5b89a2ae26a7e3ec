"""Small helpers every baseline uses: input checks with clear errors, the choice of layers,
the model's device, optimizer parameter groups."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..pruner import select_layers  # noqa: F401  (re-exported for the baselines)

__all__ = ["check_fraction", "check_number", "check_steps", "check_choice", "select_layers",
           "model_device", "split_groups"]


# -- input checks --------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fraction(name: str, value, *, allow_one: bool = False, allow_zero: bool = True) -> float:
    """`value` as a float in [0, 1) ([0, 1] with allow_one, (0, ...) without allow_zero)."""
    low_ok = _is_number(value) and (value >= 0 if allow_zero else value > 0)
    high_ok = _is_number(value) and (value <= 1 if allow_one else value < 1)
    if not (low_ok and high_ok):
        interval = ("[" if allow_zero else "(") + "0, 1" + ("]" if allow_one else ")")
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_number(name: str, value, *, positive: bool = False) -> float:
    """`value` as a float >= 0 (> 0 with positive=True)."""
    if not (_is_number(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_steps(name: str, value, *, positive: bool = False, optional: bool = True) -> int | None:
    """`value` as an int >= 0 (> 0 with positive=True); None passes when optional."""
    if value is None and optional:
        return None
    if not (isinstance(value, int) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be an int {'> 0' if positive else '>= 0'}"
                         f"{' or None' if optional else ''}, got {value!r}")
    return value


def check_choice(name: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {list(allowed)}")
    return value


# -- which layers --------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def split_groups(model: nn.Module, own: Sequence[Tensor], weight_decay: float, own_options: dict,
                 **options) -> list[dict]:
    """[every model parameter not in `own` (with `weight_decay`, `options`), then `own` in a
    group of its own (`options` overridden by `own_options`)] — the second only if `own`."""
    ids = {id(p) for p in own}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids],
               "weight_decay": weight_decay, **options}]
    if own:
        groups.append({"params": list(own), **options, **own_options})
    return groups
