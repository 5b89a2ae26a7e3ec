"""STR, Soft Threshold Reparameterization (Kusupati et al. 2020).

Layer l trains a weight W and one scalar s_l; the forward uses

    W_eff = sign(W) * relu(|W| - sigmoid(s_l))          (sigmoid(s_l): the magnitude cut)

by plain autograd: dW_eff/dW = 1 where |W| > sigmoid(s_l), else 0 (a pruned weight gets no
task gradient), and s_l gets -sign(W) * sigmoid'(s_l) from every surviving weight. Nothing
is added to the loss: weight decay on s (pulling s up towards 0, so the cut sigmoid(s) up)
drives the sparsity, against the task gradient. The paper starts s very negative (e.g. -3200
in its ImageNet runs, an exactly dense start); here s_init defaults to -10 (a cut of 4.5e-5),
which the small networks of the suite reach in a few hundred SGD steps. The deployed weights
are W_eff themselves (shrunk by the cut): `finalize()` bakes them in.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..checks import check_number
from ..core.method import ReparamMethod, split_groups

__all__ = ["STRThreshold", "STR"]


class STRThreshold(nn.Module):
    """Parametrization W -> sign(W) relu(|W| - sigmoid(s)); owns `threshold` = s (0-d, logits)."""

    def __init__(self, weight: Tensor, s_init: float) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(s_init), dtype=weight.dtype, device=weight.device))

    def cutoff(self) -> Tensor:
        """sigmoid(s): weights with |W| <= cutoff are 0 (units of the weight)."""
        return torch.sigmoid(self.threshold)

    def forward(self, weight: Tensor) -> Tensor:
        return torch.sign(weight) * torch.relu(weight.abs() - self.cutoff())


class STR(ReparamMethod):
    """Soft Threshold Reparameterization of every selected Conv/Linear weight.

    Args:
        model: pruned in place (an `STRThreshold` on each selected weight).
        s_init: the initial s_l of every layer (logits; the initial cut is sigmoid(s_init)).
        threshold_weight_decay: weight decay of the s group in `param_groups` (None: the same
            weight decay as the weights, as in the paper). This sets the sparsity.
        exclude, exclude_first, exclude_last: as in `ltp_core.LTP`.
        total_steps, example_input: accepted for a uniform engine call; unused.
    """

    def __init__(self, model: nn.Module, *, s_init: float = -10.0, threshold_weight_decay: float | None = None,
                 exclude: Iterable[str] | str = (), exclude_first: bool = False, exclude_last: bool = False,
                 total_steps: int | None = None, example_input: Tensor | None = None) -> None:
        if isinstance(s_init, bool) or not isinstance(s_init, (int, float)):
            raise ValueError(f"s_init must be a number (logits of the cut), got {s_init!r}")
        if threshold_weight_decay is not None:
            check_number("threshold_weight_decay", threshold_weight_decay)
        super().__init__(model, exclude, exclude_first, exclude_last)
        self.s_init = float(s_init)
        self.threshold_weight_decay = threshold_weight_decay
        self._attach(lambda name, module: STRThreshold(module.weight, s_init))

    @property
    def thresholds(self) -> dict[str, nn.Parameter]:
        """{layer name: s_l}, 0-d Parameters (logits)."""
        self._check_live()
        return {n: self._param(n).threshold for n in self.layers}

    @torch.no_grad()
    def cutoffs(self) -> dict[str, float]:
        """{layer name: sigmoid(s_l)}, the magnitude cut in units of the weight."""
        self._check_live()
        return {n: float(self._param(n).cutoff()) for n in self.layers}

    def param_groups(self, weight_decay: float = 0.0, threshold_weight_decay: float | None = None,
                     threshold_lr: float | None = None, **options) -> list[dict]:
        """[every other parameter with `weight_decay`], [the s_l with `threshold_weight_decay`
        (else the constructor's, else `weight_decay`) and, if given, lr `threshold_lr`]."""
        self._check_live()
        decay = next(d for d in (threshold_weight_decay, self.threshold_weight_decay, weight_decay)
                     if d is not None)
        own = {"weight_decay": check_number("threshold_weight_decay", decay)}
        if threshold_lr is not None:
            own["lr"] = check_number("threshold_lr", threshold_lr)
        return split_groups(self.model, list(self.thresholds.values()), weight_decay, own, **options)
