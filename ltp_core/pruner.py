"""LTP: attach learned-threshold soft masks to a model, own the thresholds, finalize.

    ltp = LTP(model, temperature=1e-2, lambda_=1.0)
    opt = torch.optim.Adam(ltp.param_groups(lr=1e-3, threshold_lr=1e-4))
    loss = F.cross_entropy(model(x), y) + ltp.regularizer()   # lambda * soft-L0
    ...
    ltp.finalize()                                            # hard prune, plain model back

Each prunable layer's `weight` gets a `torch.nn.utils.parametrize` parametrization
(`ThresholdMask`) that owns that layer's threshold. Because the mask is a parametrization,
`state_dict`, `deepcopy`, DDP and `torch.compile` see an ordinary module.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .flops import count_flops
from .mask import (FUSED_MIN_WEIGHTS, SMALL_LAYER, TEMPERATURE_FLOOR, SoftPrune, fused_kernels_work,
                   fused_soft_prune, hard_mask, layer_temperature)

__all__ = ["LTP", "ThresholdMask", "PRUNABLE_TYPES", "prunable_layers", "select_layers", "zero_fractions"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every Conv1d/2d/3d and Linear of `model`, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


@torch.no_grad()
def zero_fractions(layers: dict[str, nn.Module]) -> dict[str, float]:
    """{layer name: fraction of its `weight` that is exactly 0, "total": over all the layers}."""
    out, zeros, total = {}, 0, 0
    for name, module in layers.items():
        z = int((module.weight == 0).sum())
        out[name], zeros, total = z / module.weight.numel(), zeros + z, total + module.weight.numel()
    out["total"] = zeros / total
    return out


def select_layers(model: nn.Module, exclude: Iterable[str] | str = (), exclude_first: bool = False,
                  exclude_last: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv1d/2d/3d and Linear of `model` but the excluded ones;
    `exclude` names must be prunable layers and something must remain (ValueError otherwise)."""
    candidates = prunable_layers(model)
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no Conv1d/2d/3d or Linear layer to prune")
    names = [n for n, _ in candidates]
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise ValueError(f"exclude names {unknown} are not prunable layers of the model; valid names: {names}")
    skip = set(exclude) | ({names[0]} if exclude_first else set()) | ({names[-1]} if exclude_last else set())
    layers = [(n, m) for n, m in candidates if n not in skip]
    if not layers:
        raise ValueError(f"nothing left to prune: every prunable layer {names} is excluded")
    _check_not_shared(model, layers)
    return layers


def _check_not_shared(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
    # A method gives each layer its own mask (and LTP its own threshold), and finalizing writes
    # the pruned weight in place: a module used at two places, or a weight tied to another
    # parameter, would be masked twice or prune the other user too.
    places: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), []).append(name)
    users: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(p), []).append(name)
    for name, module in layers:
        if len(places[id(module)]) > 1:
            raise ValueError(f"layer {name!r} is one module used at {len(places[id(module)])} places of the model "
                             f"({', '.join(places[id(module)])}); give each place its own module, or exclude it")
        tied = [n for n in users.get(id(module.weight), []) if n != f"{name}.weight" and n != "weight"]
        if tied:
            raise ValueError(f"layer {name!r} shares its weight with {', '.join(tied)} (tied weights): pruning it "
                             f"would prune them too; untie them, or exclude {name!r}")



_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # automatic mode: float64 stays eager


