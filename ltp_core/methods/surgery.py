"""Channel groups of any torchvision-style CNN, and the surgery that removes channels for real.

Removing output channel c of a convolution is only half of the job: its BatchNorm loses entry
c, every layer that reads the channel loses input c, and where a residual add joins this
tensor with others (a ResNet stage, an inverted-residual block) or a depthwise convolution
and a squeeze-and-excitation gate act on it per channel, all of them must lose the same
channel. Torch-Pruning's dependency graph (`tp.DependencyGraph().build_dependency(model,
example_input)`, which traces one forward with autograd) finds these coupled sets; here they are
turned into `ChannelGroup`s:

    plan = channel_plan(model, example_input)          # {group name: ChannelGroup}
    keep = {"conv1": torch.tensor([0, 2, 3]), ...}     # a method decides what stays
    remove_channels_(model, plan, keep)                # the model is now smaller, in place
    predicted_flops(plan, dense_flops, keep)           # == ltp_core.core.flops.layer_flops(model, x)

A group is named after its root: its first Conv/Linear *producer* in `model.named_modules()`
order. Each member is a module with the positions the group's channels take in it: the rows
of a producer's weight, a BatchNorm's entries, a depthwise conv's channels (`groups` follows),
the input columns of a *reader* (a Conv/Linear that reads the channels; a Linear after a
Flatten reads `spatial` columns per channel), the entries of a PReLU. Groups whose channels
reach the model's output (the classifier's) are not prunable and are left out.

The CIFAR ResNets' option-A shortcut (`ltp_core.models`: subsample, zero-pad the channels)
is a registered layer: its input channels belong to the previous stage's group and its output
channels to the next one's, and surgery replaces it by a `ChannelMap` (subsample, then output
channel j = scale[j] * input channel source[j], or zeros).

What the graph cannot handle is refused with a ValueError naming the layer: a grouped (not
depthwise) conv, LayerNorm/GroupNorm/embeddings/attention in a group, a split or slice along
the channels, an operation the graph takes as element-wise although it changes the channel
count (then a group covers only part of a layer). `check_plan` also removes a few channels of
every group from a copy and compares it with the network whose readers see those channels
as zero: a coupling the graph got wrong, or forward code with a hard-coded channel count,
fails there, and the message names the group.

The finalized network is a plain smaller model of the same classes (the same module objects,
resized in place; `ChannelMap` in place of option-A shortcuts). Save it whole (`save_pruned`,
`load_pruned`: torch.load with weights_only=True and the model's own classes allowed), or save
its state_dict and load that into the dense architecture with `load_pruned_state_dict(get_model(...),
state_dict)`, which first resizes every layer to the state_dict's shapes.
"""
from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..models import _ShortcutA
from .channels import NORM_TYPES, channel_links

__all__ = ["Member", "ChannelGroup", "ChannelPlan", "ChannelMap", "channel_plan", "check_plan", "remove_channels_",
           "predicted_flops", "layer_widths", "ReaderGate", "attach_reader_gates", "mask_readers",
           "save_pruned", "load_pruned", "load_pruned_state_dict", "SUPPORTED"]

SUPPORTED = ("CNNs built from Conv1d/2d/3d (groups=1 or depthwise), Linear, BatchNorm, PReLU and "
             "channel-preserving operations (activations, pooling, residual adds, products with "
             "per-channel gates, concatenation and flattening before a Linear): torchvision's ResNets, "
             "MobileNets, EfficientNets, VGGs, and ltp_core.models' chains and CIFAR ResNets")

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES = (*CONV_TYPES, nn.Linear)
MAP_TYPES: tuple[type[nn.Module], ...] = ()  # set below, after ChannelMap
OUT_ROLES = ("producer", "depthwise", "norm", "prelu", "map_out")
IN_ROLES = ("reader", "map_in")
# grad_fn names of operations that keep channel c at channel c (what the graph assumes of an
# element-wise op); any other element-wise op in a group that fails a check is named as a suspect
_CHANNELWISE = ("relu", "hardtanh", "add", "sub", "mul", "div", "sigmoid", "silu", "hardswish", "hardsigmoid",
                "gelu", "tanh", "elu", "leakyrelu", "clone", "clamp", "mean", "maxpool", "avgpool",
                "adaptiveavgpool", "adaptivemaxpool", "nativedropout", "tbackward", "neg", "exp", "sqrt", "pow",
                "permute", "squeeze", "unsqueeze", "transpose", "cudnnbatchnorm", "nativebatchnorm", "slice",
                "select", "index", "where", "softplus", "mish", "prelu", "upsample", "max", "min", "abs",
                "reshape", "view", "flatten", "concat", "cat")


