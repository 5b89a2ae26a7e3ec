"""LTP: learned-threshold soft masks on a model's layers, the soft-L0 term, and finalize.

    ltp = LTP(model, temperature=1e-2, lambda_=1.0)
    opt = torch.optim.Adam(ltp.param_groups(lr=1e-3, threshold_lr=1e-4))
    loss = F.cross_entropy(model(x), y) + ltp.regularizer()   # lambda * soft-L0
    ...
    ltp.finalize()                                            # hard prune, plain model back

Each pruned layer's `weight` gets a `torch.nn.utils.parametrize` parametrization,
`ThresholdMask`, that owns that layer's threshold: `state_dict`, `deepcopy`, DDP and
`torch.compile` see an ordinary module.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..checks import check_flag, check_fraction, check_number
from ..kernels import fused as kernels
from .layers import PRUNABLE_TYPES, prunable_layers, select_layers, zero_fractions
from .mask import TEMPERATURE_FLOOR, hard_mask, layer_temperature, soft_prune_t0
from .method import ReparamMethod, split_groups
from .target import TargetSparsity

__all__ = ["LTP", "ThresholdMask", "PRUNABLE_TYPES", "prunable_layers", "select_layers", "zero_fractions"]

SoftPruneFn = Callable[[Tensor, Tensor, float, bool], "tuple[Tensor, Tensor]"]


class ThresholdMask(nn.Module):
    """Parametrization weight -> weight * sigmoid((weight**2 - threshold) / T), T = t0 * Var(|w|).

    Owns the layer's learned `threshold` (a 0-d Parameter, units of weight**2). In training
    the forward is the soft mask; with `hard` set it is the deployment mask step(w**2 - tau).
    `soft_prune` computes (v, soft-L0) together (`ltp_core.core.mask.soft_prune_t0`, or the
    same math compiled, `ltp_core.kernels.fused.soft_prune`); the soft-L0 of the last forward
    is kept in `l0` for the regularizer, with the versions of the weight and threshold it came
    from in `l0_of` (an optimizer step changes them).
    """

    def __init__(self, weight: Tensor, t0: float, exact_weight_grad: bool = False, init_threshold: float = 0.0,
                 soft_prune: SoftPruneFn = soft_prune_t0) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold), dtype=weight.dtype, device=weight.device))
        self.t0, self.exact_weight_grad, self.soft_prune = float(t0), bool(exact_weight_grad), soft_prune
        self.hard = False
        self.l0: Tensor | None = None
        self.l0_of: tuple | None = None

    def forward(self, weight: Tensor) -> Tensor:
        if self.hard:
            return weight * hard_mask(weight, self.threshold.detach())
        v, l0 = self.soft_prune(weight, self.threshold, self.t0, self.exact_weight_grad)
        self.l0, self.l0_of = l0, self._versions(weight)
        return v

    def soft_l0(self, weight: Tensor) -> Tensor:
        """sum(m) for `weight` (the layer's trainable weight): the last forward's, if nothing
        changed since, else computed afresh."""
        if self.l0 is not None and self.l0_of == self._versions(weight):
            return self.l0
        return self.soft_prune(weight, self.threshold, self.t0, self.exact_weight_grad)[1]

    def _versions(self, weight: Tensor) -> tuple:
        return weight._version, self.threshold._version, torch.is_grad_enabled(), weight.device

    def temperature(self, weight: Tensor) -> Tensor:
        return layer_temperature(weight, self.t0)

    @property
    def compiled(self) -> bool:
        """Whether the soft mask runs as compiled kernels (`ltp_core.kernels.fused`)."""
        return self.soft_prune is kernels.soft_prune

    def __getstate__(self) -> dict:
        # The kept L0 carries an autograd graph: never copy or pickle it.
        return {**self.__dict__, "l0": None, "l0_of": None}

    def extra_repr(self) -> str:
        return f"t0={self.t0}, exact_weight_grad={self.exact_weight_grad}, compiled={self.compiled}, hard={self.hard}"


class LTP(ReparamMethod):
    """Learned Threshold Pruning of every Conv1d/2d/3d and Linear weight of `model`.

    Args:
        model: the network, pruned in place; its layers get a `ThresholdMask` each.
        temperature: T0 > 0, dimensionless; layer l uses T_l = T0 * Var(|w_l|).
        lambda_: >= 0, the weight of the soft-L0 term in `regularizer()`.
        exclude: module names (as in `model.named_modules()`) left dense.
        exclude_first, exclude_last: leave the first / last prunable layer dense.
        exact_weight_grad: False (default) uses the paper's dv/dw ~= m; True the exact gradient.
        init_threshold: tau at the start, in units of w**2 (0 keeps every weight).
        normalize: True (default) divides the soft-L0 by the number of prunable weights, so
            soft_l0() is the soft fraction of weights kept, in [0, 1], and lambda_ is O(1) and
            comparable across networks. False gives the raw soft count.
        layer_weights: optional {layer name: factor} multiplying each layer's soft-L0 (the
            "pruning preference"; e.g. a layer's FLOP share). Missing layers weigh 1.
        fused: how the mask runs. None (default): as compiled kernels (`ltp_core.kernels.fused`:
            the same math in about half the passes over the weights) for every layer of more
            than 4096 weights, when the model has a layer of at least 65536 and the kernels
            build on the device (checked once per process; else a warning and eager). Compiling
            costs seconds once per process (cached on disk). True: compiled for every layer (a
            compiler that does not work raises). False: eager everywhere.
        target_sparsity: a fraction in [0, 1), or None (default: lambda_ stays fixed). With a
            target, `after_step()` (called after every optimizer step by `fit` and
            `ltp-train`; call it yourself in a hand-written loop) drives the hard sparsity to
            it and holds it there, adapting lambda_ (see `TargetSparsity`).
        target_pace: in (0, 1]; the slowest approach allowed: the required sparsity closes this
            fraction of its remaining gap to the target every step (about ln(gap / 0.02) /
            target_pace steps to come within 2 points; 0.02 -> ~190 steps from dense to 0.9).
        target_lambda_lr: >= 0; the dual-ascent rate of lambda_ (0 keeps it fixed).
    """

    _WARN_AFTER = 50  # regularizer() calls without after_step() before a target run warns

    def __init__(self, model: nn.Module, *, temperature: float = 1e-2, lambda_: float = 1.0,
                 exclude: Iterable[str] = (), exclude_first: bool = False, exclude_last: bool = False,
                 exact_weight_grad: bool = False, init_threshold: float = 0.0, normalize: bool = True,
                 fused: bool | None = None, layer_weights: dict[str, float] | None = None,
                 target_sparsity: float | None = None, target_pace: float = 0.02,
                 target_lambda_lr: float = 1.0) -> None:
        self.t0 = check_number("temperature (T0)", temperature, positive=True)
        self.lambda_ = check_number("lambda_", lambda_)
        init_threshold = check_number("init_threshold (units of w**2)", init_threshold)
        if target_sparsity is not None:
            target_sparsity = check_fraction("target_sparsity", target_sparsity)
        pace = check_fraction("target_pace", target_pace, allow_one=True, allow_zero=False)
        lambda_lr = check_number("target_lambda_lr", target_lambda_lr)
        if not (fused is None or isinstance(fused, bool)):
            raise ValueError(f"fused must be None (automatic), True or False, got {fused!r}")
        for flag, value in (("exclude_first", exclude_first), ("exclude_last", exclude_last),
                            ("exact_weight_grad", exact_weight_grad), ("normalize", normalize)):
            check_flag(flag, value)
        super().__init__(model, exclude, exclude_first, exclude_last)
        self.normalize = normalize
        self.layer_weights = dict(layer_weights or {})
        bad = sorted(set(self.layer_weights) - set(self.layers))
        if bad:
            raise ValueError(f"layer_weights names {bad} are not pruned layers; valid: {list(self.layers)}")
        bad = {n: w for n, w in self.layer_weights.items() if not (isinstance(w, (int, float)) and w >= 0)}
        if bad:
            raise ValueError(f"layer_weights must be finite numbers >= 0, got {bad}")

        largest = max(m.weight.numel() for m in self.layers.values())
        if fused:  # asked for explicitly: a compiler that does not work raises here
            kernels.probe(next(iter(self.layers.values())).weight.device.type)

        def soft_prune_for(weight: Tensor) -> SoftPruneFn:  # the one seam: eager or compiled, chosen once
            compiled = fused if fused is not None else kernels.worth_compiling(weight, largest)
            return kernels.soft_prune if compiled else soft_prune_t0

        self._attach(lambda name, m: ThresholdMask(m.weight, self.t0, exact_weight_grad, init_threshold,
                                                   soft_prune_for(m.weight)))
        self._calls_without_step = 0
        flat = [n for n, t in self.temperatures.items() if t <= TEMPERATURE_FLOOR]
        if flat:
            warnings.warn(f"LTP: layers {flat} have weights all of one magnitude (zero-initialized?), so T is at "
                          "its floor: their thresholds get no gradient until the weights spread, and then one as "
                          "large as 1/T while the weights are still small, which can prune such a layer whole in "
                          "a step; exclude them (exclude=..., --ltp-exclude) unless they start from trained "
                          "weights", RuntimeWarning, stacklevel=2)
        self._target_options = (pace, lambda_lr)
        self.target = None if target_sparsity is None else TargetSparsity(
            target_sparsity, pace, lambda_lr, initial=self.sparsity()["total"])

    # -- access ----------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, ThresholdMask]:
        """{layer name: its ThresholdMask}."""
        self._check_live()
        return {n: self._param(n) for n in self.layers}

    @property
    def thresholds(self) -> dict[str, nn.Parameter]:
        """{layer name: tau_l}, 0-d Parameters in units of w**2."""
        return {n: m.threshold for n, m in self.masks.items()}

    @property
    def temperatures(self) -> dict[str, float]:
        """{layer name: T_l = T0 * Var(|w_l|)} for the current weights (units of w**2)."""
        return {n: float(m.temperature(self._original(n))) for n, m in self.masks.items()}

    @property
    def target_sparsity(self) -> float | None:
        """The hard sparsity `after_step()` drives to (None: lambda_ stays fixed). Settable mid-run:
        the controller then heads for the new target from where it is, at the same pace."""
        return None if self.target is None else self.target.target

    @target_sparsity.setter
    def target_sparsity(self, value: float | None) -> None:
        self._check_live()
        if value is None:
            self.target = None
        elif self.target is not None:
            self.target.target = check_fraction("target_sparsity", value)
        else:
            self.target = TargetSparsity(check_fraction("target_sparsity", value), *self._target_options,
                                         initial=self.sparsity()["total"])

    # -- the regularizer -------------------------------------------------------------------
    def soft_l0(self) -> Tensor:
        """Soft count of surviving weights, sum over layers of layer_weight_l * sum_k m_k (divided
        by the number of prunable weights with `normalize`): a 0-d float tensor, differentiable
        in the thresholds (and in the weights with exact_weight_grad). Reuses the masks of the
        last forward pass when the weights have not changed since."""
        total = None
        for name, mask in self.masks.items():
            l0 = mask.soft_l0(self._original(name)).float() * self.layer_weights.get(name, 1.0)
            total = l0 if total is None else total + l0
        return total / self.num_prunable if self.normalize else total

    def regularizer(self) -> Tensor:
        """lambda_ * soft_l0(): the term to add to the task loss."""
        if self.target is not None and torch.is_grad_enabled():
            self._calls_without_step += 1
            if self._calls_without_step == self._WARN_AFTER:
                warnings.warn(f"LTP(target_sparsity={self.target.target}): regularizer() was called "
                              f"{self._WARN_AFTER} times without after_step(); call ltp.after_step() after "
                              "every optimizer step, or the sparsity is not controlled", RuntimeWarning,
                              stacklevel=2)
        return self.lambda_ * self.soft_l0()

    def after_step(self, step: int | None = None) -> None:
        """Per-step hook: with `target_sparsity`, one step of the controller (`TargetSparsity`);
        a no-op without. `step` is accepted for the method protocol and unused."""
        self._check_live()
        self._calls_without_step = 0
        if self.target is not None:
            names = list(self.layers)
            self.lambda_ = self.target.step([self._original(n) for n in names],
                                            [self._param(n).threshold for n in names], self.lambda_)

    def state_dict(self) -> dict[str, float | None]:
        """lambda_ and the controller's state, for checkpoints (the thresholds are in the model's)."""
        return {"lambda_": float(self.lambda_),
                "required_sparsity": None if self.target is None else self.target.required}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        missing = {"lambda_", "required_sparsity"} - set(state)
        if missing:
            raise ValueError(f"LTP state lacks {sorted(missing)}; expected the dict LTP.state_dict() returns")
        self.lambda_ = float(state["lambda_"])
        if self.target is not None:
            self.target.load_state_dict(state)

    # -- measurements and optimizer --------------------------------------------------------
    @torch.no_grad()
    def band_fraction(self, width: float = 4.0) -> float:
        """Fraction of prunable weights inside the transition band |w**2 - tau_l| < width * T_l:
        the only weights that move tau. Near 0 means the thresholds have stalled."""
        inside = 0
        for name, mask in self.masks.items():
            w = self._original(name)
            inside += int(((w * w - mask.threshold).abs() < width * mask.temperature(w)).sum())
        return inside / self.num_prunable

    def param_groups(self, weight_decay: float = 0.0, threshold_lr: float | None = None,
                     **group_options) -> list[dict]:
        """Optimizer parameter groups: every model parameter but the thresholds (with
        `weight_decay` and `group_options`), then the thresholds in a group of their own with
        weight decay 0 and, if given, learning rate `threshold_lr` (units of w**2 per unit of
        gradient step, so usually much smaller than the weights' lr)."""
        check_number("weight_decay", weight_decay)
        own = {"weight_decay": 0.0}
        if threshold_lr is not None:
            own["lr"] = check_number("threshold_lr", threshold_lr)
        return split_groups(self.model, list(self.thresholds.values()), weight_decay, own, **group_options)

    def __repr__(self) -> str:
        state = "finalized" if self.finalized else f"T0={self.t0}, lambda_={self.lambda_}"
        return f"LTP({len(self.layers)} layers, {self.num_prunable} weights, {state})"