class ThresholdMask(nn.Module):
    """Parametrization weight -> weight * sigmoid((weight**2 - threshold) / T).

    Owns the layer's learned `threshold` (a 0-d Parameter, units of weight**2). T is
    recomputed from the current weights at every forward as t0 * Var(|w|) (detached).
    The soft-L0 of the last forward is kept in `last_l0` so the regularizer can reuse it
    instead of evaluating the sigmoid a second time.
    """

    def __init__(self, weight: Tensor, t0: float, exact_weight_grad: bool = False,
                 init_threshold: float = 0.0, fused: bool | None = None,
                 largest_layer: int | None = None) -> None:
        super().__init__()
        if not (fused is None or isinstance(fused, bool)):
            raise ValueError(f"fused must be None (automatic), True or False, got {fused!r}")
        self.threshold = nn.Parameter(torch.tensor(float(init_threshold), dtype=weight.dtype,
                                                   device=weight.device))
        self.t0 = float(t0)
        self.exact_weight_grad = bool(exact_weight_grad)
        # True: compiled kernels (mask.fused_soft_prune); False: eager ops; None: compiled when
        # the model is big enough for compiling to pay (its largest pruned layer, `largest_layer`
        # weights, LTP passes it; this layer's own size by default), this layer has more than
        # mask.SMALL_LAYER weights (smaller ones would compile a graph of their own, for
        # microseconds a step) and the kernels build on the weight's device.
        self.fused = None if fused is None else bool(fused)
        self.largest_layer = weight.numel() if largest_layer is None else int(largest_layer)
        self.hard = False  # True: forward applies the deployment mask step(w**2 - tau)
        self.last_l0: Tensor | None = None
        self._l0_key: tuple | None = None
        self._prepared: tuple | None = None  # (key, v) from prepare(), for the next forward

    def temperature(self, weight: Tensor) -> Tensor:
        return layer_temperature(weight, self.t0)

    def forward(self, weight: Tensor) -> Tensor:
        if self.hard:
            return weight * hard_mask(weight, self.threshold.detach())
        prepared, self._prepared = self._prepared, None  # used once at most
        if prepared is not None and prepared[0] == self._key(weight):
            return prepared[1]
        return self._masked(weight)

    def prepare(self, weight: Tensor, computed: tuple[Tensor, Tensor] | None = None) -> None:
        """Compute v for `weight` now (or take `computed`, its (v, soft-L0) computed with other
        layers'); the next forward returns it if the weight, threshold and grad mode are still
        the same (else it computes afresh). LTP calls this for every layer just before the
        model's forward (see `_PrepareMasks`)."""
        v = self._masked(weight, computed)
        self._prepared = (self._l0_key, v)

    def _masked(self, weight: Tensor, computed: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # v for `weight`; its soft-L0 is kept for the regularizer
        v, self.last_l0 = computed or self._soft_prune(weight)
        self._l0_key = self._key(weight)
        return v

    def _key(self, weight: Tensor) -> tuple:
        # Versions change on every in-place update (optimizer step, load_state_dict), so an
        # equal key means last_l0 was computed from exactly these weights and threshold.
        return (weight._version, self.threshold._version, torch.is_grad_enabled(), weight.device)

    def soft_l0(self, weight: Tensor) -> Tensor:
        """sum(m) for `weight` (the layer's original weight): reused from the last forward
        when nothing changed since, else computed afresh."""
        if self.last_l0 is not None and self._l0_key == self._key(weight) and not self.hard:
            return self.last_l0
        return self._soft_prune(weight)[1]

    def uses_fused(self, weight: Tensor) -> bool:
        """Whether the forward for `weight` runs the compiled kernels (see `fused`)."""
        # Inside a torch.compile'd model the eager ops are traced and fused with the rest;
        # torch.jit.trace cannot trace into compiled code, and compiled code does not run under
        # a user's TorchDispatchMode (torch.utils.flop_counter's FlopCounterMode, for one).
        if (self.fused is False or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or is_in_torch_dispatch_mode(include_infra_modes=False)):
            return False
        return self.fused or (self.largest_layer >= FUSED_MIN_WEIGHTS and weight.numel() > SMALL_LAYER
                              and weight.dtype in _FUSED_DTYPES and fused_kernels_work(weight.device.type))

    def _soft_prune(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        if self.uses_fused(weight):
            vs, l0s = fused_soft_prune([weight], [self.threshold], [self.t0], [self.exact_weight_grad])
            return vs[0], l0s[0]
        return SoftPrune.apply(weight, self.threshold, self.temperature(weight), self.exact_weight_grad)

    def __getstate__(self) -> dict:
        # The cached L0 carries an autograd graph: never copy or pickle it (deepcopy of a
        # non-leaf tensor fails, and a copy must not share the original's graph anyway).
        state = self.__dict__.copy()
        state["last_l0"], state["_l0_key"], state["_prepared"] = None, None, None
        return state

    def extra_repr(self) -> str:
        return f"t0={self.t0}, exact_weight_grad={self.exact_weight_grad}, fused={self.fused}, hard={self.hard}"


class _PrepareMasks:
    """Forward pre-hook on the pruned model: computes every layer's soft-pruned weight, back to
    back, before the forward starts; each layer's forward then returns its prepared v.

    Same values and gradients as computing each mask when its layer runs, but faster: the
    compiled layers go to the kernels in groups of mask.FUSED_GROUP, a few calls instead of one
    per layer, and on a CPU the eager ones run while their code is warm (between two layers a
    convolution streams megabytes through the caches, so the mask's Python, dispatch and
    kernel-launch code would start cold at every layer). A module-level
    class, not a bound method of LTP, so a deepcopy of the model gets a hook on its own layers.
    All prepared weights are alive at once until their layers run (under autocast, float32
    copies a layer would otherwise drop as soon as it has cast them).
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers

    def __call__(self, module: nn.Module, args: tuple) -> None:
        # A compiled or traced model fuses / records the mask ops in place, layer by layer.
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return
        fused = []
        for layer in self.layers:
            if not parametrize.is_parametrized(layer, "weight"):
                continue
            mask, weight = layer.parametrizations.weight[0], layer.parametrizations.weight.original
            if isinstance(mask, ThresholdMask) and not mask.hard:
                if mask.uses_fused(weight):
                    fused.append((mask, weight))
                else:
                    mask.prepare(weight)
        if fused:
            vs, l0s = fused_soft_prune([w for _, w in fused], [m.threshold for m, _ in fused],
                                       [m.t0 for m, _ in fused], [m.exact_weight_grad for m, _ in fused])
            for (mask, weight), v, l0 in zip(fused, vs, l0s):
                mask.prepare(weight, (v, l0))


class LTP:
    """Learned Threshold Pruning of every Conv1d/2d/3d and Linear weight of `model`.

    Args:
        model: the network, pruned in place; its layers get a `ThresholdMask` each.
        temperature: T0 > 0, dimensionless; layer l uses T_l = T0 * Var(|w_l|).
        lambda_: >= 0, the weight of the soft-L0 term in `regularizer()`.
        exclude: module names (as in `model.named_modules()`) left dense.
        exclude_first, exclude_last: leave the first / last prunable layer dense.
        exact_weight_grad: False (default) uses the paper's dv/dw ~= m; True the exact gradient.
        fused: how the mask's elementwise work runs. None (default): as torch.compile'd
            kernels (`mask.fused_soft_prune`: same math, about half the passes over the weights,
            eight layers per call) for every layer of more than `mask.SMALL_LAYER` (4096)
            weights, when the model has a layer of at least `mask.FUSED_MIN_WEIGHTS` (65536)
            weights and the kernels build on the device (checked once per process; else a
            warning and eager); smaller layers, and every layer of a model of only small ones,
            run eager ops (`mask.SoftPrune`), as compiling would not pay. Compiling costs a
            few seconds once per process (cached on disk). True: compiled for every layer (a
            failure to compile raises). False: eager everywhere. Inside a torch.compile'd model
            every layer runs the eager ops, which that compile fuses.
        init_threshold: tau at the start, in units of w**2 (0 keeps every weight).
        normalize: True (default) divides the soft-L0 by the number of prunable weights, so
            soft_l0() is the soft fraction of weights kept, in [0, 1], and lambda_ is O(1)
            and comparable across networks. False gives the raw soft count.
        layer_weights: optional {layer name: factor} multiplying each layer's soft-L0 (the
            "pruning preference"; e.g. a layer's FLOP share). Missing layers weigh 1.
        target_sparsity: a fraction in [0, 1), or None (default: lambda_ stays fixed). With a
            target, training drives the hard sparsity to it and holds it there, with no lambda_
            sweep: `after_step()` (called after every optimizer step by `fit` and `ltp-train`;
            call it yourself in a hand-written loop) projects the thresholds onto the sparsity
            the run must have now, and updates lambda_ as the Lagrange multiplier of that
            constraint. See `after_step` for the rule.
        target_pace: in (0, 1]; the slowest approach allowed: the required sparsity closes this
            fraction of its remaining gap to the target every step (about ln(gap / 0.02) /
            target_pace steps to come within 2 points; 0.02 -> ~190 steps from dense to 0.9).
            The learned thresholds may get there sooner; 1 prunes to the target at once.
        target_lambda_lr: >= 0; the dual-ascent rate of lambda_ (lambda_ per unit of sparsity
            the projection had to add, per step). 0 keeps lambda_ at its starting value.
    """

    def __init__(self, model: nn.Module, *, temperature: float = 1e-2, lambda_: float = 1.0,
                 exclude: Iterable[str] = (), exclude_first: bool = False, exclude_last: bool = False,
                 exact_weight_grad: bool = False, init_threshold: float = 0.0, normalize: bool = True,
                 fused: bool | None = None,
                 layer_weights: dict[str, float] | None = None, target_sparsity: float | None = None,
                 target_pace: float = 0.02, target_lambda_lr: float = 1.0) -> None:
        def number(value) -> bool:  # a finite real number (True is not 1 here)
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not (number(temperature) and temperature > 0):
            raise ValueError(f"temperature (T0) must be a finite number > 0, got {temperature!r}")
        if not (number(lambda_) and lambda_ >= 0):
            raise ValueError(f"lambda_ must be a finite number >= 0, got {lambda_!r}")
        if target_sparsity is not None and not (number(target_sparsity) and 0.0 <= target_sparsity < 1.0):
            raise ValueError(f"target_sparsity must be a fraction in [0, 1), got {target_sparsity!r}")
        if not (number(target_pace) and 0.0 < target_pace <= 1.0):
            raise ValueError(f"target_pace must be a number in (0, 1], got {target_pace!r}")
        if not (number(target_lambda_lr) and target_lambda_lr >= 0):
            raise ValueError(f"target_lambda_lr must be a finite number >= 0, got {target_lambda_lr!r}")
        if not (fused is None or isinstance(fused, bool)):
            raise ValueError(f"fused must be None (automatic), True or False, got {fused!r}")
        for flag, value in (("exclude_first", exclude_first), ("exclude_last", exclude_last),
                            ("exact_weight_grad", exact_weight_grad), ("normalize", normalize)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        if not (number(init_threshold) and init_threshold >= 0):
            raise ValueError(f"init_threshold must be a finite number >= 0 (units of w**2), got {init_threshold!r}")
        if exclude is None:
            exclude = ()
        layers = select_layers(model, exclude, exclude_first, exclude_last)
        if layer_weights:
            bad = sorted(set(layer_weights) - {n for n, _ in layers})
            if bad:
                raise ValueError(f"layer_weights names {bad} are not pruned layers; valid: {[n for n, _ in layers]}")
            bad = {n: w for n, w in layer_weights.items() if not (number(w) and w >= 0)}
            if bad:
                raise ValueError(f"layer_weights must be finite numbers >= 0, got {bad}")

        self.model = model
        self.lambda_ = float(lambda_)
        self.t0 = float(temperature)
        self.normalize = bool(normalize)
        self.target_sparsity = None if target_sparsity is None else float(target_sparsity)
        self.target_pace = float(target_pace)
        self.target_lambda_lr = float(target_lambda_lr)
        self._required: float | None = None  # the sparsity the run must have now (target mode)
        self._calls_without_step = 0
        self.layer_weights = dict(layer_weights or {})
        self.layers: dict[str, nn.Module] = {}
        largest = max((m.weight.numel() for _, m in layers), default=0)
        for name, module in layers:
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"layer {name!r} already has a weight parametrization; "
                                 "LTP attaches to plain Conv/Linear layers only")
            mask = ThresholdMask(module.weight, temperature, exact_weight_grad, init_threshold, fused,
                                 largest_layer=largest)
            parametrize.register_parametrization(module, "weight", mask)
            self.layers[name] = module
        self.num_prunable = sum(self._original(m).numel() for m in self.layers.values())
        self._prepare_hook = model.register_forward_pre_hook(_PrepareMasks(list(self.layers.values())))
        self.finalized = False
        flat = [n for n, t in self.temperatures.items() if t <= TEMPERATURE_FLOOR]
        if flat:
            warnings.warn(f"LTP: layers {flat} have weights all of one magnitude (zero-initialized?), so T is at "
                          "its floor: their thresholds get no gradient until the weights spread, and then one as "
                          "large as 1/T while the weights are still small, which can prune such a layer whole in "
                          "a step; exclude them (exclude=..., --ltp-exclude) unless they start from trained "
                          "weights", RuntimeWarning, stacklevel=2)
        self._initial_sparsity = self.sparsity()["total"] if target_sparsity is not None else 0.0

    # -- access ----------------------------------------------------------------------------
    @staticmethod
    def _original(module: nn.Module) -> Tensor:
        return module.parametrizations.weight.original

    @staticmethod
    def _mask(module: nn.Module) -> ThresholdMask:
        return module.parametrizations.weight[0]

    def _check_live(self) -> None:
        if self.finalized:
            raise RuntimeError("this LTP was finalized: the model is a plain hard-pruned network now")

    @property
    def thresholds(self) -> dict[str, nn.Parameter]:
        """{layer name: tau_l}, 0-d Parameters in units of w**2."""
        self._check_live()
        return {n: self._mask(m).threshold for n, m in self.layers.items()}

    @property
    def temperatures(self) -> dict[str, float]:
        """{layer name: T_l = T0 * Var(|w_l|)} in effect for the current weights (units of w**2)."""
        self._check_live()
        return {n: float(self._mask(m).temperature(self._original(m))) for n, m in self.layers.items()}

    def weights(self) -> dict[str, Tensor]:
        """{layer name: the layer's trainable (unmasked) weight w}."""
        self._check_live()
        return {n: self._original(m) for n, m in self.layers.items()}

    # -- the regularizer -------------------------------------------------------------------
    def soft_l0(self) -> Tensor:
        """Soft count of surviving weights, sum over layers of layer_weight_l * sum_k m_k.

        With `normalize=True` it is divided by the number of prunable weights (a soft
        fraction kept, in [0, 1]). A 0-d float tensor on the model's device, differentiable
        w.r.t. the thresholds (and w.r.t. the weights when exact_weight_grad=True). Reuses
        the masks of the last forward pass when the weights have not changed since.
        """
        self._check_live()
        total = None
        for name, module in self.layers.items():
            l0 = self._mask(module).soft_l0(self._original(module)).float()
            if name in self.layer_weights:
                l0 = l0 * self.layer_weights[name]
            total = l0 if total is None else total + l0
        return total / self.num_prunable if self.normalize else total

    def regularizer(self) -> Tensor:
        """lambda_ * soft_l0(): the term to add to the task loss.

        With `target_sparsity` set, lambda_ is updated by `after_step()`, which must run after
        every optimizer step; a warning says so when training calls come without it.
        """
        if self.target_sparsity is not None and torch.is_grad_enabled():
            self._calls_without_step += 1
            if self._calls_without_step == self._WARN_AFTER:
                warnings.warn(f"LTP(target_sparsity={self.target_sparsity}): regularizer() was called "
                              f"{self._WARN_AFTER} times without after_step(); call ltp.after_step() after "
                              "every optimizer step, or the sparsity is not controlled", RuntimeWarning,
                              stacklevel=2)
        return self.lambda_ * self.soft_l0()

    # -- target sparsity -------------------------------------------------------------------
    _WARN_AFTER = 50
    _LAMBDA_STEP_CLIP = 0.05  # most sparsity error one dual-ascent step counts (anti-windup)
    # A drift this small (0.02 points) is left alone: it spares the per-layer selection (kthvalue)
    # on most steps once the target is held, at no visible cost in accuracy of the hold.
    _PROJECT_DEADBAND = 2e-4

    @torch.no_grad()
    def after_step(self, step: int | None = None) -> None:
        """Per-step hook (call after every optimizer step): enforces `target_sparsity`.

        A no-op without a target. With target s, let q be the hard sparsity the optimizer step
        left and r the required sparsity of the previous step (the sparsity at construction,
        at first). Then:

        1. r moves towards s by `target_pace` (r <- r + pace * (s - r)), and the sparsity to
           hold now is q clipped to the interval between r and s: the learned thresholds are
           free while they lie between the pace's minimum progress and the target, and are
           held to that interval otherwise (no overshoot past s; no lagging behind r).
        2. Projection: when q is outside the interval (by more than 0.02 points, so a held
           target does not cost a selection per layer every step), every layer's threshold is
           set (to the midpoint between two consecutive w**2) so that the hard sparsity is the
           clipped value, the layers keeping their proportions: to prune more, every layer
           keeps the same fraction of its surviving weights; to prune less, every layer
           restores the same fraction of its pruned ones. How the sparsity is spread over the layers stays
           learned; only its total is imposed. This is what makes the approach and the hold
           independent of the optimizer and its learning rates (with Adam, tau moves at about
           threshold_lr per step whatever lambda_ is, so lambda_ alone cannot set the pace).
        3. Dual ascent: lambda_ <- max(0, lambda_ + target_lambda_lr * e), e = the sparsity the
           projection added (negative: removed), clipped to +-0.05. lambda_ is the multiplier
           of the constraint: it grows while the optimizer prunes too little on its own and
           shrinks while it prunes too much, so the projection has less and less to do.

        `step` (optimizer steps done) is accepted for the method protocol and unused. Under
        DistributedDataParallel every process computes the same result from the same weights.
        """
        self._check_live()
        self._calls_without_step = 0
        if self.target_sparsity is None:
            return
        modules = list(self.layers.values())
        weights = [self._original(m) for m in modules]
        taus = [self._mask(m).threshold for m in modules]
        kept = torch.stack([hard_mask(w, t).sum() for w, t in zip(weights, taus)]).tolist()
        total, target = self.num_prunable, self.target_sparsity
        now = 1.0 - sum(kept) / total
        required = self._initial_sparsity if self._required is None else self._required
        required += self.target_pace * (target - required)
        if abs(target - required) < 0.5 / total:
            required = target
        low, high = min(required, target), max(required, target)
        hold = min(high, max(low, now))
        self._required = hold
        error = hold - now
        step_error = max(-self._LAMBDA_STEP_CLIP, min(self._LAMBDA_STEP_CLIP, error))
        self.lambda_ = max(0.0, self.lambda_ + self.target_lambda_lr * step_error)
        if abs(error) > self._PROJECT_DEADBAND:
            self._project(weights, taus, kept, hold)

    def _project(self, weights: list[Tensor], taus: list[Tensor], kept: list[int], sparsity: float) -> None:
        """Set the thresholds so that the total hard sparsity is `sparsity`, scaling every
        layer's surviving (to prune more) or pruned (to prune less) count by one factor."""
        total = self.num_prunable
        goal_kept = round((1.0 - sparsity) * total)
        now_kept = sum(kept)
        if goal_kept < now_kept:
            ratio = goal_kept / now_kept
            new = [max(min(k, 1), round(k * ratio)) for k in kept]  # a layer keeps >= 1 weight
        else:
            pruned = [w.numel() - k for w, k in zip(weights, kept)]
            ratio = (total - goal_kept) / max(1, sum(pruned))
            new = [w.numel() - round(p * ratio) for w, p in zip(weights, pruned)]
        for w, tau, k, k_new in zip(weights, taus, kept, new):
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

    def state_dict(self) -> dict[str, float | None]:
        """The controller's state (lambda_ and the required sparsity), for checkpoints; the
        thresholds themselves are in the model's state_dict."""
        return {"lambda_": float(self.lambda_), "required_sparsity": self._required}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        """Restore what `state_dict()` returned (a resumed run continues its control)."""
        missing = {"lambda_", "required_sparsity"} - set(state)
        if missing:
            raise ValueError(f"LTP state lacks {sorted(missing)}; expected the dict LTP.state_dict() returns")
        self.lambda_ = float(state["lambda_"])
        required = state["required_sparsity"]
        self._required = None if required is None else float(required)

    # -- measurements ----------------------------------------------------------------------
    @torch.no_grad()
    def sparsity(self) -> dict[str, float]:
        """{layer name: fraction of weights with w**2 <= tau, "total": over all pruned layers}."""
        if self.finalized:
            return zero_fractions(self.layers)
        out, pruned = {}, 0
        for n, m in self.layers.items():
            w = self._original(m)
            p = int((~hard_mask(w, self._mask(m).threshold)).sum())
            out[n], pruned = p / w.numel(), pruned + p
        out["total"] = pruned / self.num_prunable
        return out

    def flops(self, example_input: Tensor) -> int:
        """Effective FLOPs of one forward of `example_input` (e.g. one sample): the dense count
        by `torch.utils.flop_counter`, each pruned layer's share scaled by its density."""
        layer_sparsity = self.sparsity()
        layer_sparsity.pop("total")
        return count_flops(self.model, example_input, {n: 1.0 - s for n, s in layer_sparsity.items()})

    def compression(self) -> float:
        """Prunable weights / surviving weights (1 / (1 - sparsity)); inf when all are pruned."""
        kept = 1.0 - self.sparsity()["total"]
        return float("inf") if kept <= 0 else 1.0 / kept

    @torch.no_grad()
    def band_fraction(self, width: float = 4.0) -> float:
        """Fraction of prunable weights inside the transition band |w**2 - tau_l| < width * T_l:
        the only weights that move tau. Near 0 means the thresholds have stalled."""
        self._check_live()
        inside = 0
        for m in self.layers.values():
            w, mask = self._original(m), self._mask(m)
            inside += int(((w * w - mask.threshold).abs() < width * mask.temperature(w)).sum())
        return inside / self.num_prunable

    # -- optimizer -------------------------------------------------------------------------
    def param_groups(self, weight_decay: float = 0.0, threshold_lr: float | None = None,
                     **group_options) -> list[dict]:
        """Optimizer parameter groups: every model parameter but the thresholds (with
        `weight_decay` and `group_options`), then the thresholds in a group of their own with
        weight decay 0 and, if given, learning rate `threshold_lr` (units of w**2 per unit of
        gradient step, so usually much smaller than the weights' lr)."""
        self._check_live()
        for name, value in (("weight_decay", weight_decay), ("threshold_lr", threshold_lr)):
            # a negative rate passes Adam's own checks and would move the thresholds the wrong way
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        tids = {id(t) for t in self.thresholds.values()}
        rest = [p for p in self.model.parameters() if id(p) not in tids]
        thresh_group = {"params": list(self.thresholds.values()), "weight_decay": 0.0, **group_options}
        if threshold_lr is not None:
            thresh_group["lr"] = threshold_lr
        return [{"params": rest, "weight_decay": weight_decay, **group_options}, thresh_group]

    # -- hard pruning ----------------------------------------------------------------------
    @contextlib.contextmanager
    def hard_masks(self) -> Iterator[None]:
        """Within the block the forward uses the deployment mask step(w**2 - tau): evaluate the
        hard-pruned network without touching the weights."""
        self._check_live()
        masks = [self._mask(m) for m in self.layers.values()]
        previous = [mask.hard for mask in masks]
        for mask in masks:
            mask.hard = True
        try:
            yield
        finally:
            for mask, was in zip(masks, previous):
                mask.hard = was

    @torch.no_grad()
    def hard_state_dict(self) -> dict[str, Tensor]:
        """The state_dict `finalize()` would give (plain keys, pruned weights exactly 0),
        without changing the model. Tensors are copies, in the model's own key order."""
        self._check_live()
        hard, thresholds = {}, set()  # LTP's own keys only: an excluded layer may have a parametrization too
        for name, m in self.layers.items():
            prefix = f"{name}." if name else ""
            w = self._original(m)
            hard[f"{prefix}parametrizations.weight.original"] = (f"{prefix}weight",
                                                                  w * hard_mask(w, self._mask(m).threshold))
            thresholds.add(f"{prefix}parametrizations.weight.0.threshold")
        plain = {}
        for key, value in self.model.state_dict().items():
            if key in thresholds:
                continue
            if key in hard:
                key, value = hard[key]
            plain[key] = value.clone()
        return plain

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """Hard prune in place: w <- w * step(w**2 - tau), remove the parametrizations and
        thresholds. The model's state_dict then loads strictly into the plain architecture.
        Returns the model. The LTP object only answers `sparsity()` afterwards."""
        self._check_live()
        for name, m in self.layers.items():
            w = self._original(m)
            keep = hard_mask(w, self._mask(m).threshold)
            # parametrize swaps the module's class for a generated subclass that a deepcopy of
            # the model shares; removing the parametrization deletes `weight` from that class,
            # which would break every copy. Give this module a class of its own first.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__,
                               {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")})
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            m.weight.mul_(keep)
        self._prepare_hook.remove()
        self.finalized = True
        return self.model

    def __repr__(self) -> str:
        state = "finalized" if self.finalized else f"T0={self.t0}, lambda_={self.lambda_}"
        return f"LTP({len(self.layers)} layers, {self.num_prunable} weights, {state})"
