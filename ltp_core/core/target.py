"""The target-sparsity controller: drive LTP's hard sparsity to a target and hold it there."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .mask import hard_mask

__all__ = ["TargetSparsity"]


class TargetSparsity:
    """Reach and hold the hard sparsity `target` without a lambda sweep.

    `step(weights, thresholds, lambda_)` runs after every optimizer step (through
    `LTP.after_step`) and returns the new lambda_. With q the hard sparsity the optimizer step
    left and r the required sparsity of the previous step (`initial` at first):

    1. r moves towards the target s by `pace` (r <- r + pace * (s - r)), and the sparsity to hold
       now is q clipped to the interval between r and s: the learned thresholds are free while
       they lie between the pace's minimum progress and the target, and are held to that
       interval otherwise (no overshoot past s; no lagging behind r).
    2. Projection: when q is outside the interval (by more than DEADBAND, so a held target does
       not cost a selection per layer every step), every layer's threshold is set (to the
       midpoint between two consecutive w**2) so that the hard sparsity is the clipped value,
       the layers keeping their proportions: to prune more, every layer keeps the same fraction
       of its surviving weights; to prune less, every layer restores the same fraction of its
       pruned ones. How the sparsity is spread over the layers stays learned; only its total is
       imposed. This makes the approach and the hold independent of the optimizer and its
       learning rates (with Adam, tau moves at about threshold_lr per step whatever lambda_ is).
    3. Dual ascent: lambda_ <- max(0, lambda_ + lambda_lr * e), e = the sparsity the projection
       added (negative: removed), clipped to +-LAMBDA_STEP_CLIP. lambda_ is the multiplier of the
       constraint: it grows while the optimizer prunes too little on its own and shrinks while
       it prunes too much, so the projection has less and less to do.

    Under DistributedDataParallel every process computes the same result from the same weights.
    """

    LAMBDA_STEP_CLIP = 0.05  # most sparsity error one dual-ascent step counts (anti-windup)
    DEADBAND = 2e-4  # a drift this small is left alone: it spares the kthvalue on most held steps

    def __init__(self, target: float, pace: float, lambda_lr: float, initial: float) -> None:
        self.target, self.pace, self.lambda_lr = target, pace, lambda_lr
        self.initial = initial
        self.required: float | None = None  # the sparsity the run must have now

    @torch.no_grad()
    def step(self, weights: list[Tensor], thresholds: list[Tensor], lambda_: float) -> float:
        total = sum(w.numel() for w in weights)
        kept = torch.stack([hard_mask(w, t).sum() for w, t in zip(weights, thresholds)]).tolist()
        now = 1.0 - sum(kept) / total
        required = self.initial if self.required is None else self.required
        required += self.pace * (self.target - required)
        if abs(self.target - required) < 0.5 / total:
            required = self.target
        low, high = min(required, self.target), max(required, self.target)
        hold = min(high, max(low, now))
        self.required = hold
        error = hold - now
        if abs(error) > self.DEADBAND:
            project(weights, thresholds, kept, hold)
        clipped = max(-self.LAMBDA_STEP_CLIP, min(self.LAMBDA_STEP_CLIP, error))
        return max(0.0, lambda_ + self.lambda_lr * clipped)

    def state_dict(self) -> dict[str, Any]:
        return {"required_sparsity": self.required}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        required = state["required_sparsity"]
        self.required = None if required is None else float(required)


@torch.no_grad()
def project(weights: list[Tensor], thresholds: list[Tensor], kept: list[int], sparsity: float) -> None:
    """Set the thresholds so that the total hard sparsity is `sparsity`, scaling every layer's
    surviving (to prune more) or pruned (to prune less) count by one factor."""
    total = sum(w.numel() for w in weights)
    goal_kept = round((1.0 - sparsity) * total)
    now_kept = sum(kept)
    if goal_kept < now_kept:
        ratio = goal_kept / now_kept
        new = [max(min(k, 1), round(k * ratio)) for k in kept]  # a layer keeps >= 1 weight
    else:
        pruned = [w.numel() - k for w, k in zip(weights, kept)]
        ratio = (total - goal_kept) / max(1, sum(pruned))
        new = [w.numel() - round(p * ratio) for w, p in zip(weights, pruned)]
    for w, tau, k, k_new in zip(weights, thresholds, kept, new):
        if k_new == k:
            continue
        n = w.numel()
        if k_new >= n:
            tau.zero_()  # keep everything (but exact zeros)
            continue
        w2 = w.detach().float().square().flatten()
        below = torch.kthvalue(w2, n - k_new).values  # the largest pruned w**2
        above = w2.masked_fill(w2 <= below, float("inf")).min()  # the smallest kept one
        tau.copy_(torch.where(torch.isfinite(above), (below + above) / 2, below))
