"""The base of the channel-removing methods: channels chosen, then removed for real."""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..core.flops import layer_flops
from ..core.layers import prunable_layers
from ..core.method import PruningMethod
from .channels import Link, bake, channel_links, kept_weight_fraction, remove_channels

__all__ = ["StructuredMethod"]


class StructuredMethod(PruningMethod):
    """Base of the channel-removing methods. The model must be a chain `channel_links`
    understands (an nn.Sequential of Conv/Linear with BN, activations, pooling, Flatten: e.g.
    `ltp_core.models.small_cnn` and `mlp`); residual networks are not supported yet.

    Subclasses give `keep_indices()` ({producer: sorted LongTensor of the output channels
    finalize() keeps}); a parametrization they attach to a Conv/Linear is baked in (its
    effective weight, inside `hard_masks()`) before the removal. `finalize()` replaces the
    modules of the Sequential by smaller ones: the state_dict then loads into the same family
    built with the kept widths.
    """

    def __init__(self, model: nn.Module, exclude: Iterable[str] | str = (),
                 example_input: Tensor | None = None) -> None:
        links = channel_links(model, type(self).__name__)
        producers = [link.producer for link in links]
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        unknown = [n for n in exclude if n not in producers]
        if unknown:
            raise ValueError(f"exclude names {unknown} are not layers whose channels can be removed; "
                             f"valid names: {producers}")
        self.model = model
        self.links: dict[str, Link] = {l.producer: l for l in links if l.producer not in exclude}
        if not self.links:
            raise ValueError(f"nothing left to prune: every prunable layer {producers} is excluded")
        self.all_links: list[Link] = links
        self.dense_numel = {n: m.weight.numel() for n, m in prunable_layers(model)}
        self.example_input = example_input
        self.dense_flops: dict[str, int] | None = (
            layer_flops(model, example_input) if example_input is not None else None)
        self.finalized = False

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def keep_indices(self) -> dict[str, Tensor]:  # pragma: no cover - subclasses implement
        raise NotImplementedError

    def kept_channels(self) -> dict[str, int]:
        """{producer layer: output channels finalize() keeps}."""
        if self.finalized:
            return {p: self.module(p).weight.shape[0] for p in self.links}
        return {p: int(idx.numel()) for p, idx in self.keep_indices().items()}

    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        """{layer: fraction of its original weights removed, "total"}: every Conv/Linear of the
        chain (a layer loses rows for its removed filters and columns for its removed inputs)."""
        counts = {} if self.finalized else self.kept_channels()
        kept = kept_weight_fraction(self.model, self.all_links, counts)
        out, removed = {}, 0.0
        for name, dense in self.dense_numel.items():
            now = self.module(name).weight.numel() * kept[name]
            out[name], removed = 1.0 - now / dense, removed + dense - now
        out["total"] = removed / sum(self.dense_numel.values())
        return out

    @torch.no_grad()
    def flops(self, example_input: Tensor | None = None) -> int:
        """FLOPs of one forward of the network finalize() gives, measured with
        `ltp_core.flops.layer_flops` (on a finalized deep copy while the method is live)."""
        x = self.example_input if example_input is None else example_input
        if x is None:
            raise ValueError("flops() needs an example_input (here or in the constructor)")
        return layer_flops(self.model if self.finalized else self.finalized_copy(), x)["total"]

    @torch.no_grad()
    def finalized_copy(self) -> nn.Module:
        """A deep copy of the network finalize() would give; the model is untouched."""
        self._check_live()
        keep = self.keep_indices()
        with self.hard_masks():
            clone = copy.deepcopy(self.model)
        return remove_channels(bake(clone), keep, self.all_links)

    def hard_state_dict(self) -> dict[str, Tensor]:
        """The state_dict finalize() would give (smaller tensors), the model untouched."""
        return self.finalized_copy().state_dict()

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Remove the pruned channels for real: smaller plain Conv/BN/Linear modules replace
        the old ones in the Sequential (same names, same places). Returns the model."""
        self._check_live()
        keep = self.keep_indices()
        with self.hard_masks():
            bake(self.model)
        remove_channels(self.model, keep, self.all_links)
        self.finalized = True
        return self.model

    def __repr__(self) -> str:
        state = "finalized" if self.finalized else f"keeps {self.kept_channels()}"
        return f"{type(self).__name__}({len(self.links)} prunable layers, {state})"
