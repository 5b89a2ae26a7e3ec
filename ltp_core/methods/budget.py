"""A FLOPs budget for channel pruning: a chain network's FLOPs as a function of its channel counts.

Removing output channel c of a producer layer removes row c of its weight and the matching
input columns of the next layer (its consumer). A Conv/Linear therefore costs

    FLOPs_l(kept) = dense FLOPs_l * (out channels kept / C_l) * (in channels kept / C_in)

so the FLOPs of any choice of channel counts follow from one dense measurement, without building
the smaller network. This is what a budget needs: a method that must meet "at most b of the
dense FLOPs" asks `FlopsModel.fraction` many times (microseconds each) while it decides which
channels go. `layer_flops` (PyTorch's FlopCounterMode) measures the network `finalize()` gives,
and the two agree exactly on the chains `channel_links` supports (tested).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..core.flops import layer_flops
from .channels import channel_links
from .greg import num_removed

__all__ = ["FlopsModel", "uniform_filter_ratio"]


class FlopsModel:
    """FLOPs of a chain network (`channels.SUPPORTED`) as a function of the output channels each
    producer keeps. Built from the dense network once; a residual network is a ValueError."""

    def __init__(self, model: nn.Module, example_input: Tensor) -> None:
        self.links = channel_links(model, "a FLOPs budget")
        self.dense = layer_flops(model, example_input)  # {layer: FLOPs, "total": FLOPs}
        self.channels = {l.producer: model.get_submodule(l.producer).weight.shape[0] for l in self.links}
        self.reads = {l.consumer: l.producer for l in self.links}  # consumer -> the producer it reads

    def fraction(self, kept: dict[str, int]) -> float:
        """FLOPs / dense FLOPs when producer p keeps kept[p] output channels (missing: all of them).
        The FLOPs that no Conv/Linear owns (BN, activations, pooling) are counted dense: they are
        a small share, and an upper bound keeps a budget honest."""
        unknown = sorted(set(kept) - set(self.channels))
        if unknown:
            raise ValueError(f"{unknown} are not layers whose channels can be removed; valid: {sorted(self.channels)}")
        share = {p: kept.get(p, c) / c for p, c in self.channels.items()}
        flops = self.dense["total"]
        for name, f in self.dense.items():
            if name != "total":
                flops -= f * (1.0 - share.get(name, 1.0) * share.get(self.reads.get(name), 1.0))
        return flops / self.dense["total"]


def uniform_filter_ratio(flops_model: FlopsModel, budget: float, step: float = 0.01) -> float:
    """The filter ratio r (one for every layer, as L1-filter pruning and GReg take it: round(r * C)
    of a layer's C filters removed) whose FLOPs come closest to `budget` (a fraction of the dense
    FLOPs), searched on a grid of `step`; on a tie the smaller ratio."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be a fraction of the dense FLOPs in (0, 1], got {budget}")

    def fraction(r: float) -> float:
        return flops_model.fraction({p: c - num_removed(r, c) for p, c in flops_model.channels.items()})

    grid = [round(i * step, 6) for i in range(int(round(0.96 / step)))]
    return min(grid, key=lambda r: (abs(fraction(r) - budget), r))
