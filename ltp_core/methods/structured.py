"""The base of the channel-removing methods: channels chosen, then removed for real.

The contract a structured method keeps (L1-filter, GReg, DSA-style, GDP-style, W-Gates):

* The network's channels come in *groups* (`ltp_core.methods.surgery.ChannelGroup`), found by
  Torch-Pruning's dependency graph: the output channels of a layer together with everything that
  must lose the same channels with it (its BatchNorm, a depthwise conv, the other layers whose
  outputs a residual add joins with it, the input channels of every layer that reads them, a
  concatenation's slice). `self.groups` is {group name: ChannelGroup} for the prunable groups
  (the name is the group's root layer: its first Conv/Linear producer); a ChannelGroup has
  `channels` (C), `producers` (the Conv/Linear layers whose weight rows are the group's filters,
  root first), `depthwise`, `norms` (BatchNorms), `readers` (the layers whose input channels
  they are) and `members` (every module with the positions each channel takes in it).
* A subclass implements `keep_indices()` -> {group name: sorted LongTensor of the output
  channels kept} (a group left out keeps everything). The base's `finalize()` removes the other
  channels for real through the graph's groups and returns a plain smaller network.
* A subclass that gates channels during training attaches one gate module per group with
  `attach_gates({group: module})`: `module()` returns a (C,) tensor that multiplies the group's
  channels where they are read (the input of every reader), which is exactly the function the
  network has once channel c is removed when the gate is 0. The gate module becomes a child of
  the group's root layer (`<root>.channel_gate`), so its parameters are the model's (optimizer,
  DDP, state_dict, deepcopy see them); `finalize()` folds the kept channels' gate values into
  the readers' weights and removes the gates. A gate module that needs a layer's weights keeps a
  plain reference to the layer (`object.__setattr__`), not a registered submodule.
* `predicted_flops(keep)` is the FLOPs of the network `finalize()` gives for a keep dict
  ({group: indices or a count}; default `keep_indices()`), exactly what `ltp_core.core.flops.
  layer_flops` measures on it; `flops_fraction(keep)` divides it by the dense FLOPs;
  `dense_flops` is the dense network's `layer_flops` (both need the example_input).
* Helpers: `channel_params(group)` ((tensor, positions, roots) of every per-channel parameter:
  producer and depthwise filters, biases, BatchNorm gamma/beta), `filter_l1(group)` (a channel's
  filter L1 norm summed over the producers), `FixedGate(values)` (a gate with fixed values, kept
  out of the state_dict), `self.plan` (the `surgery.ChannelPlan`, for `surgery.predicted_flops`,
  `surgery.layer_widths`, ...).
* `hard_masks()` runs the network as `finalize()` will give it (the removed channels read as 0
  and, with gates, the kept ones scaled by their gates); `finalized_copy()`, `hard_state_dict()`,
  `sparsity()` and `flops()` answer without touching the model.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.flops import layer_flops
from ..core.layers import own_class, prunable_layers
from ..core.method import PruningMethod
from .surgery import (
    IN_ROLES,
    ChannelGroup,
    ChannelPlan,
    ReaderGate,
    attach_reader_gates,
    channel_plan,
    check_plan,
    layer_widths,
    mask_readers,
    predicted_flops,
    remove_channels_,
)

__all__ = ["StructuredMethod", "FixedGate", "GATE_NAME"]

GATE_NAME = "channel_gate"  # a group's gate module is the child `<root layer>.channel_gate`


class FixedGate(nn.Module):
    """A gate module with fixed values, e.g. 0/1 for removed/kept channels: a plain tensor
    attribute (no parameter, nothing in the state_dict, so checkpoints keep their keys)."""

    def __init__(self, values: Tensor) -> None:
        super().__init__()
        self.values = values.detach()

    def forward(self) -> Tensor:
        return self.values


class StructuredMethod(PruningMethod):
    """Base of the channel-removing methods (the contract: see the module docstring).

    Args:
        model: the network; any torchvision-style CNN (`ltp_core.methods.surgery.SUPPORTED`).
        exclude: groups whose channels are all kept, by group name or by the name of any layer
            whose output channels are in the group (a producer, its BatchNorm, a depthwise conv).
        example_input: a batch (e.g. one sample) on which the channel dependencies are traced and
            FLOPs measured; required unless the model is an nn.Sequential chain.
        check: remove some channels of every group from a copy at construction and compare it with
            the masked network (`surgery.check_plan`): a coupling the graph got wrong is refused
            here, not found later. Needs example_input.
    """

    def __init__(self, model: nn.Module, exclude: Iterable[str] | str = (), example_input: Tensor | None = None,
                 check: bool = True) -> None:
        who = type(self).__name__
        self.model = model
        self.example_input = example_input
        self.plan: ChannelPlan = channel_plan(model, example_input, who)
        if check and example_input is not None:
            check_plan(model, self.plan, example_input, who)
        self.all_groups: dict[str, ChannelGroup] = self.plan.groups
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        excluded = set()
        for name in exclude:
            group = name if name in self.all_groups else self.plan.group_of(name)
            if group is None:
                raise ValueError(f"exclude names {[name]} are not layers whose channels can be removed; valid names: "
                                 f"{list(self.all_groups)} (group roots) or any layer of their groups")
            excluded.add(group)
        self.groups: dict[str, ChannelGroup] = {n: g for n, g in self.all_groups.items() if n not in excluded}
        if not self.groups:
            raise ValueError(f"nothing left to prune: every channel group {list(self.all_groups)} is excluded")
        self.dense_numel = {n: m.weight.numel() for n, m in prunable_layers(model)}
        self.dense_shapes = dict(self.plan.layers)
        self.dense_flops: dict[str, int] | None = (
            layer_flops(model, example_input) if example_input is not None else None)
        self._plan_flops = self.dense_flops  # layer_flops of the network the plan was traced on
        self._gates: dict[str, nn.Module] = {}
        self._gate_handles: list = []
        self.finalized = False

    # -- the groups ------------------------------------------------------------------------
    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _replan(self) -> None:
        """Trace the groups again (after the model changed shape, e.g. L1-filter's removal)."""
        names = set(self.groups)
        self.plan = channel_plan(self.model, self.example_input, type(self).__name__)
        self.all_groups = self.plan.groups
        self.groups = {n: g for n, g in self.all_groups.items() if n in names}
        if self.example_input is not None:
            self._plan_flops = layer_flops(self.model, self.example_input)

    def channel_params(self, group: ChannelGroup, norms: bool = True) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The group's per-channel parameters as (tensor, positions, roots): dim-0 entry
        positions[k] of tensor belongs to group channel roots[k]. The producers' and depthwise
        convs' weights and biases, PReLU slopes, and (with `norms`) BatchNorm gamma and beta."""
        out = []
        for m in group.members:
            if m.role in IN_ROLES or m.role == "map_out" or (m.role == "norm" and not norms):
                continue
            layer = self.module(m.module)
            keys = ("weight",) if m.role == "prelu" else ("weight", "bias")
            for key in keys:
                t = getattr(layer, key, None)
                if isinstance(t, Tensor):
                    out.append((t, m.positions.to(t.device), m.roots.to(t.device)))
        return out

    @torch.no_grad()
    def filter_l1(self, group: ChannelGroup) -> Tensor:
        """(C,) the L1 norm of each group channel's filters, summed over the group's producers
        (Li et al.'s importance; one producer: its filter norms)."""
        score = torch.zeros(group.channels, dtype=torch.float64)
        for m in group.members:
            if m.role == "producer":
                w = self.module(m.module).weight.detach()
                score.index_add_(0, m.roots, w.abs().flatten(1).sum(1).double().cpu()[m.positions])
        return score

    # -- what a subclass decides -------------------------------------------------------------
    def keep_indices(self) -> dict[str, Tensor]:  # pragma: no cover - subclasses implement
        """{group name: sorted LongTensor of the channels finalize() keeps} (absent: all)."""
        raise NotImplementedError

    def kept_channels(self) -> dict[str, int]:
        """{group: channels finalize() keeps}."""
        if self.finalized:
            return {g: self.module(g).weight.shape[0] for g in self.groups}
        keep = self.keep_indices()
        return {g: int(keep[g].numel()) if g in keep else grp.channels for g, grp in self.groups.items()}

    # -- gates -------------------------------------------------------------------------------
    def attach_gates(self, gates: dict[str, nn.Module]) -> None:
        """Attach gate modules ({group: module with forward() -> (C,) tensor}): each becomes the
        child `<root>.channel_gate` and every reader of the group multiplies input channel c by
        module()[c]. finalize() folds the kept channels' values into the readers."""
        self._check_live()
        unknown = sorted(set(gates) - set(self.groups))
        if unknown:
            raise ValueError(f"{unknown} are not prunable channel groups; valid: {list(self.groups)}")
        for name, gate in gates.items():
            root = self.module(name)
            if hasattr(root, GATE_NAME) or name in self._gates:
                raise ValueError(f"layer {name!r} already has a {GATE_NAME}: one gating method per network")
            root.add_module(GATE_NAME, gate)
        self._gates.update(gates)
        self._gate_handles += attach_reader_gates(self.model, self.plan, gates)

    @torch.no_grad()
    def gate_values(self) -> dict[str, Tensor]:
        """{group: its gate module's (C,) values now} for the attached gates."""
        return {g: m().detach() for g, m in self._gates.items()}

    def _strip(self, model: nn.Module, live: bool) -> None:
        """Remove the gate hooks and modules: from the model (live) or from a deep copy of it."""
        if live:
            for h in self._gate_handles:
                h.remove()
            self._gate_handles = []
        else:
            for m in model.modules():
                for key, hook in list(m._forward_pre_hooks.items()):
                    if isinstance(hook, ReaderGate):
                        del m._forward_pre_hooks[key]
        for name in self._gates:
            root = model.get_submodule(name)
            if GATE_NAME in root._modules:
                del root._modules[GATE_NAME]

    # -- the deployed network ----------------------------------------------------------------
    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        """Inside the block every reader sees the channels finalize() removes as 0 (on top of
        any gates): the forward is the finalized network's."""
        self._check_live()
        keep = {g: k for g, k in self.keep_indices().items() if int(k.numel()) < self.groups[g].channels}
        handles = mask_readers(self.model, self.plan, keep) if keep else []
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _unwrap(self, model: nn.Module, live: bool) -> nn.Module:
        """The model without the method's gates and weight parametrizations (the weights as
        they act now): a plain network the surgery can shrink."""
        self._strip(model, live)
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and parametrize.is_parametrized(m):
                own_class(m)
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        return model

    def _surgery(self, model: nn.Module, live: bool) -> nn.Module:
        keep = self.keep_indices()
        scales = {g: v for g, v in self.gate_values().items()}
        return remove_channels_(self._unwrap(model, live), self.plan, keep, scales)

    @torch.no_grad()
    def ungated_copy(self) -> nn.Module:
        """A deep copy of the network with every channel, without the method's gates and weight
        parametrizations: what `surgery.remove_channels_(copy, method.plan, keep)` shrinks to any
        other widths. The model is untouched."""
        self._check_live()
        return self._unwrap(copy.deepcopy(self.model), live=False)

    @torch.no_grad()
    def finalized_copy(self) -> nn.Module:
        """A deep copy of the network finalize() would give; the model is untouched."""
        self._check_live()
        return self._surgery(copy.deepcopy(self.model), live=False)

    def hard_state_dict(self) -> dict[str, Tensor]:
        """The state_dict finalize() would give (smaller tensors), the model untouched."""
        return self.finalized_copy().state_dict()

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Remove the channels keep_indices() drops, for real, from every member of their
        groups (gates folded into the readers, then removed). Returns the model, a plain smaller
        network of the same modules."""
        self._check_live()
        self._surgery(self.model, live=True)
        self.finalized = True
        return self.model

    # -- measurements ------------------------------------------------------------------------
    def predicted_flops(self, keep: dict | None = None) -> int:
        """FLOPs of one forward of example_input through the network finalize() gives for `keep`
        ({group: indices or a count}; default keep_indices()), from the dense FLOPs; equal to
        what `layer_flops` measures on it."""
        if self.dense_flops is None:
            raise ValueError("predicted_flops() needs the example_input given at construction")
        return predicted_flops(self.plan, self._plan_flops, self.keep_indices() if keep is None else keep)

    def flops_fraction(self, keep: dict | None = None) -> float:
        """predicted_flops(keep) / the dense network's FLOPs."""
        if self.dense_flops is None:
            raise ValueError("flops_fraction() needs the example_input given at construction")
        return self.predicted_flops(keep) / self.dense_flops["total"]

    @torch.no_grad()
    def flops(self, example_input: Tensor | None = None) -> int:
        """FLOPs of one forward through the network finalize() gives: measured with `layer_flops`
        on `example_input` (a finalized deep copy while the method is live), or, without one,
        predicted for the constructor's example_input."""
        if example_input is None:
            if self.finalized:
                if self.example_input is None:
                    raise ValueError("flops() needs an example_input (here or in the constructor)")
                return layer_flops(self.model, self.example_input)["total"]
            if self.dense_flops is None:
                raise ValueError("flops() needs an example_input (here or in the constructor)")
            return self.predicted_flops()
        return layer_flops(self.model if self.finalized else self.finalized_copy(), example_input)["total"]

    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        """{Conv/Linear layer: fraction of its original weights removed, "total"}: a layer loses
        rows for its removed output channels and columns for its removed inputs."""
        if self.finalized:
            now = {n: self.module(n).weight.numel() for n in self.dense_numel}
        else:
            widths = layer_widths(self.plan, self.keep_indices())
            now = {}
            for n, dense in self.dense_numel.items():
                o, i, depthwise = self.dense_shapes[n]
                o2, i2 = widths[n]
                now[n] = dense * o2 // o if depthwise else dense * o2 * i2 // (o * i)
        out = {n: 1.0 - now[n] / d for n, d in self.dense_numel.items()}
        out["total"] = 1.0 - sum(now.values()) / sum(self.dense_numel.values())
        return out

    def __repr__(self) -> str:
        state = "finalized" if self.finalized else f"keeps {self.kept_channels()}"
        return f"{type(self).__name__}({len(self.groups)} channel groups, {state})"
