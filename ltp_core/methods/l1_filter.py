"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

Each channel group's channels (`ltp_core.methods.surgery`: a layer's filters, with every layer a
residual add joins to it) are ranked by the L1 norm of their filters, sum |F|, summed over the
group's producers; the smallest `ratio` of them are removed for real at construction, from every
member of the group ("independent" ranking: every group is ranked on the original weights).
Training afterwards is the retraining. `flops_before` / `flops_after` are measured with
`ltp_core.flops.layer_flops` when an `example_input` is given. Li et al. pick per-layer ratios
from a sensitivity analysis: pass them as {group name: ratio}. On ResNets they prune only the
first conv of each block; pass the groups a skip connection joins in `exclude` for that setting.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..core.flops import layer_flops
from .greg import filter_l1, layer_ratios, num_removed
from .structured import StructuredMethod
from .surgery import remove_channels_

__all__ = ["L1Filter", "l1_keep_indices"]


def l1_keep_indices(model: nn.Module, ratios: dict[str, float]) -> dict[str, Tensor]:
    """{layer: sorted indices of the filters kept}: all but the round(ratio * C) smallest-L1
    (one layer's own filters; `L1Filter` sums them over a channel group)."""
    keep = {}
    for name, ratio in ratios.items():
        scores = filter_l1(model.get_submodule(name))
        order = torch.argsort(scores, descending=True, stable=True)
        keep[name] = order[: scores.numel() - num_removed(ratio, scores.numel())].sort().values
    return keep


class L1Filter(StructuredMethod):
    """Remove the smallest-L1 channels of every channel group now, for real.

    Args:
        model: the network (`surgery.SUPPORTED`), made smaller in place at construction; build
            the optimizer afterwards.
        ratio: fraction of each group's channels removed, in [0, 1), or {group name: ratio}.
        exclude: groups whose channels are all kept (a group's name or any layer of it).
        example_input: a batch (e.g. one sample) on which the channel dependencies are traced
            (required unless the model is an nn.Sequential chain) and FLOPs measured.
        check: see `StructuredMethod`.
        total_steps: accepted for a uniform engine call; unused.
    """

    def __init__(self, model: nn.Module, *, ratio: float | dict[str, float] = 0.5,
                 exclude: Iterable[str] | str = (), example_input: Tensor | None = None, check: bool = True,
                 total_steps: int | None = None) -> None:
        super().__init__(model, exclude, example_input, check)
        self.ratios = layer_ratios(ratio, self.groups)
        keep = {}
        for g, grp in self.groups.items():
            order = torch.argsort(self.filter_l1(grp), descending=True, stable=True)
            keep[g] = order[: grp.channels - num_removed(self.ratios[g], grp.channels)].sort().values
        self.removed_channels = {g: self.groups[g].channels - int(idx.numel()) for g, idx in keep.items()}
        self.kept_at_construction = keep
        self.flops_before = None if self.dense_flops is None else self.dense_flops["total"]
        self.flops_predicted = None if self.dense_flops is None else self.predicted_flops(keep)
        remove_channels_(model, self.plan, keep)
        self._replan()
        self.flops_after = None if example_input is None else layer_flops(model, example_input)["total"]

    def keep_indices(self) -> dict[str, Tensor]:
        """Nothing more to remove: every current channel."""
        return {g: torch.arange(grp.channels) for g, grp in self.groups.items()}
