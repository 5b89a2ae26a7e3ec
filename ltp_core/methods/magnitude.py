"""Magnitude pruning: one-shot (Han et al. 2015) and gradual, GMP (Zhu & Gupta 2017).

Both keep the largest-|w| weights, either per layer (scope="layer": every layer loses the same
fraction) or over all pruned layers at once (scope="global": one magnitude cut for the whole
network). `magnitude_masks` agrees mask for mask with `torch.nn.utils.prune.l1_unstructured`
(layer) and `global_unstructured(..., pruning_method=L1Unstructured)` (global): it prunes
round(sparsity * n) weights, picked by the same `torch.topk(..., largest=False)`.

    Magnitude(model, sparsity=0.9)                 prune once now, retrain with the mask fixed
    GMP(model, sparsity=0.9, total_steps=10_000)   s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3

The masks are `KeepMask` parametrizations (a bool buffer, like torch.ao.pruning's
FakeSparsity): a pruned weight is 0 in the forward and gets no gradient.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..checks import check_choice, check_fraction, check_steps
from ..core.layers import select_layers
from ..core.method import ReparamMethod

__all__ = ["SCOPES", "KeepMask", "magnitude_masks", "gmp_sparsity", "Magnitude", "GMP"]

SCOPES = ("global", "layer")


class KeepMask(nn.Module):
    """Parametrization weight -> weight * mask, `mask` a bool buffer of the weight's shape."""

    def __init__(self, keep: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", keep.detach().clone().bool())

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def _keep_largest(scores: Tensor, num_pruned: int) -> Tensor:
    """Bool mask over the flat `scores`, False at the `num_pruned` smallest (prune's topk)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if num_pruned:
        keep[torch.topk(scores, k=num_pruned, largest=False).indices] = False
    return keep


@torch.no_grad()
def _masks(weights: dict[str, Tensor], sparsity: float, scope: str) -> dict[str, Tensor]:
    if scope == "layer":
        return {n: _keep_largest(w.detach().abs().reshape(-1), round(sparsity * w.numel())).view_as(w)
                for n, w in weights.items()}
    scores = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    flat = _keep_largest(scores, round(sparsity * scores.numel()))
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = flat[start:start + w.numel()].view_as(w)
        start += w.numel()
    return out


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global", *,
                    exclude: Iterable[str] | str = (), exclude_first: bool = False,
                    exclude_last: bool = False) -> dict[str, Tensor]:
    """{module name: bool keep-mask (the weight's shape)} pruning the smallest-|w| weights.

    Args:
        sparsity: fraction of weights pruned, in [0, 1): per layer (scope="layer") or of all the
            selected layers' weights together (scope="global").
        scope: "global" | "layer".
        exclude, exclude_first, exclude_last: layers left out, as in `ltp_core.LTP`.
    The magnitudes are those of each layer's current `weight` (a masked layer's pruned weights
    count as 0, so repeated calls only grow the pruned set).
    """
    sparsity = check_fraction("sparsity", sparsity)
    scope = check_choice("scope", scope, SCOPES)
    layers = select_layers(model, exclude, exclude_first, exclude_last)
    return _masks({n: m.weight for n, m in layers}, sparsity, scope)


def gmp_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0, end: int,
                 frequency: int = 1) -> float:
    """Zhu & Gupta's cubic schedule: the target sparsity after `step` optimizer steps.

    s = final + (initial - final) * (1 - (t - start) / (end - start))**3, evaluated at the last
    pruning step t <= step. The pruning steps are start + k * frequency before `end`, and `end`
    itself (a frequency that does not divide end - start still arrives at `final` at `end`):
    `initial` at `start`, `final` from `end` on, 0 before `start` (nothing pruned yet).
    """
    final = check_fraction("final sparsity", final)
    initial = check_fraction("initial sparsity", initial)
    if initial > final:
        raise ValueError(f"initial sparsity {initial} must be <= final sparsity {final}")
    check_steps("start", start, optional=False)
    check_steps("frequency", frequency, positive=True, optional=False)
    if not (isinstance(end, int) and end > start):
        raise ValueError(f"end must be an int > start ({start}), got {end!r}")
    if step < start:
        return 0.0
    t = end if step >= end else start + (step - start) // frequency * frequency
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


class Magnitude(ReparamMethod):
    """One-shot magnitude pruning (Han et al. 2015): the smallest-|w| weights are pruned once,
    at construction; training afterwards is the retraining, with the mask fixed.

    Args:
        model: pruned in place (a `KeepMask` on every selected Conv/Linear weight).
        sparsity: fraction pruned, in [0, 1); scope: "global" | "layer".
        exclude, exclude_first, exclude_last: as in `ltp_core.LTP`.
        total_steps, example_input: accepted for a uniform engine call; unused.
    """

    def __init__(self, model: nn.Module, *, sparsity: float = 0.9, scope: str = "global",
                 exclude: Iterable[str] | str = (), exclude_first: bool = False, exclude_last: bool = False,
                 total_steps: int | None = None, example_input: Tensor | None = None) -> None:
        sparsity = check_fraction("sparsity", sparsity)
        self.scope = check_choice("scope", scope, SCOPES)
        super().__init__(model, exclude, exclude_first, exclude_last)
        self.target = sparsity
        masks = _masks({n: m.weight for n, m in self.layers.items()}, sparsity, self.scope)
        self._attach(lambda name, module: KeepMask(masks[name]))

    def masks(self) -> dict[str, Tensor]:
        """{layer name: the bool keep-mask in force}."""
        self._check_live()
        return {n: self._param(n).mask for n in self.layers}


class GMP(Magnitude):
    """Gradual magnitude pruning (Zhu & Gupta 2017) with the cubic schedule `gmp_sparsity`.

    Every `frequency` steps from `start_step`, and at `end_step`, the masks are recomputed from
    the current |w| at the scheduled sparsity; a pruned weight stays pruned (it counts as 0).
    From `end_step` on the mask is fixed at `sparsity` and training fine-tunes.

    Args:
        sparsity: the final sparsity s_f in [0, 1); initial_sparsity: s_i, applied at start_step.
        total_steps: optimizer steps of the whole run; with end_step=None the ramp ends at
            round(0.75 * total_steps), leaving a quarter for fine-tuning.
        start_step, end_step: the ramp t0 .. t0 + n*dt, in optimizer steps.
        frequency: dt, steps between mask updates (default: (end - start) // 20, at least 1).
        scope: "global" | "layer"; exclude, exclude_first, exclude_last as in `ltp_core.LTP`.
    """

    STEP_OPTIONS = ("total_steps", "start_step", "end_step")  # `frequency` only sets the granularity

    def __init__(self, model: nn.Module, *, sparsity: float = 0.9, initial_sparsity: float = 0.0,
                 total_steps: int | None = None, start_step: int = 0, end_step: int | None = None,
                 frequency: int | None = None, scope: str = "global", exclude: Iterable[str] | str = (),
                 exclude_first: bool = False, exclude_last: bool = False,
                 example_input: Tensor | None = None) -> None:
        total_steps = check_steps("total_steps", total_steps, positive=True)
        start_step = check_steps("start_step", start_step, optional=False)
        end_step = check_steps("end_step", end_step, positive=True)
        frequency = check_steps("frequency", frequency, positive=True)
        if end_step is None:
            if total_steps is None:
                raise ValueError("GMP needs end_step or total_steps (the run's optimizer steps)")
            end_step = max(start_step + 1, round(0.75 * total_steps))
        if end_step <= start_step:
            raise ValueError(f"end_step ({end_step}) must be > start_step ({start_step})")
        self.schedule = {"final": check_fraction("sparsity", sparsity),
                         "initial": check_fraction("initial_sparsity", initial_sparsity),
                         "start": start_step, "end": end_step,
                         "frequency": frequency or max(1, (end_step - start_step) // 20)}
        gmp_sparsity(start_step, **self.schedule)  # validates initial <= final
        super().__init__(model, sparsity=0.0, scope=scope, exclude=exclude, exclude_first=exclude_first,
                         exclude_last=exclude_last)
        self.after_step(0)

    def target_sparsity(self, step: int) -> float:
        """The scheduled sparsity after `step` optimizer steps."""
        return gmp_sparsity(step, **self.schedule)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Recompute the masks when the schedule asks for more sparsity than they have."""
        self._check_live()
        target = self.target_sparsity(step)
        if target <= self.target:
            return
        masks = _masks({n: m.weight for n, m in self.layers.items()}, target, self.scope)
        for name, keep in masks.items():
            self._param(name).mask.copy_(keep)
        self.target = target
