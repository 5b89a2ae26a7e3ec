"""LATS: soft thresholding with a scheduled threshold (Chen et al., ICLR 2023).

Every pruned weight theta is used as w = sign(theta) * max(|theta| - d_t, 0) with a
straight-through gradient (dw/dtheta := 1, so pruned weights keep training and can return).
One threshold d_t for all layers (units of the weight), raised by a schedule to D. With
learning rate lr_t, a step of this is ISTA with the L1 coefficient lambda_t = (d_{t+1} - d_t) / lr_t;
LATS keeps lambda constant, d_t = D * sum_{s<t} lr_s / sum_{s<N} lr_s. The schedules
(N = end_step - start_step steps, n = steps into the ramp):

    "lats"      d_n = D * sum_{s<n} lr_s / sum_{s<N} lr_s      (linear in n for a constant lr)
    "slats"     d_n = D * (n/N + sin(pi n/N) / pi)             (S-LATS: fast first, flat last)
    "pgh"       increments ~ beta^x (1 + cos(pi x)), x = n/N    (early pruning, beta < 1)
    "constant"  d_n = D from the first step                     (pruning at initialization)

"constant" starts as the authors' code does: the latent weights are first inflated,
theta = sign(w) (|w| + D), so that S_D(theta) = w and the network starts unchanged; training
then prunes a weight by moving its theta into [-D, D]. The other schedules start at d = 0 and
need no inflation. `ltp-train` hands "lats" the run's learning rate per step (its
--lr-scheduler, warm-up included), so d_t follows a cosine or step schedule as the rule says.

Nothing is added to the loss. `finalize()` bakes w = S_D(theta) into plain weights.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_choice, check_fraction, check_number, check_steps
from ..core.method import ReparamMethod

__all__ = ["SCHEDULES", "lats_schedule", "SoftThreshold", "LATS"]

SCHEDULES = ("lats", "slats", "pgh", "constant")
LRSchedule = float | Sequence[float] | Callable[[int], float] | None


def _lrs(lr_schedule: LRSchedule, start: int, steps: int) -> Tensor:
    """lr_s for the ramp's steps s = start .. start + steps - 1 (float64, all > 0)."""
    if lr_schedule is None:
        lrs = [1.0] * steps
    elif isinstance(lr_schedule, (int, float)) and not isinstance(lr_schedule, bool):
        lrs = [float(lr_schedule)] * steps
    elif callable(lr_schedule):
        lrs = [float(lr_schedule(start + s)) for s in range(steps)]
    else:
        lr_schedule = list(lr_schedule)
        if len(lr_schedule) < start + steps:
            raise ValueError(f"lr_schedule has {len(lr_schedule)} entries; the ramp needs {start + steps} "
                             "(one learning rate per optimizer step from step 0)")
        lrs = [float(v) for v in lr_schedule[start:start + steps]]
    out = torch.tensor(lrs, dtype=torch.float64)
    if not bool((out > 0).all()):
        raise ValueError(f"learning rates must be > 0, got min {float(out.min())}")
    return out


def lats_schedule(kind: str, steps: int, threshold: float, *, lr_schedule: LRSchedule = None,
                  beta: float = 0.1, start: int = 0) -> Tensor:
    """d_n for n = 0 .. steps (float64, length steps + 1): the threshold after n ramp steps.

    Args:
        kind: "lats" | "slats" | "pgh" | "constant".
        steps: N, optimizer steps in the ramp (> 0).
        threshold: D >= 0, the final threshold (units of the weight).
        lr_schedule ("lats" only): the learning rate of each optimizer step, indexed from step
            0 of the run: a number (constant), a sequence, or a callable step -> lr; None = constant.
        beta ("pgh"): in (0, 1]; smaller front-loads the pruning more.
        start: the run's step at which the ramp begins (to index lr_schedule).
    """
    kind = check_choice("LATS schedule", kind, SCHEDULES)
    check_steps("steps", steps, positive=True, optional=False)
    threshold = check_number("threshold", threshold)
    n = torch.arange(steps + 1, dtype=torch.float64)
    if kind == "constant":
        return torch.full((steps + 1,), threshold, dtype=torch.float64)
    if kind == "slats":
        x = n / steps
        return threshold * (x + torch.sin(math.pi * x) / math.pi)
    if kind == "lats":
        increments = _lrs(lr_schedule, start, steps)
    else:  # pgh
        if not (isinstance(beta, (int, float)) and 0 < beta <= 1):
            raise ValueError(f"beta must be a number in (0, 1], got {beta!r}")
        x = n[:-1] / steps
        increments = float(beta) ** x * (1 + torch.cos(math.pi * x))
    return threshold * torch.cat([torch.zeros(1, dtype=torch.float64), increments.cumsum(0)]) / increments.sum()


