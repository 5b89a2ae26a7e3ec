"""GReg: neural pruning via growing regularization (Wang et al., ICLR 2021), filter groups.

A group is one output channel ("filter") of a Conv/Linear: its weight row and bias, and, with
include_norm, the gamma/beta of the BatchNorm after it. Groups are removed for real at the end.

GReg-1 (variant=1): the groups to remove are the smallest-L1 filters of each layer (`ratio`
of them), chosen at construction; they get the L2 penalty (lambda / 2) * ||group||^2 with
lambda += delta every `interval` steps up to `ceiling`; after `stabilize_steps` more steps at the
ceiling they are zeroed and held at zero (the rest of the run fine-tunes the others).

GReg-2 (variant=2): first every group of a layer gets the same growing penalty, up to
`pick_ceiling`; the weights then separate by their local curvature and the groups to remove are
picked by L1 magnitude at that point; the kept groups' penalty is dropped and the picked ones'
keeps growing to `ceiling`, as in GReg-1.

Simplification: one schedule for all layers (the paper also stops a layer early once its
magnitude ratio is large); `finalize()` removes the chosen groups whenever it is called.
Supported models: see `ltp_core.methods.channels.SUPPORTED` (no residual networks yet).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..checks import check_fraction, check_number, check_steps
from .channels import Link
from .structured import StructuredMethod

__all__ = ["GReg", "filter_l1", "num_removed"]


def num_removed(ratio: float, channels: int) -> int:
    """Channels removed at `ratio` of `channels`: round half up, at most channels - 1."""
    return min(channels - 1, math.floor(ratio * channels + 0.5))


def filter_l1(layer: nn.Module) -> Tensor:
    """Sum |W| of each output channel of a Conv/Linear (Li et al.'s filter importance), (C,)."""
    return layer.weight.detach().abs().flatten(1).sum(1)


def layer_ratios(ratio: float | dict[str, float], producers: Iterable[str]) -> dict[str, float]:
    """{producer: fraction of its channels removed} from one ratio or a {name: ratio} dict
    (missing names: 0)."""
    producers = list(producers)
    if isinstance(ratio, dict):
        unknown = sorted(set(ratio) - set(producers))
        if unknown:
            raise ValueError(f"ratio names {unknown} are not prunable layers; valid: {producers}")
        return {p: check_fraction(f"ratio[{p!r}]", ratio.get(p, 0.0)) for p in producers}
    ratio = check_fraction("ratio", ratio)
    return {p: ratio for p in producers}


class GReg(StructuredMethod):
    """Growing-regularization filter pruning.

    Args:
        model: a chain network (`channels.SUPPORTED`); its filters are removed at finalize().
        ratio: fraction of each layer's filters removed, in [0, 1), or {layer name: ratio}.
        variant: 1 (GReg-1) or 2 (GReg-2).
        delta: lambda increment per update (the paper: 1e-4). None: from total_steps, so that
            lambda reaches `ceiling` after `reg_fraction` of the run (1e-4 without total_steps).
        interval: optimizer steps between increments (the paper: 5-10).
        ceiling: the final lambda (the paper: 1.0); units of an L2 coefficient (grad += lambda w).
        pick_ceiling: GReg-2's uniform lambda at which the groups are picked (default ceiling / 10).
        stabilize_steps: steps held at the ceiling before the groups are zeroed.
        total_steps, reg_fraction: see delta.
        include_norm: also penalize the BatchNorm gamma/beta of a group.
        exclude: layers whose filters are kept; example_input: for flops().
    """

    # An explicit delta fixes the step at which lambda reaches the ceiling; the default one is
    # derived from total_steps, and `interval` then only sets the granularity.
    STEP_OPTIONS = ("total_steps", "delta", "stabilize_steps")

    def __init__(self, model: nn.Module, *, ratio: float | dict[str, float] = 0.5, variant: int = 1,
                 delta: float | None = None, interval: int = 10, ceiling: float = 1.0,
                 pick_ceiling: float | None = None, stabilize_steps: int = 0, total_steps: int | None = None,
                 reg_fraction: float = 0.5, include_norm: bool = True, exclude: Iterable[str] | str = (),
                 example_input: Tensor | None = None) -> None:
        if variant not in (1, 2):
            raise ValueError(f"unknown GReg variant {variant!r}; allowed: [1, 2]")
        self.interval = check_steps("interval", interval, positive=True, optional=False)
        self.ceiling = check_number("ceiling", ceiling, positive=True)
        self.pick_ceiling = self.ceiling / 10 if pick_ceiling is None else check_number(
            "pick_ceiling", pick_ceiling, positive=True)
        if self.pick_ceiling > self.ceiling:
            raise ValueError(f"pick_ceiling ({self.pick_ceiling}) must be <= ceiling ({self.ceiling})")
        self.stabilize_steps = check_steps("stabilize_steps", stabilize_steps, optional=False)
        total_steps = check_steps("total_steps", total_steps, positive=True)
        reg_fraction = check_fraction("reg_fraction", reg_fraction, allow_one=True, allow_zero=False)
        if delta is None:
            delta = 1e-4 if total_steps is None else self.ceiling * self.interval / max(1.0, reg_fraction * total_steps)
        self.delta = check_number("delta", delta, positive=True)
        super().__init__(model, exclude, example_input)
        self.variant = variant
        self.include_norm = bool(include_norm)
        self.ratios = layer_ratios(ratio, self.links)
        # lambda per producer and channel; the groups picked for removal (None: not yet picked)
        self.lambdas = {p: torch.zeros(self.module(p).weight.shape[0], device=self.module(p).weight.device)
                        for p in self.links}
        self.picked: dict[str, Tensor] | None = self._smallest() if variant == 1 else None
        self.phase = "grow" if variant == 1 else "pick"
        self.ceiling_step: int | None = None
        self.pruned_step: int | None = None

    # -- groups ----------------------------------------------------------------------------
    def _smallest(self) -> dict[str, Tensor]:
        """{producer: bool (C,), True for the smallest-L1 filters at the layer's ratio}."""
        out = {}
        for p in self.links:
            scores = filter_l1(self.module(p))
            chosen = torch.zeros_like(scores, dtype=torch.bool)
            chosen[torch.argsort(scores, stable=True)[:num_removed(self.ratios[p], scores.numel())]] = True
            out[p] = chosen
        return out

    def removed(self) -> dict[str, Tensor]:
        """{producer: bool (C,), True for the filters finalize() removes now}."""
        return self.picked if self.picked is not None else self._smallest()

    def keep_indices(self) -> dict[str, Tensor]:
        return {p: (~r).nonzero().flatten() for p, r in self.removed().items()}

    def _tensors(self, link: Link, norm: bool | None = None) -> list[Tensor]:
        """The group's tensors, channels along dim 0: weight, [bias], [BN gamma, beta] (the BN
        ones when `norm`, default `include_norm`)."""
        layer = self.module(link.producer)
        tensors = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        if (self.include_norm if norm is None else norm) and link.norm is not None:
            bn = self.module(link.norm)
            if bn.affine:
                tensors += [bn.weight, bn.bias]
        return tensors

    # -- the penalty and its schedule ------------------------------------------------------
    def regularizer(self) -> Tensor:
        """sum over layers and channels of (lambda_c / 2) * ||group_c||^2 (0-d)."""
        self._check_live()
        total = super().regularizer()
        if self.phase == "pruned":
            return total
        for p, link in self.links.items():
            lam = self.lambdas[p]
            if not bool((lam > 0).any()):
                continue
            for t in self._tensors(link):
                total = total + 0.5 * (lam.to(t.dtype) * t.pow(2).flatten(1).sum(1) if t.dim() > 1
                                       else lam.to(t.dtype) * t.pow(2)).sum()
        return total

    @property
    def current_lambda(self) -> float:
        """The largest lambda now in force."""
        return max(float(lam.max()) for lam in self.lambdas.values())

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Grow lambda every `interval` steps; pick (GReg-2); zero the groups at the ceiling
        plus `stabilize_steps`, and keep them at zero afterwards."""
        self._check_live()
        if self.phase == "pruned":
            self._zero_groups()
            return
        if self.phase in ("pick", "grow") and step % self.interval == 0:
            for p in self.links:
                if self.phase == "pick":  # every group of a layer that loses some
                    target = torch.full_like(self.lambdas[p], self.ratios[p] > 0, dtype=torch.bool)
                else:
                    target = self.picked[p]
                self.lambdas[p][target] = torch.clamp(self.lambdas[p][target] + self.delta,
                                                      max=self.pick_ceiling if self.phase == "pick" else self.ceiling)
            if self.phase == "pick" and self.current_lambda >= self.pick_ceiling:
                self.picked = self._smallest()
                for p in self.links:
                    self.lambdas[p][~self.picked[p]] = 0.0
                self.phase = "grow"
            elif self.phase == "grow" and self.current_lambda >= self.ceiling:
                self.phase, self.ceiling_step = "stabilize", step
        if self.phase == "stabilize" and step - self.ceiling_step >= self.stabilize_steps:
            self.phase, self.pruned_step = "pruned", step
            self._zero_groups()

    def state_dict(self) -> dict:
        """The schedule's state, for checkpoints (the weights are in the model's state_dict):
        lambda per channel, the groups picked, the phase and the steps it changed at."""
        return {"lambdas": {p: lam.detach().cpu().clone() for p, lam in self.lambdas.items()},
                "picked": None if self.picked is None else {p: t.cpu().clone() for p, t in self.picked.items()},
                "phase": self.phase, "ceiling_step": self.ceiling_step, "pruned_step": self.pruned_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned, so a resumed run continues the schedule
        (without it lambda would start again from 0 and pruned groups would train again)."""
        missing = {"lambdas", "picked", "phase", "ceiling_step", "pruned_step"} - set(state)
        if missing:
            raise ValueError(f"GReg state lacks {sorted(missing)}; expected the dict GReg.state_dict() returns")
        if set(state["lambdas"]) != set(self.links):
            raise ValueError(f"GReg state is for layers {sorted(state['lambdas'])}, this model prunes "
                             f"{sorted(self.links)}")
        if state["phase"] not in ("pick", "grow", "stabilize", "pruned"):
            raise ValueError(f"GReg state has an unknown phase {state['phase']!r}")
        for p, lam in state["lambdas"].items():
            if lam.shape != self.lambdas[p].shape:
                raise ValueError(f"GReg state: layer {p!r} has {lam.numel()} channels there, "
                                 f"{self.lambdas[p].numel()} here")
            self.lambdas[p].copy_(lam)
        device = self.lambdas[next(iter(self.lambdas))].device if self.lambdas else None
        self.picked = None if state["picked"] is None else {
            p: t.to(device=device, dtype=torch.bool) for p, t in state["picked"].items()}
        self.phase, self.ceiling_step, self.pruned_step = state["phase"], state["ceiling_step"], state["pruned_step"]

    def _zero_groups(self) -> None:
        for p, link in self.links.items():
            chosen = self.picked[p]
            for t in self._tensors(link, norm=True):  # with BN gamma, beta: the channel outputs 0
                t[chosen] = 0

    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        """Inside the block the groups finalize() removes are zeroed (weights, bias, BN
        gamma/beta), so the forward equals the finalized network's; restored afterwards."""
        self._check_live()
        saved = {}
        with torch.no_grad():
            for link in self.links.values():
                for t in self._tensors(link, norm=True):
                    saved[id(t)] = (t, t.detach().clone())
            picked, self.picked = self.picked, self.removed()
            self._zero_groups()
            self.picked = picked
        try:
            yield
        finally:
            with torch.no_grad():
                for t, value in saved.values():
                    t.copy_(value)

    def param_groups(self, weight_decay: float = 0.0, **options) -> list[dict]:
        """One group with every parameter (the penalty is a loss term, not weight decay)."""
        return super().param_groups(weight_decay, **options)
