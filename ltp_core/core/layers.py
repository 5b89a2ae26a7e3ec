"""Which layers are pruned, and how much of each is zero."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["PRUNABLE_TYPES", "prunable_layers", "select_layers", "zero_fractions", "own_class", "model_device"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every Conv1d/2d/3d and Linear of `model`, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def select_layers(model: nn.Module, exclude: Iterable[str] | str | None = (), exclude_first: bool = False,
                  exclude_last: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv1d/2d/3d and Linear of `model` but the excluded ones.

    ValueError when an `exclude` name is not a prunable layer, when nothing remains, when a
    layer already has a weight parametrization, or when a layer is shared or tied (see below).
    """
    candidates = prunable_layers(model)
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no Conv1d/2d/3d or Linear layer to prune")
    names = [n for n, _ in candidates]
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise ValueError(f"exclude names {unknown} are not prunable layers of the model; valid names: {names}")
    skip = set(exclude) | ({names[0]} if exclude_first else set()) | ({names[-1]} if exclude_last else set())
    layers = [(n, m) for n, m in candidates if n not in skip]
    if not layers:
        raise ValueError(f"nothing left to prune: every prunable layer {names} is excluded")
    for name, module in layers:
        if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            raise ValueError(f"layer {name!r} already has a weight parametrization; "
                             "a pruning method attaches to plain Conv/Linear layers only")
    _check_not_shared(model, layers)
    return layers


def _check_not_shared(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
    # A method gives each layer its own mask (and LTP its own threshold), and finalizing writes
    # the pruned weight in place: a module used at two places, or a weight tied to another
    # parameter, would be masked twice or prune the other user too.
    places: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), []).append(name)
    users: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(p), []).append(name)
    for name, module in layers:
        if len(places[id(module)]) > 1:
            raise ValueError(f"layer {name!r} is one module used at {len(places[id(module)])} places of the model "
                             f"({', '.join(places[id(module)])}); give each place its own module, or exclude it")
        tied = [n for n in users.get(id(module.weight), []) if n != f"{name}.weight" and n != "weight"]
        if tied:
            raise ValueError(f"layer {name!r} shares its weight with {', '.join(tied)} (tied weights): pruning it "
                             f"would prune them too; untie them, or exclude {name!r}")


@torch.no_grad()
def zero_fractions(layers: dict[str, nn.Module]) -> dict[str, float]:
    """{layer name: fraction of its `weight` that is exactly 0, "total": over all the layers}."""
    out, zeros, total = {}, 0, 0
    for name, module in layers.items():
        z = int((module.weight == 0).sum())
        out[name], zeros, total = z / module.weight.numel(), zeros + z, total + module.weight.numel()
    out["total"] = zeros / max(1, total)
    return out


def own_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its class. `parametrize` gives a module a
    generated class that a deep copy shares, and `remove_parametrizations` deletes the
    parametrized property from that class, which would break every copy; after this call it
    only touches this module's own class."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__,
                            {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")})


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
