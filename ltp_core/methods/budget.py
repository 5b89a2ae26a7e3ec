"""A FLOPs budget for channel pruning: a network's FLOPs as a function of its channel counts.

Removing channel c of a channel group (`ltp_core.methods.surgery`) removes a row of every
producer in the group and the matching input columns of every reader. A Conv/Linear therefore
costs

    FLOPs_l(kept) = dense FLOPs_l * (out channels kept / out) * (in channels kept / in)

(a depthwise conv: x channels kept / channels), where a layer's input channels may come from
several groups (after a concatenation), so the FLOPs of any choice of channel counts follow
from one dense measurement, without building the smaller network. This is what a budget needs:
a method that must meet "at most b of the dense FLOPs" asks `FlopsModel.fraction` many times
(microseconds each) while it decides which channels go, and DSA-style ratios need its gradient.
`layer_flops` (PyTorch's FlopCounterMode) measures the network `finalize()` gives, and the two
agree exactly (tested on chains, CIFAR and torchvision ResNets, MobileNetV2, EfficientNet-B0).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.flops import layer_flops
from .greg import num_removed
from .surgery import IN_ROLES, ChannelPlan, channel_plan

__all__ = ["FlopsModel", "uniform_filter_ratio"]


class FlopsModel:
    """FLOPs of a network as a function of the channels each group keeps.

    Args:
        model: the dense network (any network `surgery.channel_plan` takes).
        example_input: a batch (e.g. one sample); FLOPs are those of one forward of it.
        plan: the network's channel groups, if already traced (else traced here).
        groups: the group names priced (default: every group of the plan); others stay whole.
    """

    def __init__(self, model: nn.Module, example_input: Tensor, plan: ChannelPlan | None = None,
                 groups: list[str] | None = None) -> None:
        self.plan = plan if plan is not None else channel_plan(model, example_input, "a FLOPs budget")
        self.dense = layer_flops(model, example_input)  # {layer: FLOPs, "total": FLOPs}
        names = list(self.plan.groups) if groups is None else list(groups)
        self.channels = {g: self.plan.groups[g].channels for g in names}
        index = {g: i for i, g in enumerate(names)}
        out_group: dict[str, int] = {}
        in_share: dict[str, dict[int, float]] = {}
        for g in names:
            group = self.plan.groups[g]
            for m in group.members:
                if m.role in ("producer", "depthwise"):
                    out_group[m.module] = index[g]
                elif m.role in IN_ROLES and m.module in self.plan.layers:
                    size = self.plan.layers[m.module][1]
                    in_share.setdefault(m.module, {})[index[g]] = m.positions.numel() / size
        # the layers as (dense FLOPs / total, out group or -1, {in group: share of the inputs}, depthwise)
        self.terms = []
        fixed = float(self.dense["total"])
        for name, f in self.dense.items():
            if name == "total" or name not in self.plan.layers:
                continue
            depthwise = self.plan.layers[name][2]
            shares = {} if depthwise else in_share.get(name, {})
            og = out_group.get(name, -1)
            if og < 0 and not shares:
                continue
            fixed -= f
            self.terms.append((f / self.dense["total"], og, shares, depthwise))
        self.fixed = fixed / self.dense["total"]
        self.names = names

    def relative(self, ratios: Tensor) -> Tensor:
        """FLOPs / dense FLOPs for per-group keep ratios (a (G,) tensor in `channels` order; a
        0-d tensor, differentiable in the ratios)."""
        total = ratios.new_tensor(self.fixed)
        for f, og, shares, depthwise in self.terms:
            out = ratios[og] if og >= 0 else 1.0
            if depthwise:
                total = total + f * out
                continue
            rest = 1.0 - sum(shares.values())
            inp = rest + sum(s * ratios[g] for g, s in shares.items())
            total = total + f * out * inp
        return total

    def relative_floats(self, ratios: list[float]) -> float:
        """`relative` on plain floats (no autograd): fast, for searches that call it often."""
        total = self.fixed
        for f, og, shares, depthwise in self.terms:
            out = ratios[og] if og >= 0 else 1.0
            if depthwise:
                total += f * out
                continue
            inp = 1.0 - sum(shares.values()) + sum(s * ratios[g] for g, s in shares.items())
            total += f * out * inp
        return total

    def fraction(self, kept: dict[str, int]) -> float:
        """FLOPs / dense FLOPs when group g keeps kept[g] channels (missing: all of them)."""
        unknown = [g for g in kept if g not in self.channels]
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not channel groups priced here; valid: {sorted(self.channels)}")
        return self.relative_floats([kept.get(g, c) / c for g, c in self.channels.items()])

    def channel_cost(self) -> dict[str, float]:
        """{group: FLOPs fraction one of its channels costs in the dense network} (the gradient
        of `relative` at all-ones, divided by the group's channel count)."""
        with torch.enable_grad():
            ratios = torch.ones(len(self.names), dtype=torch.float64, requires_grad=True)
            self.relative(ratios).backward()
        return {g: float(ratios.grad[i]) / self.channels[g] for i, g in enumerate(self.names)}


def uniform_filter_ratio(flops_model: FlopsModel, budget: float, step: float = 0.01) -> float:
    """The filter ratio r (one for every group, as L1-filter pruning and GReg take it: round(r * C)
    of a group's C channels removed) whose FLOPs come closest to `budget` (a fraction of the dense
    FLOPs), searched on a grid of `step`; on a tie the smaller ratio."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be a fraction of the dense FLOPs in (0, 1], got {budget}")

    def fraction(r: float) -> float:
        return flops_model.fraction({p: c - num_removed(r, c) for p, c in flops_model.channels.items()})

    grid = [round(i * step, 6) for i in range(int(round(0.96 / step)))]
    return min(grid, key=lambda r: (abs(fraction(r) - budget), r))
