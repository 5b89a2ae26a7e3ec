"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

Each layer's filters are ranked by sum |F| (their L1 norm); the smallest `ratio` of them are
removed for real at construction, with their BatchNorm channels and the next layer's input
channels ("independent" ranking: every layer is ranked on its original weights). Training
afterwards is the retraining. `flops_before` / `flops_after` are measured with
`ltp_core.flops.layer_flops` when an `example_input` is given. Li et al. pick per-layer ratios
from a sensitivity analysis: pass them as {layer name: ratio}.
Supported models: see `ltp_core.methods.channels.SUPPORTED` (no residual networks yet).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..core.flops import layer_flops
from .channels import remove_channels
from .greg import filter_l1, layer_ratios, num_removed
from .structured import StructuredMethod

__all__ = ["L1Filter", "l1_keep_indices"]


def l1_keep_indices(model: nn.Module, ratios: dict[str, float]) -> dict[str, Tensor]:
    """{layer: sorted indices of the filters kept}: all but the round(ratio * C) smallest-L1."""
    keep = {}
    for name, ratio in ratios.items():
        scores = filter_l1(model.get_submodule(name))
        order = torch.argsort(scores, descending=True, stable=True)
        keep[name] = order[: scores.numel() - num_removed(ratio, scores.numel())].sort().values
    return keep


class L1Filter(StructuredMethod):
    """Remove the smallest-L1 filters of every prunable layer now, for real.

    Args:
        model: a chain network (`channels.SUPPORTED`), made smaller in place at construction;
            build the optimizer afterwards.
        ratio: fraction of each layer's filters removed, in [0, 1), or {layer name: ratio}.
        exclude: layers whose filters are all kept.
        example_input: a batch (e.g. one sample) to measure FLOPs before and after.
        total_steps: accepted for a uniform engine call; unused.
    """

    def __init__(self, model: nn.Module, *, ratio: float | dict[str, float] = 0.5,
                 exclude: Iterable[str] | str = (), example_input: Tensor | None = None,
                 total_steps: int | None = None) -> None:
        super().__init__(model, exclude, example_input)
        self.ratios = layer_ratios(ratio, self.links)
        self.removed_channels = {}
        keep = l1_keep_indices(model, self.ratios)
        for p, idx in keep.items():
            self.removed_channels[p] = self.module(p).weight.shape[0] - idx.numel()
        remove_channels(model, keep, self.all_links)
        self.flops_before = None if self.dense_flops is None else self.dense_flops["total"]
        self.flops_after = None if example_input is None else layer_flops(model, example_input)["total"]

    def keep_indices(self) -> dict[str, Tensor]:
        """Nothing more to remove: every current channel."""
        return {p: torch.arange(self.module(p).weight.shape[0]) for p in self.links}