class ChannelMap(nn.Module):
    """What an option-A shortcut becomes after surgery: `x[..., ::stride, ::stride]`, then
    output channel j = scale[j] * input channel source[j] (zeros where source[j] = -1)."""

    def __init__(self, stride: int, source: Tensor, scale: Tensor | None = None,
                 in_channels: int | None = None) -> None:
        super().__init__()
        self.stride = int(stride)
        source = torch.as_tensor(source, dtype=torch.long)
        self.register_buffer("source", source.clone())
        self.register_buffer("scale", torch.ones(source.numel()) if scale is None else scale.detach().clone().float())
        self.in_channels = int(in_channels) if in_channels is not None else int(source.max()) + 1

    @classmethod
    def from_shortcut(cls, shortcut: _ShortcutA, in_channels: int) -> ChannelMap:
        half = shortcut.pad // 2
        out = in_channels + shortcut.pad
        source = torch.arange(out) - half
        source[(source < 0) | (source >= in_channels)] = -1
        return cls(shortcut.stride, source, in_channels=in_channels)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        x = x[(slice(None), slice(None), *([slice(None, None, s)] * (x.dim() - 2)))]
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)
        index = torch.where(self.source < 0, torch.full_like(self.source, x.shape[1]), self.source)
        scale = self.scale.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
        return padded.index_select(1, index) * scale

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.source.numel()}, stride={self.stride}"


MAP_TYPES = (_ShortcutA, ChannelMap)


@dataclass
class Member:
    """One module of a group: `role` (producer, depthwise, norm, prelu, map_out: the module's
    own output channels; reader, map_in: its input channels), and for each of the group's
    channels the positions it takes there: `positions[k]` belongs to group channel `roots[k]`."""
    module: str
    role: str
    positions: Tensor
    roots: Tensor


@dataclass
class ChannelGroup:
    """Channels that are removed together; `name` is the root layer, `channels` their count."""
    name: str
    channels: int
    members: list[Member]
    ops: list[str] = field(default_factory=list)  # the graph's non-module operations in the group

    def _names(self, *roles: str) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members if m.role in roles))

    @property
    def producers(self) -> list[str]:
        """Conv/Linear layers whose weight rows are the group's filters, the root first."""
        return self._names("producer")

    @property
    def depthwise(self) -> list[str]:
        return self._names("depthwise")

    @property
    def norms(self) -> list[str]:
        return self._names("norm")

    @property
    def readers(self) -> list[str]:
        """Modules whose input channels are the group's (Conv/Linear readers, shortcut maps)."""
        return self._names(*IN_ROLES)

    def __repr__(self) -> str:
        return (f"ChannelGroup({self.name!r}, {self.channels} channels, producers={self.producers}, "
                f"depthwise={self.depthwise}, norms={len(self.norms)}, readers={self.readers})")


@dataclass
class ChannelPlan:
    """Every prunable group of a model, and the shapes of its Conv/Linear layers (at discovery)."""
    groups: dict[str, ChannelGroup]
    layers: dict[str, tuple[int, int, bool]]  # Conv/Linear name -> (out, in, depthwise)
    model_name: str = "model"
    map_inputs: dict[str, int] = field(default_factory=dict)  # shortcut map -> its input channels

    def group_of(self, module: str) -> str | None:
        """The group whose producer (or depthwise conv, norm) `module` is; None if none."""
        for g in self.groups.values():
            if any(m.module == module and m.role in OUT_ROLES for m in g.members):
                return g.name
        return None


def _refuse(who: str, model: nn.Module, why: str) -> ValueError:
    return ValueError(f"{who} cannot prune {type(model).__name__}: {why}. Supported: {SUPPORTED}.")


def _channels(module: nn.Module, role: str, map_inputs: dict[int, int]) -> int:
    if role in ("producer", "depthwise"):
        return module.weight.shape[0]
    if role == "norm":
        return module.num_features
    if role == "prelu":
        return module.num_parameters
    if role == "reader":
        return module.in_features if isinstance(module, nn.Linear) else module.in_channels
    if role == "map_out":
        return map_inputs[id(module)] + module.pad if isinstance(module, _ShortcutA) else module.source.numel()
    return map_inputs[id(module)]  # map_in


def _check_parametrized(model: nn.Module, who: str) -> None:
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            raise _refuse(who, model, f"layer {name!r} has a parametrization ({type(m).__name__}); attach the "
                                      "structured method to the plain network")


