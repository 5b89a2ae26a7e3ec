"""DSA: per-layer keep ratios learned under a FLOPs budget (after Ning et al., ECCV 2020).

Each prunable layer p has a learned keep ratio alpha_p in [min_ratio, 1]. Its channels are
ranked by importance (|BN gamma| when a BatchNorm follows, else the filter's L1 norm; rank 0 =
most important) and the next layer's input channel c is scaled by a straight-through mask:

    forward:  m_c = 1 if rank_c < k_p else 0      (k_p = the integer keep count of alpha_p)
    backward: dm_c/dalpha_p from sigmoid((alpha_p * C_p - rank_c - 1/2) / T)

so the network trained is the one deployed and the task loss tells each alpha whether more
channels would help. The FLOPs of the pruned network are bilinear in the ratios,
F(alpha) = F_fixed + sum_L F_L * a_out(L) * a_in(L) (F_L measured with `ltp_core.flops`);
after every optimizer step alpha is projected onto {F(alpha) <= budget * F_dense} along
-grad F (a bisection on the step), so costly layers give up more. The integer counts k_p are
floor(alpha_p C_p) topped up greedily while the budget allows: the finalized network's measured
FLOPs are <= budget * F_dense and within about one channel's FLOPs of it.

Simplification (documented): DSA's ADMM solver and its gradient-based importance estimate are
replaced by this projected gradient and a fixed importance criterion.
Supported models: see `ltp_core.methods.channels.SUPPORTED` (no residual networks yet).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..checks import check_fraction, check_number, check_steps
from ..core.layers import prunable_layers
from ..core.method import split_groups
from .channels import scale_input
from .greg import filter_l1
from .structured import StructuredMethod

__all__ = ["RankMask", "DSA"]


class RankMask(nn.Module):
    """Parametrization W -> W with input channel c scaled by the straight-through mask above.

    `alpha` (0-d Parameter) is the producer's keep ratio; buffers `rank` (C,) and `keep`
    (0-d, the integer count) are set by the method after each step."""

    def __init__(self, channels: int, spatial: int, weight: Tensor, temperature: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones((), dtype=weight.dtype, device=weight.device))
        self.register_buffer("rank", torch.arange(channels, dtype=weight.dtype, device=weight.device))
        self.register_buffer("keep", torch.tensor(channels, device=weight.device))
        self.spatial, self.temperature = int(spatial), float(temperature)

    def mask(self) -> Tensor:
        channels = self.rank.numel()
        soft = torch.sigmoid((self.alpha * channels - self.rank - 0.5) / self.temperature)
        hard = (self.rank < self.keep).to(soft.dtype)
        return hard + soft - soft.detach()

    def forward(self, weight: Tensor) -> Tensor:
        return scale_input(weight, self.mask(), self.spatial)


class DSA(StructuredMethod):
    """Budgeted channel pruning with learned per-layer keep ratios.

    Args:
        model: a chain network (`channels.SUPPORTED`); masks are attached in place.
        example_input: required; a batch (e.g. one sample) on which FLOPs are measured.
        budget: FLOPs of the pruned network / FLOPs of the dense one, in (0, 1].
        min_ratio: smallest keep ratio of a layer, in (0, 1] (and at least one channel).
        temperature: T > 0, the soft mask's width in channels (gradient only).
        rank_interval: optimizer steps between re-rankings of the channels.
        exclude: layers whose channels are all kept; total_steps: accepted, unused.
    """

    def __init__(self, model: nn.Module, *, example_input: Tensor | None = None, budget: float = 0.5,
                 min_ratio: float = 0.05, temperature: float = 1.0, rank_interval: int = 1,
                 exclude: Iterable[str] | str = (), total_steps: int | None = None) -> None:
        self.budget = check_fraction("budget", budget, allow_one=True, allow_zero=False)
        min_ratio = check_fraction("min_ratio", min_ratio, allow_one=True, allow_zero=False)
        temperature = check_number("temperature", temperature, positive=True)
        self.rank_interval = check_steps("rank_interval", rank_interval, positive=True, optional=False)
        if example_input is None:
            raise ValueError("DSA needs an example_input (e.g. one training sample with its batch dim) "
                             "to measure the FLOPs its budget is in")
        super().__init__(model, exclude, example_input)
        self.producers = list(self.links)
        channels = [self.module(p).weight.shape[0] for p in self.producers]
        self.channels = dict(zip(self.producers, channels))
        self.low = torch.tensor([max(min_ratio, 1.0 / c) for c in channels], dtype=torch.float64)
        self._flops_model()
        if self.relative_flops(self.low) > self.budget + 1e-12:
            raise ValueError(f"budget {self.budget} is below the smallest reachable FLOPs fraction "
                             f"{self.relative_flops(self.low):.4f} (every layer at min_ratio {min_ratio})")
        for p, link in self.links.items():
            consumer = self.module(link.consumer)
            if parametrize.is_parametrized(consumer, "weight"):
                raise ValueError(f"layer {link.consumer!r} already has a weight parametrization")
            parametrize.register_parametrization(
                consumer, "weight", RankMask(self.channels[p], link.spatial, consumer.weight, temperature))
        self._masks = {p: self.module(link.consumer).parametrizations.weight[0] for p, link in self.links.items()}
        self.after_step(0)

    # -- the FLOPs model -------------------------------------------------------------------
    def _flops_model(self) -> None:
        """F(a) = fixed + sum_L F_L a[out(L)] a[in(L)] over the Conv/Linear layers L, relative
        to the dense total; out/in index the producer ratios (None: not pruned)."""
        flops = self.dense_flops
        total = flops["total"]
        index = {p: i for i, p in enumerate(self.producers)}
        consumer_of = {link.consumer: link.producer for link in self.links.values()}
        self.terms = []
        fixed = float(total)
        for name, _ in prunable_layers(self.model):
            f = flops.get(name, 0)
            fixed -= f
            self.terms.append((f / total, index.get(name), index.get(consumer_of.get(name))))
        self.fixed = fixed / total

    def relative_flops(self, ratios: Tensor) -> float:
        """F(ratios) / F_dense for per-producer keep ratios (a float64 tensor)."""
        total = self.fixed
        for f, out, inp in self.terms:
            total += f * (1.0 if out is None else float(ratios[out])) * (1.0 if inp is None else float(ratios[inp]))
        return total

    def _flops_grad(self, ratios: Tensor) -> Tensor:
        grad = torch.zeros_like(ratios)
        for f, out, inp in self.terms:
            a_out = 1.0 if out is None else float(ratios[out])
            a_in = 1.0 if inp is None else float(ratios[inp])
            if out is not None:
                grad[out] += f * a_in
            if inp is not None:
                grad[inp] += f * a_out
        return grad

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
        """{producer: alpha_p}, the learned keep ratios (0-d Parameters)."""
        self._check_live()
        return {p: m.alpha for p, m in self._masks.items()}

    def importance(self, producer: str) -> Tensor:
        """|BN gamma| of the producer's channels if a BatchNorm follows, else filter L1 norms."""
        link = self.links[producer]
        norm = self.module(link.norm) if link.norm is not None else None
        if norm is not None and norm.affine:
            return norm.weight.detach().abs()
        return filter_l1(self.module(producer))

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
                order = torch.argsort(self.importance(p), descending=True, stable=True)
                mask.rank[order] = torch.arange(order.numel(), dtype=mask.rank.dtype, device=mask.rank.device)

    def keep_indices(self) -> dict[str, Tensor]:
        return {p: (m.rank < m.keep).nonzero().flatten() for p, m in self._masks.items()}

    def predicted_flops(self) -> float:
        """FLOPs fraction of the network finalize() gives, from the FLOPs model."""
        counts = self.kept_channels()
        return self.relative_flops(torch.tensor([counts[p] / self.channels[p] for p in self.producers],
                                                dtype=torch.float64))

    def param_groups(self, weight_decay: float = 0.0, alpha_lr: float | None = None, **options) -> list[dict]:
        """[every other parameter with `weight_decay`], [the alphas: no weight decay, lr `alpha_lr`]."""
        own = {"weight_decay": 0.0} | ({"lr": check_number("alpha_lr", alpha_lr)} if alpha_lr is not None else {})
        return split_groups(self.model, list(self.ratios.values()), weight_decay, own, **options)
