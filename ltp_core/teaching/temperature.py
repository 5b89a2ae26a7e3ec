"""LTP runs at a chosen temperature T0 and weight lambda, watched where the thresholds learn.

Layer l keeps weight w with the soft mask m = sigmoid(z), z = (w**2 - tau_l) / T_l, and
T_l = T0 * Var(|w_l|) (the paper's eq. 15). The threshold's gradient

    dL0/dtau = -(1 / T_l) sum_k sigmoid'(z_k),       dv_k/dtau = -(w_k / T_l) sigmoid'(z_k)

comes only from weights in the transition band |z| < width (sigmoid'(4) = 0.018): a layer
with no weight there gets exactly zero and its threshold stalls, a layer with every weight
there has a soft mask far from the 0/1 mask it is deployed with. The functions below train
LTP from a dense network (`train_ltp`) and measure that band while it trains: the share of
weights in it (`layer_band_fractions`, `band_coordinates`) and the share of optimizer steps in
which a threshold moved at all (`ThresholdWatch`). `use_global_temperature` and
`rescale_layers` set up the comparison of the per-layer rule with one temperature for all.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.ltp import LTP
from ..core.mask import TEMPERATURE_FLOOR, soft_prune
from ..core.trail import Trail
from ..data import TensorSplit
from ..engine.fit import accuracy, fit

__all__ = ["BAND_WIDTH", "ThresholdWatch", "layer_band_fractions", "band_coordinates", "layer_scaled_groups",
           "use_global_temperature", "rescale_layers", "LTPRun", "train_ltp", "run_summary"]

BAND_WIDTH = 4.0  # the band is |w**2 - tau| < BAND_WIDTH * T: outside it sigmoid' < 0.018


class ThresholdWatch:
    """LTP as `fit` sees it (the same loss term), counting the optimizer steps in which some
    threshold had a non-zero gradient.

    A threshold whose layer has no weight in the band gets a gradient of exactly 0, so
    `moved_fraction` near 0 is a stall made visible: Adam then only coasts on its momentum.
    """

    def __init__(self, ltp: LTP) -> None:
        self.ltp, self.steps, self.moved = ltp, 0, 0

    def regularizer(self) -> Tensor:
        return self.ltp.regularizer()

    def after_step(self, step: int | None = None) -> None:
        self.steps += 1
        self.moved += any(t.grad is not None and float(t.grad) != 0.0 for t in self.ltp.thresholds.values())
        self.ltp.after_step(step)

    @property
    def moved_fraction(self) -> float:
        """Share of the steps so far in which at least one threshold received a gradient."""
        return self.moved / max(1, self.steps)


@torch.no_grad()
def layer_band_fractions(ltp: LTP, width: float = BAND_WIDTH) -> dict[str, float]:
    """{layer: share of its weights with |w**2 - tau_l| < width * T_l}, the weights that move tau_l
    (`LTP.band_fraction` gives the same share over all layers together)."""
    out = {}
    for name, w in ltp.weights().items():
        mask = ltp.masks[name]
        out[name] = float(((w * w - mask.threshold).abs() < width * mask.temperature(w)).float().mean())
    return out


@torch.no_grad()
def band_coordinates(ltp: LTP) -> Tensor:
    """z = (w**2 - tau_l) / T_l for every prunable weight, all layers in one flat tensor: the
    sigmoid's argument, in units of each layer's own temperature (the band is |z| < width)."""
    return torch.cat([((w * w - ltp.masks[n].threshold) / ltp.masks[n].temperature(w)).flatten()
                      for n, w in ltp.weights().items()])


def layer_scaled_groups(ltp: LTP, lr: float, threshold_lr: float, scale: Mapping[str, float]) -> list[dict]:
    """Adam parameter groups for a network whose layer l was multiplied by a_l = scale[l].

    Adam's step does not depend on the gradient's size, so the same steps in that layer's
    units are a_l * lr for its weight and bias and a_l**2 * threshold_lr for its threshold
    (tau is in units of w**2). Layers missing from `scale` and the other parameters keep lr.
    """
    groups, taken = [], set()
    for name, layer in ltp.layers.items():
        a = float(scale.get(name, 1.0))
        params = [ltp.weights()[name]] + ([layer.bias] if layer.bias is not None else [])
        groups += [{"params": params, "lr": lr * a},
                   {"params": [ltp.thresholds[name]], "lr": threshold_lr * a * a, "weight_decay": 0.0}]
        taken |= {id(p) for p in params} | {id(ltp.thresholds[name])}
    rest = [p for p in ltp.model.parameters() if id(p) not in taken]
    return groups + ([{"params": rest, "lr": lr}] if rest else [])


def use_global_temperature(ltp: LTP) -> None:
    """Replace the per-layer rule T_l = T0 * Var(|w_l|) by one T = T0 * Var(|w|) over all the
    prunable weights pooled, recomputed at every forward, in every layer of `ltp`.

    It goes through `ThresholdMask.soft_prune`, the function the mask's forward calls, and the
    mask's `temperature`, which the band measurements read. One T is right for no layer whose
    scale differs from the pool's: a layer of small weights has all of them in the band.
    """
    def pooled(_weight: Tensor) -> Tensor:
        with torch.no_grad():
            w = torch.cat([w.detach().abs().flatten() for w in ltp.weights().values()])
            return (ltp.t0 * w.var(unbiased=False)).clamp_min(TEMPERATURE_FLOOR)

    def soft_prune_pooled(weight: Tensor, threshold: Tensor, t0: float, exact: bool) -> tuple[Tensor, Tensor]:
        return soft_prune(weight, threshold, pooled(weight), exact)

    for mask in ltp.masks.values():
        mask.soft_prune = soft_prune_pooled
        mask.temperature = pooled


@torch.no_grad()
def rescale_layers(model: nn.Module, first: str, second: str, a: float) -> nn.Module:
    """A copy of `model` with layer `first` (weight and bias) multiplied by a > 0 and layer
    `second`'s weight divided by it: the same function when only a ReLU (relu(a x) = a relu(x))
    lies between them, but the first layer's w**2 is now a**4 times larger relative to the second's."""
    if not a > 0:
        raise ValueError(f"a must be > 0, got {a}")
    scaled = copy.deepcopy(model)
    layers = dict(scaled.named_modules())
    layers[first].weight.mul_(a)
    if layers[first].bias is not None:
        layers[first].bias.mul_(a)
    layers[second].weight.div_(a)
    return scaled


@dataclass
class LTPRun:
    """One LTP run: the method, its network, its trail (record 0 is the dense start, then one
    per epoch) and the share of steps in which a threshold moved."""
    ltp: LTP
    model: nn.Module
    trail: Trail
    tau_moved: float

    @property
    def last(self) -> dict[str, Any]:
        """The record after the last epoch."""
        return self.trail.records[-1]

    @property
    def band_mean(self) -> float:
        """The band fraction averaged over the records after each epoch."""
        recs = self.trail.records[1:]
        return sum(r["band_fraction"] for r in recs) / max(1, len(recs))

    @property
    def gap(self) -> float:
        """Test accuracy of the network as trained (soft mask) minus as deployed (hard mask), at the end."""
        return self.last["soft_test_accuracy"] - self.last["hard_test_accuracy"]


def train_ltp(dense: nn.Module, data: TensorSplit, *, t0: float, lambda_: float, epochs: int, lr: float,
              threshold_lr: float, batch_size: int = 64, seed: int = 0, exact_weight_grad: bool = False,
              setup: Callable[[LTP], None] | None = None, lr_scale: Mapping[str, float] | None = None,
              band_width: float = BAND_WIDTH) -> LTPRun:
    """Prune a copy of `dense` with LTP at temperature `t0` and weight `lambda_` for `epochs` epochs.

    Adam, weights at `lr`, thresholds at `threshold_lr` (or per layer, `layer_scaled_groups`
    with `lr_scale`); `setup(ltp)` may change the masks first (e.g. `use_global_temperature`).
    The trail records the dense start (tau = 0) and every epoch: sparsity, soft and hard
    accuracy on the validation split (`soft_val_accuracy`, `hard_val_accuracy`: for choosing)
    and on the test split (`..._test_accuracy`: for reporting), and the band fraction, in all
    (`band_fraction`) and per layer (`layer_band_fraction`).
    """
    model = copy.deepcopy(dense)
    ltp = LTP(model, temperature=t0, lambda_=lambda_, exact_weight_grad=exact_weight_grad, fused=False)
    if setup is not None:
        setup(ltp)
    x_val, y_val = data.split("val")
    evaluate = lambda: {"val_accuracy": accuracy(model, x_val, y_val),
                        "test_accuracy": accuracy(model, data.x_test, data.y_test)}
    trail, watch = Trail(), ThresholdWatch(ltp)

    def on_eval(epoch: int, step: int) -> None:
        trail.record_pruner(ltp, evaluate, step=step, epoch=epoch, band_fraction=ltp.band_fraction(band_width),
                            layer_band_fraction=layer_band_fractions(ltp, band_width))

    groups = (ltp.param_groups(threshold_lr=threshold_lr) if lr_scale is None
              else layer_scaled_groups(ltp, lr, threshold_lr, lr_scale))
    on_eval(0, 0)
    fit(model, data, torch.optim.Adam(groups, lr=lr), epochs=epochs, batch_size=batch_size, method=watch,
        seed=seed, on_eval=on_eval, progress=False)
    return LTPRun(ltp, model, trail, watch.moved_fraction)


def run_summary(run: LTPRun) -> dict[str, float]:
    """One row for a table of runs: the end of training and the band over training."""
    last = run.last
    return {"sparsity": last["sparsity"], "soft test acc": last["soft_test_accuracy"],
            "hard test acc": last["hard_test_accuracy"], "soft - hard": run.gap,
            "band fraction (mean)": run.band_mean, "steps tau moved": run.tau_moved}
