"""GDP: channel gates with polarization (Guo et al., ICCV 2021), folded away at the end.

A gate g_c in [0, 1] multiplies input channel c of every regular Conv/Linear that reads the
output of a prunable layer ("a gate before each regular conv"). It is applied as a
parametrization of the consumer's weight, W[:, c] -> g_c W[:, c], which is the same function
as gating the input (a conv is linear in its input channels and zero padding stays zero).
The regularizer is the polarization regularizer (Zhuang et al. 2020) that GDP builds on:

    R = lambda * sum_l w_l * sum_c (t * g_c - |g_c - mean_l(g)|),    t > 0

which pushes gates below their layer's mean down and (for t < 1) those above it up; after each
optimizer step the gates are projected onto [0, 1], so the ones driven down sit at exactly 0.
w_l is the FLOPs a channel of layer l costs (normalized to mean 1 over the G gates) when an
`example_input` is given, else 1: GDP's FLOPs-aware weighting. So lambda is the force on one
gate (d R / d g_c = lambda w_l (t -+ 1)), whatever the size of the network. At `finalize()` the gates are
folded into the consumers (W'[:, c] = g_c W[:, c]) and the zero-gated channels are removed
from the producers, their BatchNorms and the consumers: the function is unchanged.

Simplification: GDP's smoothed-L0 gate x^2 / (x^2 + eps) with eps annealing and its
alternating FLOPs-constrained solver are replaced by clipped gates and the regularizer above.
`BudgetedGDP` puts a FLOPs budget back in the simplest way: polarize for part of the run, then
cut the lowest gates until the network meets the budget, and fine-tune the rest.
Supported models: see `ltp_core.methods.channels.SUPPORTED` (no residual networks yet; GDP's
gates shared across a skip connection would come with them).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..checks import check_fraction, check_number
from ..core.method import split_groups
from .budget import FlopsModel
from .channels import scale_input
from .structured import StructuredMethod

__all__ = ["ChannelGate", "GDP", "BudgetedGDP"]


class ChannelGate(nn.Module):
    """Parametrization W -> W with input channel c scaled by gate[c] (gate: (C,) Parameter,
    initialized to 1; `spatial` input features per channel after a Flatten)."""

    def __init__(self, channels: int, spatial: int, weight: Tensor) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(channels, dtype=weight.dtype, device=weight.device))
        self.spatial = int(spatial)

    def forward(self, weight: Tensor) -> Tensor:
        return scale_input(weight, self.gate, self.spatial)


class GDP(StructuredMethod):
    """Gates before every consumer of a prunable layer, polarized, folded at finalize().

    Args:
        model: a chain network (`channels.SUPPORTED`); gates are attached in place.
        lambda_: >= 0, weight of the polarization regularizer (per gate; see above).
        t: > 0, the regularizer's L1 share (Zhuang et al.'s t; t < 1 lets high gates rise to 1).
        zero_tol: gates <= zero_tol count as zero (removed); 0 keeps the fold exact.
        exclude: layers whose channels get no gate; example_input: FLOPs weighting and flops().
        total_steps: accepted for a uniform engine call; unused.
    """

    def __init__(self, model: nn.Module, *, lambda_: float = 1e-2, t: float = 1.0, zero_tol: float = 0.0,
                 exclude: Iterable[str] | str = (), example_input: Tensor | None = None,
                 total_steps: int | None = None) -> None:
        self.lambda_ = check_number("lambda_", lambda_)
        self.t = check_number("t", t, positive=True)
        self.zero_tol = check_number("zero_tol", zero_tol)
        super().__init__(model, exclude, example_input)
        for p, link in self.links.items():
            consumer = self.module(link.consumer)
            if parametrize.is_parametrized(consumer, "weight"):
                raise ValueError(f"layer {link.consumer!r} already has a weight parametrization")
            parametrize.register_parametrization(
                consumer, "weight", ChannelGate(self.module(p).weight.shape[0], link.spatial, consumer.weight))
        self.num_gates = sum(g.numel() for g in self.gates.values())
        self.gate_weights = self._flops_weights()

    def _flops_weights(self) -> dict[str, float]:
        """{producer: FLOPs of one of its channels (its row + the consumer's columns)}, mean 1."""
        if self.dense_flops is None:
            return {p: 1.0 for p in self.links}
        cost = {p: (self.dense_flops.get(p, 0) + self.dense_flops.get(link.consumer, 0)) / self.gates[p].numel()
                for p, link in self.links.items()}
        mean = sum(cost[p] * self.gates[p].numel() for p in cost) / self.num_gates
        return {p: c / mean if mean > 0 else 1.0 for p, c in cost.items()}

    @property
    def gates(self) -> dict[str, nn.Parameter]:
        """{producer layer: its channels' gates (C,), in [0, 1]}."""
        self._check_live()
        return {p: self.module(link.consumer).parametrizations.weight[0].gate for p, link in self.links.items()}

    def regularizer(self) -> Tensor:
        """lambda * sum_l w_l sum_c (t g_c - |g_c - mean_l g|), a 0-d tensor."""
        total = super().regularizer()
        if self.lambda_ == 0:
            return total
        for p, g in self.gates.items():
            total = total + self.gate_weights[p] * (self.t * g.sum() - (g - g.mean()).abs().sum())
        return self.lambda_ * total

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Project the gates onto [0, 1] (the low ones land on exactly 0)."""
        for g in self.gates.values():
            g.clamp_(0.0, 1.0)

    def param_groups(self, weight_decay: float = 0.0, gate_lr: float | None = None, **options) -> list[dict]:
        """[every other parameter with `weight_decay`], [the gates: no weight decay, lr `gate_lr`]."""
        own = {"weight_decay": 0.0} | ({"lr": check_number("gate_lr", gate_lr)} if gate_lr is not None else {})
        return split_groups(self.model, list(self.gates.values()), weight_decay, own, **options)

    def keep_indices(self) -> dict[str, Tensor]:
        """The channels whose gate is > zero_tol (the largest one if none is)."""
        out = {}
        for p, g in self.gates.items():
            idx = (g.detach() > self.zero_tol).nonzero().flatten()
            out[p] = idx if idx.numel() else g.detach().argmax().reshape(1)
        return out

    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        """Inside the block gates <= zero_tol are exactly 0 (a no-op for zero_tol = 0)."""
        gates = self.gates
        saved = {p: g.detach().clone() for p, g in gates.items()}
        with torch.no_grad():
            for g in gates.values():
                g[g <= self.zero_tol] = 0.0
        try:
            yield
        finally:
            with torch.no_grad():
                for p, g in gates.items():
                    g.copy_(saved[p])


class BudgetedGDP(GDP):
    """GDP under a FLOPs budget: polarization first, then a cut to the budget, then fine-tuning.

    Plain GDP removes the gates that polarization drives to exactly 0; how many die depends on
    lambda_, and in jumps (a layer's gates move together as the mean they polarize against
    moves), so no lambda_ lands reliably within one channel of a budget. Here polarization runs
    for the first `cut_fraction` of the run; at that step the gates are cut in ascending order
    (the ones polarization drove down go first), each cut priced with a `FlopsModel`, until the
    network's FLOPs are at most `budget` of the dense FLOPs; a cut that would undershoot the
    budget by more than `tolerance` is skipped in favour of cheaper channels. The cut gates are
    held at exactly 0, polarization is switched off (lambda_ = 0) and the rest of the run
    fine-tunes. `finalize()` folds and removes as GDP does.

    Args:
        budget: FLOPs of the pruned network / dense FLOPs, in (0, 1].
        tolerance: >= 0, how far below the budget a cut may land.
        cut_fraction: in (0, 1], the fraction of `total_steps` after which the cut happens.
        total_steps, example_input: required (the cut's step; the FLOPs model).
        other options: as `GDP`.
    """

    STEP_OPTIONS = ("total_steps",)

    def __init__(self, model: nn.Module, *, budget: float, tolerance: float = 0.0, cut_fraction: float = 0.5,
                 total_steps: int | None = None, example_input: Tensor | None = None, **options) -> None:
        self.budget = check_fraction("budget", budget, allow_one=True, allow_zero=False)
        self.tolerance = check_number("tolerance", tolerance)
        cut_fraction = check_fraction("cut_fraction", cut_fraction, allow_one=True, allow_zero=False)
        if total_steps is None or example_input is None:
            raise ValueError("BudgetedGDP needs total_steps (when to cut) and example_input (the FLOPs model)")
        self.flops_model = FlopsModel(model, example_input)  # before the gates change the layers' types
        super().__init__(model, example_input=example_input, total_steps=total_steps, **options)
        self.cut_step = max(1, round(cut_fraction * total_steps))
        self.cut: dict[str, Tensor] | None = None  # {producer: bool (C,), True = removed}
        self.gates_at_cut: dict[str, Tensor] | None = None

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Project the gates onto [0, 1]; cut at `cut_step`; from then on hold the cut gates at 0."""
        super().after_step(step)
        if self.cut is None and step >= self.cut_step:
            self.cut_to_budget()
        if self.cut is not None:
            for p, g in self.gates.items():
                g[self.cut[p]] = 0.0

    @torch.no_grad()
    def cut_to_budget(self) -> dict[str, Tensor]:
        """Choose the removed channels: the lowest gates first, until the FLOPs meet the budget
        (a layer keeps at least one channel). Sets `cut`, `gates_at_cut`, lambda_ = 0."""
        gates = {p: g.detach().cpu().clone() for p, g in self.gates.items()}
        kept = {p: g.numel() for p, g in gates.items()}
        removed = {p: torch.zeros(g.numel(), dtype=torch.bool) for p, g in gates.items()}
        fraction = self.flops_model.fraction
        for _, p, i in sorted((float(v), p, i) for p, g in gates.items() for i, v in enumerate(g.tolist())):
            if fraction(kept) <= self.budget:
                break
            if kept[p] == 1:
                continue
            kept[p] -= 1
            if fraction(kept) < self.budget - self.tolerance:
                kept[p] += 1  # too costly a channel to cut now: try cheaper ones
                continue
            removed[p][i] = True
        self.cut = {p: r.to(self.gates[p].device) for p, r in removed.items()}
        self.gates_at_cut = gates
        self.lambda_ = 0.0
        return self.cut

    def keep_indices(self) -> dict[str, Tensor]:
        """Before the cut as GDP; after it, every channel that was not cut."""
        if self.cut is None:
            return super().keep_indices()
        return {p: (~r).nonzero().flatten() for p, r in self.cut.items()}

    def state_dict(self) -> dict:
        """The cut (None before it) and lambda_, for checkpoints."""
        return {"lambda_": float(self.lambda_),
                "cut": None if self.cut is None else {p: r.cpu().tolist() for p, r in self.cut.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_ = float(state["lambda_"])
        cut = state.get("cut")
        self.cut = None if cut is None else {p: torch.tensor(r, dtype=torch.bool, device=self.gates[p].device)
                                             for p, r in cut.items()}