def _map_pruner(map_inputs: dict[int, int]):
    import torch_pruning as tp

    class _MapPruner(tp.pruner.function.BasePruningFunc):
        # input and output channels of a shortcut map are separate groups (no intra-layer
        # coupling): the map is rebuilt from both keep sets by the surgery, not by this pruner
        def prune_out_channels(self, layer, idxs):
            return layer

        def prune_in_channels(self, layer, idxs):
            return layer

        def get_out_channels(self, layer):
            return _channels(layer, "map_out", map_inputs)

        def get_in_channels(self, layer):
            return map_inputs[id(layer)]

    return _MapPruner()


def channel_plan(model: nn.Module, example_input: Tensor | None = None, who: str = "structured pruning") -> ChannelPlan:
    """The prunable channel groups of `model` (see the module docstring), from Torch-Pruning's
    dependency graph traced on `example_input` (a batch, e.g. one sample). Without an example
    input an `nn.Sequential` chain is read layer by layer (`channels.channel_links`). Refuses,
    naming the layer, what the surgery cannot handle. The model's train/eval mode is kept."""
    _check_parametrized(model, who)
    if example_input is None:
        if type(model) is not nn.Sequential:
            raise ValueError(f"{who} needs an example_input (a batch, e.g. one training sample) to trace the "
                             f"channel dependencies of {type(model).__name__}; only an nn.Sequential chain is read "
                             "without one")
        return _chain_plan(model, who)
    return _graph_plan(model, example_input, who)


