"""Input checks with clear errors: one ValueError naming the value and what is allowed."""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["is_number", "check_number", "check_fraction", "check_steps", "check_choice", "check_flag"]


def is_number(value) -> bool:
    """A finite real number (True and False are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_number(name: str, value, *, positive: bool = False) -> float:
    """`value` as a float, finite and >= 0 (> 0 with positive=True)."""
    if not (is_number(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_fraction(name: str, value, *, allow_one: bool = False, allow_zero: bool = True) -> float:
    """`value` as a float in [0, 1) ([0, 1] with allow_one, (0, ...) without allow_zero)."""
    low_ok = is_number(value) and (value >= 0 if allow_zero else value > 0)
    high_ok = is_number(value) and (value <= 1 if allow_one else value < 1)
    if not (low_ok and high_ok):
        interval = ("[" if allow_zero else "(") + "0, 1" + ("]" if allow_one else ")")
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
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
    """`value` if it is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {list(allowed)}")
    return value


def check_flag(name: str, value) -> bool:
    """`value` if it is True or False (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
