"""FLOPs of a (possibly sparse) network, counted by `torch.utils.flop_counter`.

`FlopCounterMode` counts the dense cost of every op. A pruned layer with a fraction d of
its weights kept needs only about d of its multiply-adds, so `count_flops` scales each
pruned layer's count by its density: the usual "effective FLOPs" of unstructured pruning.

A layer's FLOPs are those of the ops that multiply by its weight, wherever they run: a
parent module may use a child's weight itself (nn.MultiheadAttention multiplies by
`out_proj.weight`, Swin's attention by `qkv.weight`), and FlopCounterMode's per-module count
would file that work under the parent. nn.MultiheadAttention's inference fast path (one fused
op no FLOP formula knows) is switched off while counting, so attention is counted at all.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from .layers import PRUNABLE_TYPES

__all__ = ["count_flops", "layer_flops"]



def _storage_address(t: object) -> int | None:
    # None for what has no memory of its own to match (non-tensors, sparse or meta tensors)
    if not isinstance(t, Tensor) or t.layout != torch.strided or t.device.type == "meta":
        return None
    return t.untyped_storage().data_ptr()


class _FlopsByWeight(TorchDispatchMode):
    """Files the FLOPs of every op FlopCounterMode has a formula for under the layer whose
    weight is one of its arguments (matched by storage, so a transposed view counts too)."""

    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners = owners  # weight storage address -> layer name
        self.flops: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            for t in tree_leaves((args, kwargs)):
                name = self.owners.get(_storage_address(t))
                if name is not None:
                    self.flops[name] += int(formula(*args, **kwargs, out_val=out))
                    break
        return out


@contextlib.contextmanager
def _attention_fast_path_off() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


@torch.no_grad()
def layer_flops(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """{layer name: FLOPs of one forward of `example_input`} for every Conv/Linear module
    whose weight the forward multiplies by (the ops that use the weight, wherever they run),
    plus "total" (the whole model, every op FlopCounterMode knows). 1 multiply-add = 2 FLOPs.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        # cached(): a parametrized weight is computed once, so the tensor seen here is the
        # one the forward multiplies by.
        with parametrize.cached(), _attention_fast_path_off():
            owners = {_storage_address(m.weight): n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
            by_weight = _FlopsByWeight(owners)
            with counter, by_weight:
                model(example_input)
    finally:
        model.train(was_training)
    total = int(sum(counter.get_flop_counts().get("Global", {}).values()))
    return {"total": total, **by_weight.flops}


def count_flops(model: nn.Module, example_input: Tensor, densities: dict[str, float] | None = None) -> int:
    """Effective FLOPs of one forward: the dense count with each layer named in `densities`
    (layer name -> fraction of weights kept) scaled by its density."""
    densities = dict(densities or {})
    layers = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    unknown = sorted(set(densities) - set(layers))
    if unknown:
        raise ValueError(f"densities name {unknown}, which are not Conv/Linear layers of the model; valid: {layers}")
    bad = {n: d for n, d in densities.items() if isinstance(d, bool) or not isinstance(d, (int, float))
           or not 0.0 <= d <= 1.0}
    if bad:
        raise ValueError(f"densities must be fractions of weights kept, in [0, 1]; got {bad}")
    flops = layer_flops(model, example_input)
    uncounted = [n for n, d in densities.items() if n not in flops and d < 1.0]
    if uncounted:
        # a layer the forward never uses, or one whose weight reaches the ops only as a copy
        # (cast, reshaped into new memory): its share of the total cannot be told apart
        warnings.warn(f"count_flops: {len(uncounted)} pruned layer(s) ({', '.join(uncounted[:3])}"
                      f"{', ...' if len(uncounted) > 3 else ''}) have no counted op that multiplies by "
                      "their weight; their FLOPs (if any) stay counted dense", RuntimeWarning, stacklevel=2)
    total = flops["total"]
    for name, density in densities.items():
        if name in flops:
            total -= round(flops[name] * (1.0 - density))
    return int(total)
