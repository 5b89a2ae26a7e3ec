"""The one shape of every pruning method, LTP and the baselines alike.

    method = SomeMethod(model, ...)           # attaches to the model in place
    loss = task_loss + method.regularizer()   # a 0-d tensor (0 for methods without a term)
    method.after_step(step)                   # after every optimizer step; step = steps done
    method.sparsity()                         # {layer: fraction pruned, "total": fraction}
    with method.hard_masks(): ...             # the forward uses the deployed network
    method.hard_state_dict()                  # the state_dict finalize() would give, model untouched
    method.finalize()                         # the deployed plain model (the same object)
    method.flops(x)                           # FLOPs of one forward of x through the deployed network

plus `param_groups(weight_decay, **options)` (a method's own parameters in a group of their
own) and `state_dict()` / `load_state_dict()` for what a checkpoint must carry beyond the
model's own state_dict. The hooks a method does not need are no-ops here, as in
torch.ao.pruning's sparsifiers; a new method overrides what differs.

`ReparamMethod` is the base of the methods that change each pruned weight w into f(w) through a
`torch.nn.utils.parametrize` parametrization (LTP's soft mask, a magnitude mask, a soft
threshold): `state_dict`, `deepcopy`, DDP and `torch.compile` then see an ordinary module.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .flops import count_flops
from .layers import model_device, own_class, select_layers, zero_fractions

__all__ = ["PruningMethod", "ReparamMethod", "split_groups"]


def split_groups(model: nn.Module, own: Sequence[Tensor], weight_decay: float, own_options: dict,
                 **options) -> list[dict]:
    """[every model parameter not in `own` (with `weight_decay`, `options`), then `own` in a
    group of its own (`options` overridden by `own_options`)]: the second only if `own`."""
    ids = {id(p) for p in own}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids],
               "weight_decay": weight_decay, **options}]
    if own:
        groups.append({"params": list(own), **options, **own_options})
    return groups


class PruningMethod:
    """The shared shape (see the module docstring), with defaults for the optional hooks."""

    model: nn.Module
    finalized: bool = False
    # Options whose values are counted in optimizer steps and place a schedule in the run (where
    # it starts or ends, how long it lasts): a resumed run cannot move them to another number of
    # steps per epoch.
    STEP_OPTIONS: tuple[str, ...] = ()

    def _check_live(self) -> None:
        if self.finalized:
            raise RuntimeError(f"this {type(self).__name__} was finalized: the model is a plain pruned "
                               "network now; only sparsity() still answers")

    def regularizer(self) -> Tensor:
        """The method's loss term; this default has none: a 0-d zero on the model's device."""
        return torch.zeros((), device=model_device(self.model))

    def after_step(self, step: int | None = None) -> None:
        """Per-step hook, called after optimizer step number `step` (1-based); default: nothing."""

    def param_groups(self, weight_decay: float = 0.0, **options) -> list[dict]:
        """Optimizer groups; this default: every model parameter in one group."""
        self._check_live()
        return split_groups(self.model, [], weight_decay, {}, **options)

    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        """Forward with the deployed network inside the block; this default is a no-op (the
        network trained is the one deployed)."""
        self._check_live()
        yield

    def sparsity(self) -> dict[str, float]:
        raise NotImplementedError

    def hard_state_dict(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def finalize(self) -> nn.Module:
        raise NotImplementedError

    def flops(self, example_input: Tensor | None = None) -> int:
        raise NotImplementedError

    def compression(self) -> float:
        """Weights of the pruned layers before / after pruning, 1 / (1 - sparsity); inf if all go."""
        kept = 1.0 - self.sparsity()["total"]
        return float("inf") if kept <= 0 else 1.0 / kept

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep of the method beyond the model's state_dict; default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""


class ReparamMethod(PruningMethod):
    """Base of the unstructured methods: layer l's weight becomes f_l(w_l) through a
    parametrization. A parametrization whose deployed form differs from its training form (LTP's
    soft mask) has a `hard` flag, which `hard_masks()` sets. `sparsity()` counts the exact zeros
    of the deployed weights, and `finalize()` bakes them into plain `weight` Parameters."""

    def __init__(self, model: nn.Module, exclude: Iterable[str] | str | None = (), exclude_first: bool = False,
                 exclude_last: bool = False) -> None:
        self.model = model
        self.layers: dict[str, nn.Module] = dict(select_layers(model, exclude, exclude_first, exclude_last))
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
        """{layer name: its trainable weight w}."""
        self._check_live()
        return {n: self._original(n) for n in self.layers}

    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        self._check_live()
        params = [p for p in map(self._param, self.layers) if hasattr(p, "hard")]
        before = [p.hard for p in params]
        for p in params:
            p.hard = True
        try:
            yield
        finally:
            for p, was in zip(params, before):
                p.hard = was

    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        """{layer name: fraction of its deployed weight that is zero, "total": over the layers}."""
        if self.finalized:
            return zero_fractions(self.layers)
        with self.hard_masks():
            return zero_fractions(self.layers)

    def flops(self, example_input: Tensor | None = None) -> int:
        """Effective FLOPs of one forward of `example_input` (e.g. one sample): the dense count
        by `torch.utils.flop_counter`, each pruned layer's share scaled by its density."""
        if example_input is None:
            raise ValueError("flops() needs an example_input (a batch, e.g. one sample)")
        sparsity = self.sparsity()
        return count_flops(self.model, example_input, {n: 1.0 - sparsity[n] for n in self.layers})

    @torch.no_grad()
    def hard_state_dict(self) -> dict[str, Tensor]:
        """The state_dict `finalize()` would give (plain `<layer>.weight` keys, the deployed
        weights), without changing the model; copies, in the model's own key order."""
        self._check_live()
        with self.hard_masks():
            deployed = {(f"{n}." if n else "") + "parametrizations.weight.": (f"{n}." if n else "", m.weight)
                        for n, m in self.layers.items()}
        plain = {}
        for key, value in self.model.state_dict().items():
            at = key.rfind("parametrizations.weight.")
            prefix = key[:at + len("parametrizations.weight.")] if at >= 0 else None
            if prefix in deployed:
                if not key.endswith(".original"):
                    continue  # the method's own state: masks, thresholds
                key, value = deployed[prefix][0] + "weight", deployed[prefix][1]
            plain[key] = value.clone()
        return plain

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Bake the deployed weights into plain `weight` Parameters and drop the
        parametrizations: the state_dict then loads strictly into the plain architecture.
        Returns the model; the method only answers `sparsity()` afterwards."""
        self._check_live()
        with self.hard_masks():
            for module in self.layers.values():
                own_class(module)  # deep copies of the model keep working
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self.finalized = True
        return self.model

    def __repr__(self) -> str:
        state = "finalized" if self.finalized else f"sparsity {self.sparsity()['total']:.3f}"
        return f"{type(self).__name__}({len(self.layers)} layers, {self.num_prunable} weights, {state})"