def _layer_shapes(model: nn.Module) -> dict[str, tuple[int, int, bool]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = (m.out_features, m.in_features, False)
        elif isinstance(m, CONV_TYPES):
            out[name] = (m.out_channels, m.in_channels, m.groups > 1 and m.groups == m.in_channels == m.out_channels)
    return out


def _chain_plan(model: nn.Sequential, who: str) -> ChannelPlan:
    groups = {}
    for link in channel_links(model, who):
        c = model.get_submodule(link.producer).weight.shape[0]
        ar = torch.arange(c)
        members = [Member(link.producer, "producer", ar, ar)]
        if link.norm is not None:
            members.append(Member(link.norm, "norm", ar, ar))
        s = link.spatial
        members.append(Member(link.consumer, "reader", torch.arange(c * s), ar.repeat_interleave(s)))
        groups[link.producer] = ChannelGroup(link.producer, c, members)
    return ChannelPlan(groups, _layer_shapes(model), type(model).__name__)


def _graph_plan(model: nn.Module, example_input: Tensor, who: str) -> ChannelPlan:
    import torch_pruning as tp
    from torch_pruning import ops

    names = {id(m): n for n, m in model.named_modules()}
    places: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        places[id(m)] = places.get(id(m), 0) + 1
    map_inputs: dict[int, int] = {}

    def record(module, args, output):
        map_inputs[id(module)] = args[0].shape[1]

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, MAP_TYPES)]
    pruner = _map_pruner(map_inputs)
    was_training = model.training
    x = example_input.detach()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=x, customized_pruners={t: pruner for t in MAP_TYPES}, verbose=False)
            raw = list(graph.get_all_groups(root_module_types=LAYER_TYPES))
    except Exception as e:  # the trace itself failed
        raise _refuse(who, model, f"its forward could not be traced on the example input "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    order = {n: i for i, n in enumerate(names.values())}
    groups: dict[str, ChannelGroup] = {}
    for group in raw:
        built = _translate(model, group, names, places, map_inputs, graph, ops, who)
        if built is not None:
            groups[built.name] = built
    groups = dict(sorted(groups.items(), key=lambda kv: order.get(kv[0], 0)))
    plan = ChannelPlan(groups, _layer_shapes(model), type(model).__name__,
                       {names[k]: v for k, v in map_inputs.items() if k in names})
    _check_coverage(model, plan, who)
    return plan


def _translate(model, group, names, places, map_inputs, graph, ops, who) -> ChannelGroup | None:
    """One Torch-Pruning group as a ChannelGroup (None: its channels reach the output)."""
    members: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    op_names: list[str] = []
    for item in group:
        dep, idxs = item.dep, item.idxs
        roots = item.root_idxs
        target = dep.target.module
        handler = dep.handler
        if isinstance(target, ops._OutputOp):
            return None
        if not dep.target.outputs and not graph.is_in_channel_pruning_fn(handler):
            return None  # nothing reads these channels: they are the model's output (the classifier's)
        if isinstance(target, nn.Parameter):
            raise _refuse(who, model, f"a parameter used outside a layer ({graph._param_to_name.get(target, '?')}) "
                                      "takes the channels of a group")
        if isinstance(target, (ops._ElementWiseOp, ops._ConcatOp, ops._ReshapeOp)):
            op_names.append(_op_name(target))
            continue
        if isinstance(target, (ops._SplitOp, ops._UnbindOp, ops._ExpandOp, ops._SliceOp)):
            dim = getattr(target, "dim", None)
            grad_fn = getattr(dep.target, "grad_fn", None)
            if dim is None and grad_fn is not None:
                dim = getattr(grad_fn, "_saved_dim", None)
            if dim == 1:
                raise _refuse(who, model, f"the forward splits or slices the channels of the group of "
                                          f"{_near(group, names)} ({_op_name(target)}); the code's channel counts "
                                          "would not follow the removal")
            op_names.append(_op_name(target))
            continue
        name = names.get(id(target))
        if name is None:
            raise _refuse(who, model, f"an unnamed module ({type(target).__name__}) takes the channels of a group")
        if places.get(id(target), 1) > 1:
            raise _refuse(who, model, f"layer {name!r} is one module used at several places of the model")
        is_out = graph.is_out_channel_pruning_fn(handler)
        if isinstance(target, CONV_TYPES):
            depthwise = target.groups > 1 and target.groups == target.in_channels == target.out_channels
            if target.groups > 1 and not depthwise:
                raise _refuse(who, model, f"layer {name!r} is a grouped convolution (groups={target.groups}); only "
                                          "groups=1 and depthwise convolutions are supported")
            if isinstance(target, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                raise _refuse(who, model, f"layer {name!r} is a transposed convolution")
            role = "depthwise" if depthwise else ("producer" if is_out else "reader")
        elif isinstance(target, nn.Linear):
            role = "producer" if is_out else "reader"
        elif isinstance(target, NORM_TYPES):
            role = "norm"
        elif isinstance(target, nn.PReLU):
            if target.num_parameters == 1:
                continue
            role = "prelu"
        elif isinstance(target, MAP_TYPES):
            role = "map_out" if is_out else "map_in"
        else:
            raise _refuse(who, model, f"layer {name!r} ({type(target).__name__}) takes the channels of the group of "
                                      f"{_near(group, names)}; the surgery handles Conv, Linear, BatchNorm and PReLU")
        pos, rt = members.setdefault((name, role), ([], []))
        for i, r in zip(idxs, roots):
            pos.append(int(i))
            rt.append(int(r))
    built = []
    for (name, role), (pos, rt) in members.items():
        p, r = torch.tensor(pos, dtype=torch.long), torch.tensor(rt, dtype=torch.long)
        p, inverse = torch.unique(p, return_inverse=True)  # merged duplicates keep one root each
        roots = torch.empty_like(p)
        roots[inverse] = r
        built.append(Member(name, role, p, roots))
    producers = [m for m in built if m.role == "producer"]
    if not producers:
        return None
    order = {n: i for i, n in enumerate(names.values())}
    root = min(producers, key=lambda m: order.get(m.module, 0))
    channels = model.get_submodule(root.module).weight.shape[0]
    # express every root index in the root producer's own channel order
    size = max(int(m.roots.max()) for m in built) + 1
    relabel = torch.full((size,), -1, dtype=torch.long)
    relabel[root.roots] = root.positions
    for m in built:
        m.roots = relabel[m.roots]  # -1: a channel the root does not have (refused by the coverage check)
    built.sort(key=lambda m: (order.get(m.module, 0), m.role))
    return ChannelGroup(root.module, channels, built, op_names)


def _op_name(op) -> str:
    fn = getattr(op, "_grad_fn", None)
    if fn is not None and not isinstance(fn, str) and hasattr(fn, "name"):
        return fn.name()
    return str(fn) if fn is not None else type(op).__name__.strip("_")


def _near(group, names) -> str:
    for item in group:
        n = names.get(id(item.dep.target.module))
        if n is not None:
            return repr(n)
    return "an unnamed layer"


def _check_coverage(model: nn.Module, plan: ChannelPlan, who: str) -> None:
    """Each layer's own channels belong whole to one group, one channel per group channel; a
    reader's input positions to at most one group each."""
    map_inputs = {id(model.get_submodule(n)): c for n, c in plan.map_inputs.items()}
    owner: dict[str, str] = {}  # module -> the group owning its output channels
    readers: dict[tuple[str, bool], tuple[Tensor, list[str]]] = {}  # (module, reads?) -> (positions taken, by)
    for g in plan.groups.values():
        suspects = [o for o in g.ops if not any(k in o.lower() for k in _CHANNELWISE)]
        hint = (f" through {', '.join(dict.fromkeys(suspects))}, an operation the dependency graph takes as "
                "element-wise although it changes the channel count" if suspects else "")
        for m in g.members:
            size = _channels(model.get_submodule(m.module), m.role, map_inputs)
            if m.role in ("producer", "map_out"):  # a layer's own rows: whole, one per group channel
                if m.positions.numel() != size or size != g.channels or bool((m.roots < 0).any()):
                    raise _refuse(who, model, f"the {size} channels of layer {m.module!r} are joined with the "
                                              f"{g.channels} channels of {g.name!r}{hint}")
                if owner.setdefault(m.module, g.name) != g.name:
                    raise _refuse(who, model, f"the channels of layer {m.module!r} belong to two groups "
                                              f"({owner[m.module]!r} and {g.name!r})")
                continue
            # a reader, or a per-channel layer after a concatenation (BatchNorm, depthwise conv):
            # some of its channels, the same number for each group channel
            if bool((m.roots < 0).any()) or int(m.positions.max()) >= size or m.positions.numel() % g.channels:
                raise _refuse(who, model, f"layer {m.module!r} takes {m.positions.numel()} of its {size} "
                                          f"channels from the {g.channels} channels of {g.name!r}, which do not "
                                          f"map onto them one by one{hint}")
            if m.role in ("norm", "depthwise", "prelu") and m.positions.numel() != g.channels:
                raise _refuse(who, model, f"the channels of layer {m.module!r} do not map one by one onto the "
                                          f"{g.channels} channels of {g.name!r}{hint}")
            taken, by = readers.setdefault((m.module, m.role in IN_ROLES), (torch.zeros(size, dtype=torch.long), []))
            taken[m.positions] += 1
            by.append(g.name)
            if int(taken.max()) > 1:
                raise _refuse(who, model, f"input channels of layer {m.module!r} belong to two groups ({by})")


# -- keep sets -----------------------------------------------------------------------------------

def _keep_mask(group: ChannelGroup, keep: Tensor | int | None, device=None) -> Tensor:
    """Boolean (C,) of the channels kept; keep = indices, a count (the first ones) or None (all)."""
    c = group.channels
    if keep is None:
        return torch.ones(c, dtype=torch.bool, device=device)
    if isinstance(keep, int) and not isinstance(keep, bool):
        if not 1 <= keep <= c:
            raise ValueError(f"group {group.name!r} has {c} channels; keeping {keep} is not in [1, {c}]")
        mask = torch.zeros(c, dtype=torch.bool, device=device)
        mask[:keep] = True
        return mask
    idx = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= c:
        raise ValueError(f"channels to keep of group {group.name!r} must be 1..{c} indices in [0, {c}), "
                         f"got {idx.tolist()}")
    mask = torch.zeros(c, dtype=torch.bool)
    mask[idx] = True
    return mask.to(device) if device is not None else mask


def _check_keep(plan: ChannelPlan, keep: dict) -> None:
    unknown = sorted(set(keep) - set(plan.groups))
    if unknown:
        raise ValueError(f"{unknown} are not channel groups of the model; valid: {sorted(plan.groups)}")


# -- widths and FLOPs ----------------------------------------------------------------------------

def _removed(plan: ChannelPlan, keep: dict) -> dict[tuple[str, str], Tensor]:
    """{(module, "out" | "in"): positions removed} for a keep dict."""
    _check_keep(plan, keep)
    removed: dict[tuple[str, str], list[Tensor]] = {}
    for name, idx in keep.items():
        group = plan.groups[name]
        dropped = ~_keep_mask(group, idx)
        if not bool(dropped.any()):
            continue
        for m in group.members:
            hit = dropped[m.roots]
            if bool(hit.any()):
                removed.setdefault((m.module, "out" if m.role in OUT_ROLES else "in"), []).append(m.positions[hit])
    return {k: torch.cat(v).unique() for k, v in removed.items()}


def layer_widths(plan: ChannelPlan, keep: dict) -> dict[str, tuple[int, int]]:
    """{Conv/Linear name: (output channels, input channels) after removing what `keep` drops}."""
    removed = {k: v.numel() for k, v in _removed(plan, keep).items()}
    out = {}
    for name, (o, i, depthwise) in plan.layers.items():
        o2 = o - removed.get((name, "out"), 0)
        out[name] = (o2, o2 if depthwise else i - removed.get((name, "in"), 0))
    return out


def predicted_flops(plan: ChannelPlan, dense: dict[str, int], keep: dict) -> int:
    """FLOPs of the network `remove_channels_(plan, keep)` gives, from the dense `layer_flops`
    dict: a Conv/Linear costs its dense FLOPs x (out kept / out) x (in kept / in) (a depthwise
    conv: x channels kept / channels), exactly what FlopCounterMode measures; FLOPs no layer owns
    stay as they are."""
    widths = layer_widths(plan, keep)
    total = dense["total"]
    for name, f in dense.items():
        if name == "total" or name not in plan.layers:
            continue
        o, i, depthwise = plan.layers[name]
        o2, i2 = widths[name]
        total += (f * o2 // o if depthwise else f * o2 * i2 // (o * i)) - f
    return int(total)


# -- gates at the readers --------------------------------------------------------------------------

class ReaderGate:
    """A forward pre-hook that multiplies a reader's input channels by its groups' gates: for
    each (gate, positions, roots), input position positions[k] is scaled by gate()[roots[k]].
    Holds references to the gate modules (children of the model), so a deep copy of the model
    gets a hook on its own gates."""

    def __init__(self, dim: int, size: int, parts: list[tuple[Callable[[], Tensor], Tensor, Tensor]]) -> None:
        self.dim, self.size, self.parts = dim, size, parts
        ar = torch.arange(size)
        # one group read whole and in order (the common case): the gate is the scale itself
        self._identity = len(parts) == 1 and parts[0][1].numel() == size and bool(
            torch.equal(parts[0][1], ar) and torch.equal(parts[0][2], ar))
        self._cache: dict = {}

    def _index(self, t: Tensor, device) -> Tensor:
        key = (id(t), device)
        if key not in self._cache:
            self._cache[key] = t.to(device)
        return self._cache[key]

    def __deepcopy__(self, memo):
        new = ReaderGate.__new__(ReaderGate)
        memo[id(self)] = new
        new.dim, new.size, new._identity, new._cache = self.dim, self.size, self._identity, {}
        new.parts = [(copy.deepcopy(g, memo), p, r) for g, p, r in self.parts]
        return new

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        if self._identity:
            scale = self.parts[0][0]().to(x.dtype)
        else:
            scale = x.new_ones(self.size)
            for gate, pos, roots in self.parts:
                value = gate().to(x.dtype)
                scale = scale.index_copy(0, self._index(pos, x.device), value[self._index(roots, x.device)])
        shape = [1] * x.dim()
        shape[self.dim if self.dim >= 0 else x.dim() + self.dim] = self.size
        return (x * scale.view(shape), *args[1:])


def _reader_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def attach_reader_gates(model: nn.Module, plan: ChannelPlan,
                        gates: dict[str, Callable[[], Tensor]]) -> list[torch.utils.hooks.RemovableHandle]:
    """Register on every reader of the named groups a `ReaderGate` (input channels x gate());
    returns the hook handles. One hook per reader, whatever the number of groups it reads."""
    _check_keep(plan, gates)
    per_reader: dict[str, list] = {}
    for name, gate in gates.items():
        for m in plan.groups[name].members:
            if m.role in IN_ROLES:
                per_reader.setdefault(m.module, []).append((gate, m.positions, m.roots))
    handles = []
    map_inputs = {id(model.get_submodule(n)): c for n, c in plan.map_inputs.items()}
    for reader, parts in per_reader.items():
        module = model.get_submodule(reader)
        role = "map_in" if isinstance(module, MAP_TYPES) else "reader"
        size = _channels(module, role, map_inputs)
        handles.append(module.register_forward_pre_hook(ReaderGate(_reader_dim(module), size, parts)))
    return handles


class _Constant(nn.Module):
    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self) -> Tensor:
        return self.value


@torch.no_grad()
def mask_readers(model: nn.Module, plan: ChannelPlan, keep: dict) -> list:
    """Hooks that make every reader see the channels `keep` drops as 0; returns the handles."""
    gates = {}
    for name, idx in keep.items():
        device = next((model.get_submodule(m.module).weight.device for m in plan.groups[name].members
                       if m.role == "producer"), None)
        gates[name] = _Constant(_keep_mask(plan.groups[name], idx).float().to(device))
    return attach_reader_gates(model, plan, gates)


# -- the surgery ------------------------------------------------------------------------------------

def _kept(size: int, removed: Tensor | None, device) -> Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    if removed is not None:
        keep[removed] = False
    return keep.nonzero().flatten().to(device)


def _set_param(module: nn.Module, key: str, value: Tensor) -> None:
    old = getattr(module, key)
    if isinstance(old, nn.Parameter):
        setattr(module, key, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        module._buffers[key] = value.contiguous()


@torch.no_grad()
def remove_channels_(model: nn.Module, plan: ChannelPlan, keep: dict,
                     scales: dict[str, Tensor] | None = None) -> nn.Module:
    """Remove, in place, every channel `keep` ({group: kept indices or a count}; groups not named
    keep all) drops, from every member of its group. `scales` ({group: (C,) values}) are folded into
    the readers first: input channel c of each reader is multiplied by scales[group][c], so a
    network whose readers saw gated inputs computes the same after the gates are gone.
    Layers are resized in place (same objects); option-A shortcuts become `ChannelMap`s."""
    _check_keep(plan, keep)
    scales = dict(scales or {})
    _check_keep(plan, scales)
    removed = _removed(plan, keep)
    map_inputs = {}
    for n, c in plan.map_inputs.items():
        map_inputs[n] = c
    # fold the scales into the readers (before any position moves)
    map_scale: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for name, value in scales.items():
        for m in plan.groups[name].members:
            if m.role == "reader":
                layer = model.get_submodule(m.module)
                w = layer.weight
                factor = value.detach().to(device=w.device, dtype=w.dtype)[m.roots.to(w.device)]
                dim = 1
                shape = [1] * w.dim()
                shape[dim] = -1
                w.index_copy_(dim, m.positions.to(w.device),
                              w.index_select(dim, m.positions.to(w.device)) * factor.view(shape))
            elif m.role == "map_in":
                map_scale.setdefault(m.module, []).append((value.detach().cpu().float(), m.positions, m.roots))
    touched = {k[0] for k in removed} | set(map_scale)
    for name in touched:
        module = model.get_submodule(name)
        out_rm, in_rm = removed.get((name, "out")), removed.get((name, "in"))
        if isinstance(module, MAP_TYPES):
            _rebuild_map(model, name, module, plan.map_inputs[name], out_rm, in_rm, map_scale.get(name, []))
        elif isinstance(module, CONV_TYPES):
            dev = module.weight.device
            rows = _kept(module.weight.shape[0], out_rm, dev)
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            cols = rows if depthwise else _kept(module.in_channels, in_rm, dev)
            w = module.weight.index_select(0, rows)
            if not depthwise:
                w = w.index_select(1, cols)
            _set_param(module, "weight", w)
            if module.bias is not None:
                _set_param(module, "bias", module.bias.index_select(0, rows))
            module.out_channels = rows.numel()
            module.in_channels = cols.numel()
            if depthwise:
                module.groups = rows.numel()
        elif isinstance(module, nn.Linear):
            dev = module.weight.device
            rows = _kept(module.out_features, out_rm, dev)
            cols = _kept(module.in_features, in_rm, dev)
            _set_param(module, "weight", module.weight.index_select(0, rows).index_select(1, cols))
            if module.bias is not None:
                _set_param(module, "bias", module.bias.index_select(0, rows))
            module.out_features, module.in_features = rows.numel(), cols.numel()
        elif isinstance(module, NORM_TYPES):
            ref = module.running_mean if module.running_mean is not None else module.weight
            idx = _kept(module.num_features, out_rm, ref.device)
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, key, None) is not None:
                    _set_param(module, key, getattr(module, key).index_select(0, idx))
            module.num_features = idx.numel()
        elif isinstance(module, nn.PReLU):
            idx = _kept(module.num_parameters, out_rm, module.weight.device)
            _set_param(module, "weight", module.weight.index_select(0, idx))
            module.num_parameters = idx.numel()
    return model


def _rebuild_map(model, name, module, in_channels, out_rm, in_rm, scale_parts) -> None:
    cmap = module if isinstance(module, ChannelMap) else ChannelMap.from_shortcut(module, in_channels)
    source, scale = cmap.source.cpu().clone(), cmap.scale.cpu().clone()
    for value, pos, roots in scale_parts:  # input channel pos[k] scaled by value[roots[k]]
        per_input = torch.ones(in_channels)
        per_input[pos] = value[roots]
        valid = source >= 0
        scale[valid] *= per_input[source[valid]]
    keep_out = _kept(source.numel(), out_rm, "cpu")
    keep_in = _kept(in_channels, in_rm, "cpu")
    new_index = torch.full((in_channels,), -1, dtype=torch.long)
    new_index[keep_in] = torch.arange(keep_in.numel())
    source, scale = source[keep_out], scale[keep_out]
    source = torch.where(source >= 0, new_index[source.clamp_min(0)], source)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    new = ChannelMap(cmap.stride, source, scale, in_channels=keep_in.numel()).to(device)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# -- checks ---------------------------------------------------------------------------------------

def _probe_keep(plan: ChannelPlan, names: Iterable[str], seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for name in names:
        c = plan.groups[name].channels
        if c < 2:
            continue
        k = max(1, c // 2)
        keep[name] = torch.randperm(c, generator=g)[:k].sort().values
    return keep


@torch.no_grad()
def _probe(model: nn.Module, plan: ChannelPlan, x: Tensor, keep: dict) -> str | None:
    clone = copy.deepcopy(model).eval()
    handles = mask_readers(clone, plan, keep)
    try:
        expected = clone(x)
    finally:
        for h in handles:
            h.remove()
    try:
        remove_channels_(clone, plan, keep)
        got = clone(x)
    except Exception as e:  # noqa: BLE001 - any failure of the smaller network is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if got.shape != expected.shape:
        return f"output shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    scale = float(expected.abs().max().clamp_min(1e-6))
    gap = float((got - expected).abs().max()) / scale
    return None if gap <= 1e-4 else f"outputs differ by {gap:.2e} (relative) from the masked network's"


def check_plan(model: nn.Module, plan: ChannelPlan, example_input: Tensor, who: str = "structured pruning",
               seed: int = 0) -> None:
    """Remove about half the channels of every group from a deep copy (eval mode) and compare
    its output on a random input shaped like `example_input` with the network whose readers see
    those channels as 0. A ValueError names the groups that fail alone, if any does."""
    if not plan.groups:
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(example_input.shape, generator=g).to(example_input.device, example_input.dtype) \
        if example_input.is_floating_point() else example_input
    if _probe(model, plan, x, _probe_keep(plan, plan.groups, seed)) is None:
        return
    failing = []
    for name in plan.groups:
        why = _probe(model, plan, x, _probe_keep(plan, [name], seed))
        if why is not None:
            failing.append(f"{name!r} ({why})")
    detail = "; ".join(failing) if failing else "only when several groups shrink together"
    raise _refuse(who, model, f"removing channels through the dependency graph does not give the masked network's "
                              f"function for the group(s) of {detail}")


# -- saving and loading ---------------------------------------------------------------------------

def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the finalized network whole (`torch.save` of the module, written atomically)."""
    from ..io import atomic_save
    atomic_save(model, path)


def load_pruned(path: str | os.PathLike, classes: Iterable[type] = (), map_location=None) -> nn.Module:
    """Load a network `save_pruned` wrote, with `torch.load(weights_only=True)`: the only
    globals allowed beyond weights_only's own are nn.Module classes from torch.nn, torchvision
    and ltp_core, and `classes`; a file that needs anything else is refused, naming it (load it
    yourself with weights_only=False only if you trust the file)."""
    import importlib

    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals
    extra = {f"{c.__module__}.{c.__qualname__}": c for c in classes}
    allowed, refused = list(extra.values()), []
    for qualname in get_unsafe_globals_in_checkpoint(path):
        if qualname in extra:
            continue
        module_name, _, attr = qualname.rpartition(".")
        obj = None
        if module_name.startswith(("torch.nn.", "torchvision.", "ltp_core.")):
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                obj = None
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            allowed.append(obj)
        else:
            refused.append(qualname)
    if refused:
        raise ValueError(f"{path}: the file needs {refused}, which load_pruned does not allow (nn.Module classes of "
                         "torch.nn, torchvision and ltp_core only); pass them as classes= if you trust the file")
    with safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)


@torch.no_grad()
def load_pruned_state_dict(model: nn.Module, state_dict: dict[str, Tensor], strict: bool = True) -> nn.Module:
    """Resize the Conv/Linear/BatchNorm/PReLU layers of a freshly built dense `model` to the
    shapes in a finalized network's `state_dict` (a depthwise conv keeps groups = channels; an
    option-A shortcut with `source`/`scale` entries becomes its `ChannelMap`), then load it.
    Returns the model."""
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        prefix = f"{name}." if name else ""
        if isinstance(module, _ShortcutA) and f"{prefix}source" in state_dict:
            source = state_dict[f"{prefix}source"]
            new = ChannelMap(module.stride, source, state_dict.get(f"{prefix}scale"))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            continue
        w = state_dict.get(f"{prefix}weight")
        if isinstance(module, CONV_TYPES) and w is not None and w.shape != module.weight.shape:
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.weight = nn.Parameter(torch.empty_like(w, device=module.weight.device))
            module.out_channels = w.shape[0]
            module.in_channels = w.shape[0] if depthwise else w.shape[1] * module.groups
            if depthwise:
                module.groups = w.shape[0]
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.new_empty(w.shape[0]))
        elif isinstance(module, nn.Linear) and w is not None and w.shape != module.weight.shape:
            module.weight = nn.Parameter(module.weight.new_empty(w.shape))
            module.out_features, module.in_features = w.shape
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.new_empty(w.shape[0]))
        elif isinstance(module, NORM_TYPES):
            ref = state_dict.get(f"{prefix}running_mean", state_dict.get(f"{prefix}weight"))
            if ref is not None and ref.shape[0] != module.num_features:
                n = ref.shape[0]
                for key in ("weight", "bias", "running_mean", "running_var"):
                    old = getattr(module, key, None)
                    if old is not None:
                        _set_param(module, key, old.new_empty(n))
                module.num_features = n
        elif isinstance(module, nn.PReLU) and w is not None and w.shape != module.weight.shape:
            module.weight = nn.Parameter(module.weight.new_empty(w.shape))
            module.num_parameters = w.shape[0]
    model.load_state_dict(state_dict, strict=strict)
    return model
