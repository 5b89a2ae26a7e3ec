"""Batch norm against L1 and L2, and LTP's soft-L0 beside them: the measurements of notebook 03.

A Conv or Linear layer whose output goes straight into batch norm (BN) has a weight whose scale
the loss cannot see: BN(aWx) = BN(Wx) for every a > 0. A penalty on the size of W, L2 (||W||^2,
weight decay) or L1 (sum |w|), can then be lowered by shrinking W without changing the function.
LTP's soft-L0 counts the weights its soft mask sigmoid((w^2 - tau) / T) keeps, with tau in units
of w^2 and T = T0 Var(|w|): rescaling W by a and tau by a^2 leaves that count as it was, so the
penalty keeps its meaning under BN.

    bn_followed(model)                 the layers whose scale BN hides
    conv_layers(model)                 {"conv1": ..., ...}: the layers under study, in order
    scale_response(model, x, y)        how loss and predictions move when one layer is rescaled
    relative_sparsity(weights)         scale-free sparsity: |w| below 1% of the layer's largest |w|
    cut_below(model, cuts)             a copy with every conv weight |w| < c_l set to zero
    measure(model, data)               what a run records after every epoch
    train_penalized(start, data, ...)  SGD + L2 or Adam + L1 from a dense start, lr cosine to 0
    train_ltp(start, data, ...)        LTP (soft-L0) from the same dense start
    effective_lr_growth(norms)         ||W_0||^2 / ||W_t||^2: how much faster W's direction turns
    choose_strength(table, ...)        the L1 strength a validation split picks
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from ..core.layers import PRUNABLE_TYPES
from ..core.ltp import LTP
from ..core.mask import hard_mask, soft_mask
from ..core.method import PruningMethod
from ..data import TensorSplit
from ..engine.fit import accuracy, fit

__all__ = ["bn_followed", "conv_layers", "scale_response", "relative_sparsity", "cut_below", "measure",
           "PenaltyHooks", "Run", "train_penalized", "train_ltp", "effective_lr_growth", "choose_strength"]


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not any(True for _ in m.children())]


def bn_followed(model: nn.Module) -> list[nn.Module]:
    """Every Conv/Linear whose output goes straight into a BatchNorm (the next leaf module in
    registration order, which is the data's order in a Sequential): the layers whose weight
    scale the loss cannot see, BN(aWx) = BN(Wx)."""
    leaves = _leaves(model)
    return [m for m, nxt in zip(leaves, leaves[1:]) if isinstance(m, PRUNABLE_TYPES) and isinstance(nxt, _BatchNorm)]


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{"conv1": first Conv2d, "conv2": ...} in registration order: the layers a penalty acts on
    (in a small_cnn with batch norm, exactly the BN-followed ones)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return {f"conv{i + 1}": m for i, m in enumerate(convs)}


def _trainable_weight(layer: nn.Module) -> Tensor:
    """The weight an optimizer updates: the parametrization's original under LTP, else `weight`."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


@torch.no_grad()
def scale_response(model: nn.Module, x: Tensor, y: Tensor, factors: Sequence[float] = (0.1, 10.0)) -> pd.DataFrame:
    """Rescale one conv layer at a time by each factor a and measure what moves.

    The network is run in training mode on (x, y) as one batch, so BN normalizes with that
    batch's statistics and the a cancels, up to BN's eps in sqrt(a^2 var + eps) (on copies: the
    running statistics of `model` are not touched). Without BN the a reaches the logits.
    Under LTP (a layer with LTP's soft mask) the threshold is rescaled by a^2 with the weight,
    since tau is in units of w^2 (T = T0 Var(|w|) follows by itself), and the layer's soft-L0
    and hard mask are compared as well.

    Returns one row per (layer, a): "loss change", |L_a - L| in nats (absolute: a trained
    network's loss is near 0, where a ratio would magnify rounding), "predictions unchanged"
    (share of argmaxes that stay), and under LTP "soft-L0 relative change" and "hard mask
    flipped" (share of the layer's weights whose keep/prune flips).
    """
    def run(net: nn.Module) -> tuple[float, Tensor]:
        out = net.train()(x)
        return float(F.cross_entropy(out, y)), out.argmax(1)

    base_loss, base_pred = run(copy.deepcopy(model))
    rows = []
    for name in conv_layers(model):
        for a in factors:
            scaled = copy.deepcopy(model)
            layer = conv_layers(scaled)[name]
            w = _trainable_weight(layer)
            row: dict[str, Any] = {"layer": name, "a": a}
            if parametrize.is_parametrized(layer, "weight"):
                mask = layer.parametrizations.weight[0]
                soft, hard = soft_mask(w, mask.threshold, mask.temperature(w)), hard_mask(w, mask.threshold)
                w.mul_(a)
                mask.threshold.mul_(a * a)
                soft_a, hard_a = soft_mask(w, mask.threshold, mask.temperature(w)), hard_mask(w, mask.threshold)
                row["soft-L0 relative change"] = float((soft_a.sum() - soft.sum()).abs() / soft.sum())
                row["hard mask flipped"] = float((hard_a != hard).float().mean())
            else:
                w.mul_(a)
            loss, pred = run(scaled)
            row["loss change"] = abs(loss - base_loss)
            row["predictions unchanged"] = float((pred == base_pred).float().mean())
            rows.append(row)
    return pd.DataFrame(rows)


@torch.no_grad()
def relative_sparsity(weights: Sequence[Tensor], cut: float = 0.01) -> float:
    """Scale-free sparsity: the share of all weights with |w| < cut * (their layer's largest |w|).

    In a layer that a penalty has shrunk every |w| is small, so a fixed cut would count the
    shrinking, not sparsity; this measure does not change when a layer is rescaled. Exact
    zeros (a hard-masked layer) count as below the cut; an all-zero layer counts whole."""
    near = total = 0
    for w in weights:
        a = w.detach().abs()
        near += int((a < cut * a.max()).sum()) if a.max() > 0 else a.numel()
        total += a.numel()
    return near / max(1, total)


@torch.no_grad()
def cut_below(model: nn.Module, cuts: Sequence[float], relative: bool = False) -> tuple[nn.Module, dict[str, float]]:
    """A copy of `model` with every weight of conv layer l with |w| < c_l set to zero: a
    magnitude threshold, one cut per conv layer (`relative`: c_l = cuts[l] * max |w_l|).

    Returns (the copy, {"conv1": share of its weights removed, ..., "total": over the convs}).
    For plain layers (not under LTP's parametrization)."""
    pruned = copy.deepcopy(model)
    layers = conv_layers(pruned)
    if len(cuts) != len(layers):
        raise ValueError(f"one cut per conv layer: {len(layers)} layers, {len(cuts)} cuts")
    shares, removed, total = {}, 0, 0
    for (name, layer), c in zip(layers.items(), cuts):
        w = layer.weight
        keep = w.abs() >= (c * w.abs().max() if relative else c)
        shares[name] = 1.0 - float(keep.float().mean())
        removed, total = removed + int((~keep).sum()), total + keep.numel()
        w.mul_(keep)
    shares["total"] = removed / max(1, total)
    return pruned, shares


@torch.no_grad()
def measure(model: nn.Module, data: TensorSplit, cut: float = 0.01,
            fixed_cuts: Sequence[float] | None = None) -> dict[str, float]:
    """What a run records after every epoch, on the network as its forward uses it:

    - "relative_sparsity" of the conv weights (`relative_sparsity` at `cut`);
    - "train_loss": cross-entropy over the whole training split, BN in eval mode;
    - "val_accuracy" (for choosing) and "test_accuracy" (reported only);
    - with `fixed_cuts` (one |w| cut per conv, fixed at the start of the run): "fixed_pruned",
      the share of conv weights under them, "fixed_<conv>" per layer, and
      "thresholded_accuracy", the test accuracy with those weights set to zero.
    """
    was = model.training
    model.eval()
    out = {"relative_sparsity": relative_sparsity([m.weight for m in conv_layers(model).values()], cut),
           "train_loss": float(F.cross_entropy(model(data.x_train), data.y_train)),
           "val_accuracy": accuracy(model, *data.split("val")), "test_accuracy": accuracy(model, *data.split("test"))}
    if fixed_cuts is not None:
        pruned, shares = cut_below(model, fixed_cuts)
        out["fixed_pruned"] = shares.pop("total")
        out.update({f"fixed_{k}": v for k, v in shares.items()})
        out["thresholded_accuracy"] = accuracy(pruned, *data.split("test"))
    model.train(was)
    return out


class PenaltyHooks(PruningMethod):
    """The `method` fit() calls around each step of a plain (unpruned) run: an L1 term
    l1 * sum |w| over `weights` added to the loss, then after every optimizer step the lr
    `scheduler` stepped and ||W_l|| of every weight appended to `norms`."""

    def __init__(self, model: nn.Module, weights: Mapping[str, Tensor], l1: float = 0.0,
                 scheduler: Any = None) -> None:
        self.model, self.weights, self.l1, self.scheduler = model, dict(weights), float(l1), scheduler
        self.norms: list[dict[str, float]] = [self.weight_norms()]

    @torch.no_grad()
    def weight_norms(self) -> dict[str, float]:
        return {name: float(w.norm()) for name, w in self.weights.items()}

    def regularizer(self) -> Tensor:
        if not self.l1:
            return super().regularizer()
        return self.l1 * sum(w.abs().sum() for w in self.weights.values())

    def after_step(self, step: int | None = None) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        self.norms.append(self.weight_norms())


@dataclass
class Run:
    """A training run from a dense start: the trained `model`; `history`, one row per epoch
    from epoch 0 (the start) with what `measure` records; `norms`, ||W_l|| of every conv after
    every optimizer step (plain runs); `ltp`, the LTP object (LTP runs)."""
    model: nn.Module
    history: pd.DataFrame
    norms: pd.DataFrame | None = None
    ltp: LTP | None = None


def _record(epoch: int, step: int, values: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, **values}


def train_penalized(start: nn.Module, data: TensorSplit, *, optimizer: str, lr: float, epochs: int,
                    weight_decay: float = 0.0, l1: float = 0.0, batch_size: int = 64, seed: int = 0,
                    cut: float = 0.01, fixed_cuts: Sequence[float] | None = None) -> Run:
    """Train a copy of `start` with a penalty on its conv weights only (the Linear head, biases
    and BN parameters go free): L2 as `weight_decay` (SGD: w <- w - lr (g + weight_decay w))
    and/or L1 as l1 * sum |w| added to the loss.

    `optimizer` is "sgd" (no momentum) or "adam"; the lr decays from `lr` to 0 on a cosine over
    the run. Under BN the loss gives no push back against the shrinking: L2 multiplies W by
    (1 - lr weight_decay) every step and a gradient step only adds lr^2 ||g||^2 to ||W||^2.
    `fixed_cuts` is passed on to `measure`."""
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    model = copy.deepcopy(start)
    weights = {name: m.weight for name, m in conv_layers(model).items()}
    ids = {id(w) for w in weights.values()}
    groups = [{"params": list(weights.values()), "weight_decay": weight_decay},
              {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.0) if optimizer == "sgd" else torch.optim.Adam(groups, lr=lr)
    steps = max(1, epochs * math.ceil(len(data.x_train) / batch_size))
    hooks = PenaltyHooks(model, weights, l1, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps))

    def on_eval(epoch: int, step: int) -> dict[str, float]:
        return measure(model, data, cut, fixed_cuts)

    history = [_record(0, 0, on_eval(0, 0))]
    history += fit(model, data, opt, epochs=epochs, batch_size=batch_size, seed=seed, method=hooks,
                   on_eval=on_eval, progress=False)
    return Run(model, pd.DataFrame(history), pd.DataFrame(hooks.norms).rename_axis("step"))


def train_ltp(start: nn.Module, data: TensorSplit, *, temperature: float, lambda_: float, lr: float,
              threshold_lr: float, epochs: int, batch_size: int = 64, seed: int = 0, cut: float = 0.01) -> Run:
    """LTP on a copy of `start`: every Conv/Linear weight is multiplied by its soft mask
    sigmoid((w^2 - tau_l) / T_l), T_l = `temperature` * Var(|w_l|), and `lambda_` times the soft
    fraction of weights kept is added to the loss; Adam at `lr` for the weights and
    `threshold_lr` for the thresholds tau (units of w^2), no weight decay.

    The history is measured on the deployed network (hard masks step(w^2 - tau)): its
    accuracies, "relative_sparsity" of the hard-masked conv weights, and "sparsity", the share
    of all pruned weights pruned."""
    model = copy.deepcopy(start)
    ltp = LTP(model, temperature=temperature, lambda_=lambda_)
    opt = torch.optim.Adam(ltp.param_groups(threshold_lr=threshold_lr), lr=lr)

    def on_eval(epoch: int, step: int) -> dict[str, float]:
        with ltp.hard_masks():
            return {**measure(model, data, cut), "sparsity": ltp.sparsity()["total"]}

    history = [_record(0, 0, on_eval(0, 0))]
    history += fit(model, data, opt, epochs=epochs, batch_size=batch_size, seed=seed, method=ltp,
                   on_eval=on_eval, progress=False)
    return Run(model, pd.DataFrame(history), ltp=ltp)


def effective_lr_growth(norms: pd.DataFrame) -> pd.DataFrame:
    """||W_0||^2 / ||W_t||^2 per layer (column) and step (row), from a table of norms.

    For a weight W the loss cannot scale (BN-followed), the gradient g is orthogonal to W and
    shrinks like 1 / ||W||, so a step lr g turns W's direction by about lr ||g|| / ||W||, which
    goes as lr / ||W||^2: the effective learning rate. At an equal lr schedule, this ratio is
    the factor by which the shrinking of W sped up the turning."""
    return (norms.iloc[0] / norms) ** 2


def choose_strength(table: pd.DataFrame, dense_val_accuracy: float, tolerance: float, *,
                    strength: str = "strength", sparsity: str = "relative_sparsity",
                    val_accuracy: str = "val_accuracy") -> Any:
    """The penalty strength a validation split picks: among the rows of `table` whose
    validation accuracy is within `tolerance` of the dense network's, the one with the most
    sparsity; if none is, the one with the best validation accuracy. The test split plays no
    part in the choice. Returns that row's `strength`."""
    within = table[table[val_accuracy] >= dense_val_accuracy - tolerance]
    if within.empty:
        return table.loc[table[val_accuracy].idxmax(), strength]
    return within.loc[within[sparsity].idxmax(), strength]
