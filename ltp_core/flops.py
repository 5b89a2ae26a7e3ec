"""FLOPs of a (possibly sparse) network, counted by `torch.utils.flop_counter`.

`FlopCounterMode` counts the dense cost of every op. A pruned layer with a fraction d of
its weights kept needs only about d of its multiply-adds, so `count_flops` scales each
pruned layer's count by its density: the usual "effective FLOPs" of unstructured pruning.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "layer_flops"]


@torch.no_grad()
def layer_flops(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """{module name: FLOPs of one forward of `example_input`} for every Conv/Linear module,
    plus "total" (the whole model, every op FlopCounterMode knows). 1 multiply-add = 2 FLOPs.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__  # FlopCounterMode prefixes names with "Global" / the root
    out: dict[str, int] = {"total": int(sum(counts.get("Global", {}).values()))}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        for key in (name, f"{root}.{name}"):
            if key in counts:
                out[name] = int(sum(counts[key].values()))
                break
    return out


def count_flops(model: nn.Module, example_input: Tensor, densities: dict[str, float] | None = None) -> int:
    """Effective FLOPs of one forward: the dense count with each layer named in `densities`
    (layer name -> fraction of weights kept) scaled by its density."""
    densities = dict(densities or {})
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
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
        # e.g. nn.MultiheadAttention's out_proj or Swin's qkv: their parent multiplies by
        # their weight itself, so FlopCounterMode files the work under the parent
        warnings.warn(f"count_flops: {len(uncounted)} pruned layer(s) ({', '.join(uncounted[:3])}"
                      f"{', ...' if len(uncounted) > 3 else ''}) are not called as modules in the forward; "
                      "their FLOPs stay counted dense", RuntimeWarning, stacklevel=2)
    total = flops["total"]
    for name, density in densities.items():
        if name in flops:
            total -= round(flops[name] * (1.0 - density))
    return int(total)
