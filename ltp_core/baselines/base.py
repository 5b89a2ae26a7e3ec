"""What every baseline shares: the method shape, its defaults, and two base classes.

Every method (LTP is the model) attaches to a model in place and then answers:

    regularizer()     a 0-d tensor added to the task loss (zeros(()) when the method has none)
    after_step(step)  called after each optimizer step; `step` = optimizer steps done (1, 2, ...)
                      (ltp-train: counted at the run's current steps per epoch, see STEP_OPTIONS)
    sparsity()        {layer: fraction of its weights pruned, "total": over the pruned layers},
                      the sparsity `finalize()` would give if called now
    param_groups()    optimizer groups (a method's own parameters in a group of their own)
    hard_masks()      a context manager: the forward uses the deployed network inside it
    hard_state_dict() the state_dict `finalize()` would give, without changing the model
    finalize()        the deployed plain model (the same object, changed in place)
    flops(x)          FLOPs of one forward of x through the deployed network

`ReparamMethod` is the base of the unstructured methods (one `torch.nn.utils.parametrize`
parametrization per pruned weight); `StructuredMethod` the base of the channel-removing ones.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..flops import count_flops, layer_flops
from ..pruner import prunable_layers, zero_fractions
from .channels import Link, bake, channel_links, kept_weight_fraction, remove_channels
from .checks import model_device, select_layers, split_groups

__all__ = ["own_class", "BaseMethod", "ReparamMethod", "StructuredMethod"]


def own_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its class. `parametrize` gives a module a
    generated class that a deep copy shares, and `remove_parametrizations` deletes the
    parametrized property from that class, which would break every copy; after this call it
    only touches this module's own class."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__,
                            {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")})


class BaseMethod:
    """The shared shape: defaults for the hooks a method does not need."""

    model: nn.Module
    finalized: bool = False
    # Options whose values are counted in optimizer steps and place the schedule in the run
    # (where it starts or ends, how long it lasts). ltp-train resumes a run on another number
    # of steps per epoch (batch size x processes) by rebuilding the schedule from --epochs at
    # the new scale; a value given in steps cannot follow, so such a resume is refused.
    STEP_OPTIONS: tuple[str, ...] = ()

    def _check_live(self) -> None:
        if self.finalized:
            raise RuntimeError(f"this {type(self).__name__} was finalized: the model is a plain pruned "
                               "network now; only sparsity() still answers")

    def regularizer(self) -> Tensor:
        """The method's loss term; this default has none: a 0-d zero on the model's device."""
        return torch.zeros((), device=model_device(self.model))

    def after_step(self, step: int) -> None:
        """Per-step hook, called after optimizer step number `step` (1-based); default: nothing."""

    def param_groups(self, weight_decay: float = 0.0, **options) -> list[dict]:
        """Optimizer groups; this default: every model parameter in one group."""
        self._check_live()
        return split_groups(self.model, [], weight_decay, {}, **options)

    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        """Forward with the deployed network inside the block. This default is a no-op: the
        network trained is the one deployed."""
        self._check_live()
        yield

    def hard_state_dict(self) -> dict[str, Tensor]:  # pragma: no cover - both families override it
        """The state_dict `finalize()` would give, without changing the model."""
        raise NotImplementedError

    def sparsity(self) -> dict[str, float]:  # pragma: no cover - every method overrides it
        raise NotImplementedError

    def finalize(self) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def compression(self) -> float:
        """Weights of the pruned layers before / after pruning, 1 / (1 - sparsity); inf if all go."""
        kept = 1.0 - self.sparsity()["total"]
        return float("inf") if kept <= 0 else 1.0 / kept


class ReparamMethod(BaseMethod):
    """Base of the unstructured methods: layer l's weight becomes f_l(w_l) through a
    `parametrize` parametrization (a mask, a soft threshold). `finalize()` bakes f_l(w_l) into
    a plain `weight`; `sparsity()` counts the exact zeros of f_l(w_l)."""

    def __init__(self, model: nn.Module, exclude: Iterable[str] | str = (), exclude_first: bool = False,
                 exclude_last: bool = False) -> None:
        layers = select_layers(model, exclude, exclude_first, exclude_last)
        for name, module in layers:
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"layer {name!r} already has a weight parametrization; "
                                 f"{type(self).__name__} attaches to plain Conv/Linear layers only")
        self.model = model
        self.layers: dict[str, nn.Module] = dict(layers)
        self.num_prunable = sum(m.weight.numel() for m in self.layers.values())
        self.finalized = False

    def _attach(self, make: Callable[[str, nn.Module], nn.Module]) -> None:
        for name, module in self.layers.items():
            parametrize.register_parametrization(module, "weight", make(name, module))

    def _param(self, name: str) -> nn.Module:
        """Layer `name`'s parametrization module."""
        return self.layers[name].parametrizations.weight[0]

    def _original(self, name: str) -> Tensor:
        """Layer `name`'s trainable weight (before the parametrization)."""
        return self.layers[name].parametrizations.weight.original

    def weights(self) -> dict[str, Tensor]:
        """{layer name: its trainable weight}."""
        self._check_live()
        return {n: self._original(n) for n in self.layers}

    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        return zero_fractions(self.layers)

    def flops(self, example_input: Tensor | None = None) -> int:
        """Effective FLOPs of one forward of `example_input`: the dense count with each pruned
        layer scaled by its density (`ltp_core.flops.count_flops`)."""
        if example_input is None:
            raise ValueError("flops() needs an example_input (a batch, e.g. one sample)")
        sparsity = self.sparsity()
        return count_flops(self.model, example_input, {n: 1.0 - sparsity[n] for n in self.layers})

    @torch.no_grad()
    def hard_state_dict(self) -> dict[str, Tensor]:
        """Plain keys (`<layer>.weight`), the deployed weights f_l(w_l); copies, model untouched."""
        self._check_live()
        suffix = "parametrizations.weight.original"
        plain = {}
        for key, value in self.model.state_dict().items():
            if ".parametrizations.weight.0." in f".{key}":
                continue  # the method's own state (masks, thresholds)
            if key.endswith(suffix):
                prefix = key[: -len(suffix)]
                key, value = prefix + "weight", self.layers[prefix.rstrip(".")].weight
            plain[key] = value.clone()
        return plain

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Bake the deployed weights into plain `weight` Parameters and drop the
        parametrizations: the state_dict then loads strictly into the plain architecture."""
        self._check_live()
        for module in self.layers.values():
            own_class(module)  # deep copies of the model keep working
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self.finalized = True
        return self.model

    def __repr__(self) -> str:
        state = "finalized" if self.finalized else f"sparsity {self.sparsity()['total']:.3f}"
        return f"{type(self).__name__}({len(self.layers)} layers, {self.num_prunable} weights, {state})"


class StructuredMethod(BaseMethod):
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
