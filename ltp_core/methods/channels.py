"""The channel links of a chain network, read layer by layer, and the chain-only surgery.

Structured methods remove output channels ("filters") of a Conv/Linear layer, the producer,
together with its BatchNorm channels and the matching input channels of the next Conv/Linear,
the consumer. `channel_links` finds these (producer, norm, consumer) links in an
`nn.Sequential` such as `ltp_core.models.small_cnn` (Conv-BN-ReLU ... Pool, Flatten, Linear)
or `ltp_core.models.mlp` (Linear-[BN]-ReLU ... Linear) without running it; `remove_channels`
swaps in smaller modules under the same names, so the state_dict loads into the same family
built with the kept widths. `ltp_core.methods.surgery.channel_plan` reads a chain this way when
no example input is given; any other network (residual adds, depthwise convs, concatenations:
ResNets, MobileNets, EfficientNets) goes through Torch-Pruning's dependency graph there, traced
on an example input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["Link", "SUPPORTED", "channel_links", "remove_channels"]

SUPPORTED = ("without an example_input, an nn.Sequential chain of Conv1d/2d/3d (groups=1) and Linear layers "
             "joined by BatchNorm, element-wise activations, dropout, pooling and Flatten (e.g. "
             "ltp_core.models.small_cnn and ltp_core.models.mlp); pass an example_input (a batch, e.g. one "
             "sample) to trace any other network's channel groups")

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Modules that act on every channel alike (element-wise or per-channel spatial): they let
# channels through unchanged.
PASS_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardtanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


@dataclass(frozen=True)
class Link:
    """Output channel c of `producer` (and of `norm`, its BatchNorm, if any) feeds the input
    features [c * spatial, (c + 1) * spatial) of `consumer`: spatial = 1 for a conv consumer or
    Linear after Linear, H*W of the feature map when a Flatten sits between conv and Linear."""
    producer: str
    norm: str | None
    consumer: str
    spatial: int


def _unsupported(model: nn.Module, method: str, why: str) -> ValueError:
    return ValueError(f"{method} cannot prune {type(model).__name__}: {why}. It supports {SUPPORTED}.")


def channel_links(model: nn.Module, method: str = "structured pruning") -> list[Link]:
    """The (producer, norm, consumer) links of a chain network, in order. The last Conv/Linear
    (the classifier) is never a producer. Raises ValueError, naming the model and the module,
    for anything else (a non-Sequential model, a grouped conv, an unknown module type)."""
    if type(model) is not nn.Sequential:
        raise _unsupported(model, method, "it is not a plain nn.Sequential")
    links: list[Link] = []
    producer: tuple[str, nn.Module] | None = None
    norm: str | None = None
    flattened = False
    for name, child in model.named_children():
        if type(child) in LAYER_TYPES:
            if isinstance(child, nn.Linear):
                fan_in = child.in_features
            else:
                if child.groups != 1:
                    raise _unsupported(model, method, f"module {name!r} is a grouped/depthwise conv")
                if flattened:
                    raise _unsupported(model, method, f"conv {name!r} follows a Flatten")
                fan_in = child.in_channels
            if producer is not None:
                pname, pmod = producer
                channels = pmod.weight.shape[0]
                if not isinstance(pmod, nn.Linear) and isinstance(child, nn.Linear) and not flattened:
                    raise _unsupported(model, method, f"Linear {name!r} follows conv {pname!r} with no Flatten")
                if fan_in % channels:
                    raise _unsupported(model, method, f"{name!r} takes {fan_in} inputs, not a multiple of "
                                                      f"the {channels} channels of {pname!r}")
                links.append(Link(pname, norm, name, fan_in // channels))
            producer, norm, flattened = (name, child), None, False
        elif type(child) in NORM_TYPES:
            if producer is None or norm is not None or child.num_features != producer[1].weight.shape[0]:
                raise _unsupported(model, method, f"BatchNorm {name!r} does not match one preceding layer")
            norm = name
        elif type(child) is nn.Flatten:
            if child.start_dim != 1 or child.end_dim != -1:
                raise _unsupported(model, method, f"Flatten {name!r} must flatten dims 1..-1")
            flattened = True
        elif type(child) not in PASS_TYPES:
            raise _unsupported(model, method, f"module {name!r} ({type(child).__name__}) is not a "
                                              "Conv/Linear, BatchNorm, activation, pooling or Flatten")
    return links


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _resized_layer(layer: nn.Module, out_idx: Tensor | None, in_idx: Tensor | None) -> nn.Module:
    """A new plain Conv/Linear holding rows `out_idx` and columns `in_idx` of `layer`'s weight
    (None = all); a parametrized layer contributes its parametrized (effective) weight."""
    weight = layer.weight.detach()
    if out_idx is not None:
        weight = weight.index_select(0, out_idx)
    if in_idx is not None:
        weight = weight.index_select(1, in_idx)
    factory = {"device": weight.device, "dtype": weight.dtype}
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias, **factory)
    else:
        cls = next(c for c in type(layer).__mro__ if c in LAYER_TYPES)  # the plain class
        new = cls(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, groups=1, bias=bias,
                          padding_mode=layer.padding_mode, **factory)
    new.weight.copy_(weight)
    new.weight.requires_grad_(True)
    if bias:
        b = layer.bias.detach()
        new.bias.copy_(b if out_idx is None else b.index_select(0, out_idx))
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new.train(layer.training)


def _resized_norm(norm: nn.Module, idx: Tensor) -> nn.Module:
    ref = norm.weight if norm.affine else norm.running_mean
    group = {"process_group": norm.process_group} if isinstance(norm, nn.SyncBatchNorm) else {}
    new = type(norm)(idx.numel(), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats, device=ref.device, dtype=ref.dtype, **group)
    for key in ("weight", "bias", "running_mean", "running_var"):
        old = getattr(norm, key)
        if old is not None:
            getattr(new, key).copy_(old.detach().index_select(0, idx))
    if norm.track_running_stats:
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
    if norm.affine:
        new.weight.requires_grad_(norm.weight.requires_grad)
        new.bias.requires_grad_(norm.bias.requires_grad)
    return new.train(norm.training)


@torch.no_grad()
def remove_channels(model: nn.Module, keep: dict[str, Tensor], links: list[Link]) -> nn.Module:
    """Keep only output channels `keep[producer]` (indices) of each named producer: its rows
    (and bias), its BatchNorm's entries and the consumer's matching input columns; the
    modules are replaced in place by smaller ones. Returns `model`."""
    by_producer = {link.producer: link for link in links}
    unknown = sorted(set(keep) - set(by_producer))
    if unknown:
        raise ValueError(f"{unknown} are not layers whose channels can be removed; valid: {sorted(by_producer)}")
    for name in {n for link in links for n in (link.producer, link.consumer)}:
        if parametrize.is_parametrized(model.get_submodule(name)):
            raise ValueError(f"layer {name!r} still has a parametrization: remove it before channel surgery")
    for producer, idx in keep.items():
        link = by_producer[producer]
        module = model.get_submodule(producer)
        idx = torch.as_tensor(idx, dtype=torch.long, device=module.weight.device).unique(sorted=True)
        channels = module.weight.shape[0]
        if idx.numel() == 0 or int(idx[0]) < 0 or int(idx[-1]) >= channels:
            raise ValueError(f"channels to keep for {producer!r} must be 1..{channels} indices in "
                             f"[0, {channels}), got {idx.tolist()}")
        if idx.numel() == channels:
            continue
        _replace(model, producer, _resized_layer(module, idx, None))
        if link.norm is not None:
            _replace(model, link.norm, _resized_norm(model.get_submodule(link.norm), idx))
        cols = idx if link.spatial == 1 else (
            idx[:, None] * link.spatial + torch.arange(link.spatial, device=idx.device)).reshape(-1)
        _replace(model, link.consumer, _resized_layer(model.get_submodule(link.consumer), None, cols))
    return model
