"""DSA-style (projection): per-group keep ratios learned under a FLOPs budget (after Ning et al., ECCV 2020).

This is not DSA's ADMM budget solver: the ratios are projected onto the budget after every
step instead (see the end of this docstring).

Each prunable channel group g (`ltp_core.methods.surgery`: a layer's channels with everything
coupled to them, e.g. the layers a residual add joins) has a learned keep ratio alpha_g in
[min_ratio, 1]. Its channels are ranked by importance (|BN gamma| summed over the group's
BatchNorms when it has any, else the L1 norm of its filters; rank 0 = most important) and every
layer that reads the group's channels sees channel c scaled by a straight-through mask:

    forward:  m_c = 1 if rank_c < k_g else 0      (k_g = the integer keep count of alpha_g)
    backward: dm_c/dalpha_g from sigmoid((alpha_g * C_g - rank_c - 1/2) / T)

so the network trained is the one deployed and the task loss tells each alpha whether more
channels would help. The FLOPs of the pruned network are a polynomial in the ratios
(`budget.FlopsModel`: each Conv/Linear costs its dense FLOPs x its output and input keep
fractions); after every optimizer step alpha is projected onto {F(alpha) <= budget * F_dense}
along -grad F (a bisection on the step), so costly groups give up more. The integer counts k_g
are floor(alpha_g C_g) topped up greedily while the budget allows: the finalized network's
measured FLOPs are <= budget * F_dense and within about one channel's FLOPs of it.

Simplification (documented): DSA's ADMM solver of the budget-constrained problem and its
gradient-based importance estimate are replaced by this projected gradient and a fixed
importance criterion; hence the name "DSA-style (projection)".
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..checks import check_fraction, check_number, check_steps
from ..core.method import split_groups
from .budget import FlopsModel
from .structured import StructuredMethod

__all__ = ["RankGate", "DSA"]


class RankGate(nn.Module):
    """A group's gate: channel c passes (1) if rank[c] < keep, with the straight-through
    gradient above to `alpha` (0-d Parameter, the group's keep ratio). Buffers `rank` (C,) and
    `keep` (0-d, the integer count) are set by the method after each step."""

    def __init__(self, channels: int, temperature: float, device=None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones((), device=device))
        self.register_buffer("rank", torch.arange(channels, dtype=torch.float32, device=device))
        self.register_buffer("keep", torch.tensor(channels, device=device))
        self.temperature = float(temperature)

    def forward(self) -> Tensor:
        channels = self.rank.numel()
        soft = torch.sigmoid((self.alpha * channels - self.rank - 0.5) / self.temperature)
        hard = (self.rank < self.keep).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly `hard` in the forward


class DSA(StructuredMethod):
    """DSA-style (projection): budgeted channel pruning with learned per-group keep ratios.

    Args:
        model: the network (`surgery.SUPPORTED`); gates are attached in place.
        example_input: required; a batch (e.g. one sample) on which the channel dependencies are
            traced and FLOPs measured.
        budget: FLOPs of the pruned network / FLOPs of the dense one, in (0, 1].
        min_ratio: smallest keep ratio of a group, in (0, 1] (and at least one channel).
        temperature: T > 0, the soft mask's width in channels (gradient only).
        rank_interval: optimizer steps between re-rankings of the channels.
        exclude: groups whose channels are all kept; check: see `StructuredMethod`.
        total_steps: accepted, unused.
    """

    def __init__(self, model: nn.Module, *, example_input: Tensor | None = None, budget: float = 0.5,
                 min_ratio: float = 0.05, temperature: float = 1.0, rank_interval: int = 1,
                 exclude: Iterable[str] | str = (), check: bool = True, total_steps: int | None = None) -> None:
        self.budget = check_fraction("budget", budget, allow_one=True, allow_zero=False)
        min_ratio = check_fraction("min_ratio", min_ratio, allow_one=True, allow_zero=False)
        temperature = check_number("temperature", temperature, positive=True)
        self.rank_interval = check_steps("rank_interval", rank_interval, positive=True, optional=False)
        if example_input is None:
            raise ValueError("DSA needs an example_input (e.g. one training sample with its batch dim) "
                             "to measure the FLOPs its budget is in")
        super().__init__(model, exclude, example_input, check)
        self.producers = list(self.groups)
        self.channels = {g: grp.channels for g, grp in self.groups.items()}
        self.low = torch.tensor([max(min_ratio, 1.0 / self.channels[g]) for g in self.producers], dtype=torch.float64)
        self.flops_model = FlopsModel(model, example_input, self.plan, self.producers)
        if self.relative_flops(self.low) > self.budget + 1e-12:
            raise ValueError(f"budget {self.budget} is below the smallest reachable FLOPs fraction "
                             f"{self.relative_flops(self.low):.4f} (every group at min_ratio {min_ratio})")
        device = next((p.device for p in model.parameters()), None)
        self._masks = {g: RankGate(self.channels[g], temperature, device) for g in self.producers}
        self.attach_gates(self._masks)
        self.after_step(0)

    # -- the FLOPs model -------------------------------------------------------------------
    def relative_flops(self, ratios: Tensor) -> float:
        """F(ratios) / F_dense for per-group keep ratios (a float64 tensor)."""
        return self.flops_model.relative_floats(ratios.tolist())

    def _flops_grad(self, ratios: Tensor) -> Tensor:
        with torch.enable_grad():
            r = ratios.detach().clone().requires_grad_(True)
            self.flops_model.relative(r).backward()
        return r.grad

    def _project(self, ratios: Tensor) -> Tensor:
        """Clamp to [low, 1], then, if over budget, move along -grad F to the budget."""
        ratios = torch.maximum(torch.minimum(ratios, torch.ones_like(ratios)), self.low)
        if self.relative_flops(ratios) <= self.budget:
            return ratios
        grad = self._flops_grad(ratios).clamp_min(1e-12)
        at = lambda mu: torch.maximum(ratios - mu * grad, self.low)  # noqa: E731
        lo, hi = 0.0, float(((ratios - self.low) / grad).max()) + 1e-9
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.relative_flops(at(mid)) <= self.budget else (mid, hi)
        return at(hi)

    def _counts(self, ratios: Tensor) -> list[int]:
        """Integer keep counts: floor(ratio * C), topped up while the budget allows."""
        caps = [self.channels[p] for p in self.producers]
        counts = [max(1, min(c, math.floor(float(r) * c + 1e-6))) for r, c in zip(ratios, caps)]
        fraction = lambda ks: torch.tensor([k / c for k, c in zip(ks, caps)], dtype=torch.float64)  # noqa: E731
        while True:
            order = sorted(range(len(caps)), key=lambda i: -(float(ratios[i]) * caps[i] - counts[i]))
            for i in order:
                if counts[i] < caps[i]:
                    trial = counts.copy()
                    trial[i] += 1
                    if self.relative_flops(fraction(trial)) <= self.budget + 1e-12:
                        counts = trial
                        break
            else:
                return counts

    # -- the hooks -------------------------------------------------------------------------
    @property
    def ratios(self) -> dict[str, nn.Parameter]:
        """{group: alpha_g}, the learned keep ratios (0-d Parameters)."""
        self._check_live()
        return {p: m.alpha for p, m in self._masks.items()}

    @torch.no_grad()
    def importance(self, group: str) -> Tensor:
        """(C,) |BN gamma| summed over the group's BatchNorms if it has affine ones, else the
        L1 norm of its filters summed over its producers."""
        grp = self.groups[group]
        score = torch.zeros(grp.channels, dtype=torch.float64)
        found = False
        for m in grp.members:
            bn = self.module(m.module)
            if m.role == "norm" and bn.affine:
                score.index_add_(0, m.roots, bn.weight.detach().abs().double().cpu()[m.positions])
                found = True
        return score if found else self.filter_l1(grp)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Project alpha onto the budget, re-rank (every rank_interval steps), set the counts."""
        self._check_live()
        alphas = torch.tensor([float(self._masks[p].alpha) for p in self.producers], dtype=torch.float64)
        alphas = self._project(alphas)
        counts = self._counts(alphas)
        for i, p in enumerate(self.producers):
            mask = self._masks[p]
            mask.alpha.fill_(float(alphas[i]))
            mask.keep.fill_(counts[i])
            if step % self.rank_interval == 0:
                order = torch.argsort(self.importance(p), descending=True, stable=True).to(mask.rank.device)
                mask.rank[order] = torch.arange(order.numel(), dtype=mask.rank.dtype, device=mask.rank.device)

    def keep_indices(self) -> dict[str, Tensor]:
        return {p: (m.rank < m.keep).nonzero().flatten().cpu() for p, m in self._masks.items()}

    def param_groups(self, weight_decay: float = 0.0, alpha_lr: float | None = None, **options) -> list[dict]:
        """[every other parameter with `weight_decay`], [the alphas: no weight decay, lr `alpha_lr`]."""
        own = {"weight_decay": 0.0} | ({"lr": check_number("alpha_lr", alpha_lr)} if alpha_lr is not None else {})
        return split_groups(self.model, list(self.ratios.values()), weight_decay, own, **options)