class SoftThreshold(nn.Module):
    """Parametrization theta -> sign(theta) max(|theta| - d, 0) with a straight-through
    gradient; `threshold` (d, 0-d buffer, units of the weight) is set by the schedule."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.zeros((), dtype=weight.dtype, device=weight.device))

    def forward(self, weight: Tensor) -> Tensor:
        shrunk = torch.sign(weight) * torch.relu(weight.abs() - self.threshold)
        return weight + (shrunk - weight).detach()


class LATS(ReparamMethod):
    """Soft thresholding of every selected weight with one scheduled threshold d_t.

    Args:
        model: pruned in place (a `SoftThreshold` on each selected weight).
        threshold: D, the final threshold (units of the weight); None: chosen at construction
            as the global magnitude quantile that would prune `sparsity` of the current weights.
        sparsity: used only when threshold is None, in [0, 1). The final sparsity is usually
            lower: the surviving weights keep training and grow past D (measured on digits:
            0.9 asked, about 0.6 reached); LATS controls D, not the sparsity.
        schedule: "lats" | "slats" | "pgh" | "constant" (see the module docstring); "constant"
            inflates the weights at construction, theta = sign(w) (|w| + D): the model's
            outputs are unchanged until training moves them.
        total_steps: optimizer steps of the run; the ramp ends at end_step (default total_steps).
            Needed by every schedule but "constant".
        start_step, end_step: the ramp's first and last optimizer step; d = 0 before, D after.
        lr_schedule: the run's learning rate per step ("lats"): number, sequence or callable
            step -> lr (step counted from 0); None = constant. `ltp-train` passes its own.
        beta: PGH's base, in (0, 1].
        exclude, exclude_first, exclude_last: as in `ltp_core.LTP`; example_input: unused.
    """

    STEP_OPTIONS = ("total_steps", "start_step", "end_step", "lr_schedule")  # lr_schedule: one lr per step

    def __init__(self, model: nn.Module, *, threshold: float | None = None, sparsity: float = 0.9,
                 schedule: str = "lats", total_steps: int | None = None, start_step: int = 0,
                 end_step: int | None = None, lr_schedule: LRSchedule = None, beta: float = 0.1,
                 exclude: Iterable[str] | str = (), exclude_first: bool = False, exclude_last: bool = False,
                 example_input: Tensor | None = None) -> None:
        self.kind = check_choice("LATS schedule", schedule, SCHEDULES)
        total_steps = check_steps("total_steps", total_steps, positive=True)
        self.start_step = check_steps("start_step", start_step, optional=False)
        end_step = check_steps("end_step", end_step, positive=True)
        if threshold is not None:
            check_number("threshold", threshold)
        sparsity = check_fraction("sparsity", sparsity)
        super().__init__(model, exclude, exclude_first, exclude_last)
        if threshold is None:
            with torch.no_grad():
                magnitudes = torch.cat([m.weight.detach().abs().reshape(-1).float() for m in self.layers.values()])
                k = round(sparsity * magnitudes.numel())
                threshold = 0.0 if k == 0 else float(magnitudes.kthvalue(k).values)
        self.final_threshold = float(threshold)
        if end_step is None:
            end_step = total_steps if total_steps is not None else self.start_step + 1
            if total_steps is None and self.kind != "constant":
                raise ValueError(f"LATS schedule {self.kind!r} needs total_steps (or end_step)")
        if end_step <= self.start_step:
            raise ValueError(f"end_step ({end_step}) must be > start_step ({self.start_step})")
        self.end_step = end_step
        self.lr_schedule = lr_schedule
        self.schedule = lats_schedule(self.kind, end_step - self.start_step, self.final_threshold,
                                      lr_schedule=lr_schedule, beta=beta, start=self.start_step)
        self._attach(lambda name, module: SoftThreshold(module.weight))
        if self.kind == "constant":  # the authors' start: S_D(theta) = w, the network unchanged
            with torch.no_grad():
                for name in self.layers:
                    theta = self._original(name)
                    theta.add_(torch.sign(theta) * self.final_threshold)
        self.after_step(0)

    def threshold_at(self, step: int) -> float:
        """d after `step` optimizer steps (0 before start_step, D after end_step)."""
        if step < self.start_step and self.kind != "constant":
            return 0.0
        n = min(max(step - self.start_step, 0), len(self.schedule) - 1)
        return float(self.schedule[n])

    @property
    def threshold(self) -> float:
        """The current d (units of the weight)."""
        self._check_live()
        return float(self._param(next(iter(self.layers))).threshold)

    def implied_lambdas(self) -> Tensor:
        """lambda_n = (d_{n+1} - d_n) / lr_n over the ramp (float64, length N): the L1
        coefficient each step applies; constant for "lats" (= D / sum lr)."""
        lrs = _lrs(self.lr_schedule, self.start_step, len(self.schedule) - 1)
        return (self.schedule[1:] - self.schedule[:-1]) / lrs

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Set every layer's d to the schedule's value after `step` optimizer steps."""
        self._check_live()
        d = self.threshold_at(step)
        for name in self.layers:
            self._param(name).threshold.fill_(d)
