"""The soft mask of Learned Threshold Pruning and the autograd of v = w * m.

For one layer with weights w (any shape), a learned scalar threshold tau (units of w**2)
and a temperature T > 0 (also units of w**2):

    m = sigmoid((w**2 - tau) / T)        soft mask, same shape as w, values in (0, 1)
    v = w * m                            the soft-pruned weight the forward pass uses
    L0 = sum(m)                          soft count of surviving weights (a scalar)

`SoftPrune` computes v and L0 in one pass and keeps m for the backward pass, so a training
step evaluates the sigmoid once per layer, not once for the forward and again for the
regularizer. With s = m and s' = s (1 - s):

    dv/dtau  = -(w / T) s'                dL0/dtau = -(1 / T) sum s'
    dv/dw    = s + (2 w**2 / T) s'        (exact)
    dv/dw   ~= s                          (the paper's eq. 14: the mask is held constant in w)

In the paper's mode the mask is constant with respect to w everywhere, so L0 sends no
gradient to w either; tau always gets its full gradient, but for a layer whose T is at its
floor (TEMPERATURE_FLOOR: all weights of one magnitude, e.g. a zero-initialized head). The mask
is a step there and 1/T would turn any s' into a jump of tau to 1e12 times its size, pruning
the whole layer before it has learned anything; tau waits instead until the weights spread.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["soft_mask", "hard_mask", "layer_temperature", "SoftPrune", "FusedSoftPrune", "soft_prune",
           "fused_soft_prune", "fused_kernels_work", "FUSED_MIN_WEIGHTS", "FUSED_GROUP", "SMALL_LAYER",
           "TEMPERATURE_FLOOR"]

TEMPERATURE_FLOOR = 1e-12  # units of w**2: the least T a layer gets (see layer_temperature)


def soft_mask(weight: Tensor, threshold: Tensor | float, temperature: Tensor | float) -> Tensor:
    """sigmoid((weight**2 - threshold) / temperature), elementwise; same shape as `weight`.

    `threshold` and `temperature` are in units of weight**2 (a magnitude cut at |w| = c is
    threshold c**2). Differentiable in all three arguments by plain autograd.
    """
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.sigmoid((weight * weight - threshold) / temperature)


def hard_mask(weight: Tensor, threshold: Tensor | float) -> Tensor:
    """The deployment mask step(weight**2 - threshold) as a bool tensor: True = kept.

    A weight with weight**2 <= threshold is pruned (so tau = 0 prunes exact zeros only).
    Squared in float32 for 16-bit weights, as the soft mask is (a float16 square of |w| < 2.4e-4
    would be 0).
    """
    w = _as_compute(weight)
    return w * w > threshold


def _as_compute(t: Tensor) -> Tensor:
    # The mask's math is float32 for float32/16/bf16 weights, float64 for float64: float16's
    # range ends near 6e-8 and a layer's w**2, tau and T are often smaller (T ~ 1e-6 for a conv
    # layer with weights of std 0.03), and a bf16 mask near 1 has steps of 1/256.
    return t if t.dtype == torch.float64 else t.float()


def layer_temperature(weight: Tensor, t0: float) -> Tensor:
    """T_l = t0 * Var(|w|) over all elements of one layer's weight (the paper's eq. 15).

    Returns a detached 0-d tensor in units of w**2, float32 (float64 for float64 weights: see
    `_as_compute`). The rule makes every layer hold a similar
    share of its weights in the transition band whatever its scale, so t0 is dimensionless.
    Computed as E[w**2] - E[|w|]**2 (the population variance) from two reductions that
    allocate nothing, in float32 at least; a floor of TEMPERATURE_FLOOR (1e-12) keeps a layer
    whose weights all have one magnitude from dividing by zero (its threshold then gets no
    gradient: see the module docstring).
    """
    with torch.no_grad():
        w = _as_compute(weight.detach().reshape(-1))
        n = w.numel()
        mean_sq = torch.dot(w, w) / n
        mean_abs = torch.linalg.vector_norm(w, 1) / n
        return (t0 * (mean_sq - mean_abs * mean_abs)).clamp_min(TEMPERATURE_FLOOR)


class SoftPrune(torch.autograd.Function):
    """(w, tau, T) -> (v = w * m, L0 = sum m), fused, with the gradient described above.

    T is treated as a constant (no gradient); at or below TEMPERATURE_FLOOR tau gets none
    either (see the module docstring). `exact` selects the exact weight gradient
    instead of the paper's straight-through one. The elementwise work is a handful of
    passes over the weight (every extra pass over a ResNet's 10-25M weights costs about as
    much as a small layer's forward): forward addcmul, div_, sigmoid_ (in place), mul, sum;
    backward addcmul (s'), addcmul (upstream), dot (tau's gradient), mul (w's gradient).
    16-bit weights are computed in float32 (`_as_compute`): m and the soft-L0 are float32, v
    and the gradients have the dtypes of w and tau.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, threshold: Tensor, temperature: Tensor, exact: bool):
        w = _as_compute(weight)  # weight itself, but for 16-bit weights
        m = torch.addcmul(-threshold.to(w.dtype), w, w).div_(temperature.to(w.dtype)).sigmoid_()
        ctx.save_for_backward(weight, m, temperature)
        ctx.exact, ctx.threshold_dtype = exact, threshold.dtype
        v = w * m
        # Converted only where the dtype differs: under torch 2.11, a torch.compile'd model whose
        # forward returned the no-op .to()'s result trained differently from eager (test_compile)
        return (v if v.dtype == weight.dtype else v.to(weight.dtype)), m.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v: Tensor, grad_l0: Tensor):
        weight, m, temperature = ctx.saved_tensors
        w, grad_v = _as_compute(weight), grad_v.to(m.dtype)
        temperature = temperature.to(m.dtype)
        grad_w = grad_tau = None
        ds = torch.addcmul(m, m, m, value=-1)  # s' = s (1 - s)
        # The factor every non-paper term shares: dv = w s' dz and dL0 = s' dz, z = (w**2 - tau)/T.
        upstream = torch.addcmul(grad_l0.to(m.dtype), grad_v, w)
        if ctx.needs_input_grad[1]:
            grad_tau = torch.dot(upstream.reshape(-1), ds.reshape(-1)) / -temperature
            grad_tau = torch.where(temperature > TEMPERATURE_FLOOR, grad_tau, 0).to(ctx.threshold_dtype)
        if ctx.needs_input_grad[0]:
            grad_w = grad_v * m
            if ctx.exact:  # + (2 w / T) s' (grad_v w + grad_l0)
                grad_w.addcmul_(w * ds, upstream * (2 / temperature))
            grad_w = grad_w.to(weight.dtype)
        return grad_w, grad_tau, None, None


# -- the fused variant: the same math, compiled, several layers per call ------------------------
#
# Eager PyTorch makes about eleven passes over a layer's weights per step (two reductions for
# T, five forward ops, four backward ones). torch.compile (Inductor) fuses each direction into
# one kernel per layer: the forward reads w twice (T's two sums, then the mask) and writes v;
# the backward reads the upstream gradient and w once and recomputes the mask.
#
# The compiled functions take FUSED_GROUP layers per call: LTP's forward pre-hook hands a
# model's layers over in groups (`fused_soft_prune`), so a ResNet-18 step makes three compiled
# calls per direction, not 21. One call runs its layers' loops back to back in one C++
# function (one burst of Triton launches on CUDA), and pays the guards and wrappers of a
# compiled call (a few hundred microseconds with autograd, on this project's CPU) once for all
# of them: the benchmark's ResNet-18 step measured faster so (README, "Performance"). A
# group's backward runs once all of its layers' gradients have arrived; its layers are
# consecutive, so that is soon after its first layer's, and DDP still overlaps its all-reduce
# with the rest of the backward, group by group.
#
# One compiled graph serves every model: sizes are dynamic and not "duck-sized" (equal sizes
# would be guarded equal, and a model with another pattern of equal sizes would compile again),
# a group with fewer layers is padded with constant stand-ins, and a group never mixes devices,
# dtypes or the `exact` flag. Inductor's CPU code does specialize a sum on whether it has more
# than 4096 elements, so layers up to SMALL_LAYER weights go in groups of their own (a second
# graph, compiled when first needed; `LTP`'s automatic mode leaves such layers eager).
#
# Compiling costs seconds once per process (then cached on disk), so by default `LTP` compiles
# only for a model with a layer of at least FUSED_MIN_WEIGHTS weights, and only where the
# kernels build (`fused_kernels_work`: on CPU Inductor needs a C++ compiler, on CUDA Triton).

FUSED_MIN_WEIGHTS = 1 << 16  # ~ where compiled and eager cost the same, one layer alone (CPU, 2 threads)
FUSED_GROUP = 8  # layers per compiled call
SMALL_LAYER = 4096  # Inductor's CPU sums switch strategy above this many elements (a guard)


def _fused_temperature(wf: Tensor, t0: float) -> Tensor:
    mean_abs = wf.abs().mean()
    return (t0 * ((wf * wf).mean() - mean_abs * mean_abs)).clamp_min(TEMPERATURE_FLOOR)


def _layer_forward(w: Tensor, tau: Tensor, t0: float) -> tuple[Tensor, Tensor, Tensor]:
    wf = _as_compute(w)
    temperature = _fused_temperature(wf, t0)
    # Scalars folded first, so the per-weight work is a multiply-add, an exp and one division
    # (inside the sigmoid), not two divisions.
    inv_t = 1 / temperature
    m = torch.sigmoid(wf * wf * inv_t - tau.to(wf.dtype) * inv_t)
    return (wf * m).to(w.dtype), m.sum(), temperature


def _layer_backward(grad_v: Tensor, grad_l0: Tensor, w: Tensor, tau: Tensor, temperature: Tensor,
                    exact: bool) -> tuple[Tensor, Tensor]:
    # The mask is recomputed, not saved by the forward: on a CPU a ResNet-18 step measured
    # slightly faster so (a sigmoid per weight costs less than writing m and reading it back),
    # and it saves a weight-sized tensor per layer.
    wf = _as_compute(w)
    gv = grad_v.to(wf.dtype)
    inv_t = 1 / temperature
    mf = torch.sigmoid(wf * wf * inv_t - tau.to(wf.dtype) * inv_t)
    ds = mf * (1 - mf)
    upstream = gv * wf + grad_l0.to(wf.dtype)
    grad_tau = torch.where(temperature > TEMPERATURE_FLOOR, -(upstream * ds).sum() * inv_t, 0.0)
    grad_w = gv * mf
    if exact:
        grad_w = grad_w + (2 * inv_t) * wf * ds * upstream
    return grad_w.to(w.dtype), grad_tau


def _group_forward(weights: list[Tensor], taus: list[Tensor], t0s: list[float]) -> list[tuple[Tensor, Tensor, Tensor]]:
    return [_layer_forward(w, tau, t0) for w, tau, t0 in zip(weights, taus, t0s)]


def _group_backward(grads_v: list[Tensor], grads_l0: list[Tensor], weights: list[Tensor], taus: list[Tensor],
                    temperatures: list[Tensor], exact: bool) -> list[tuple[Tensor, Tensor]]:
    return [_layer_backward(*args, exact) for args in zip(grads_v, grads_l0, weights, taus, temperatures)]


_KERNELS: dict[str, object] = {}


def _kernel(name: str):
    if name not in _KERNELS:
        fn = _group_forward if name == "forward" else _group_backward
        _KERNELS[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _KERNELS[name]


try:
    from torch.fx.experimental import _config as _shape_config
except ImportError:
    _shape_config = None
if not hasattr(_shape_config, "use_duck_shape"):  # a torch without the switch: equal sizes compile again, no worse
    _shape_config = None


@contextlib.contextmanager
def _no_duck_sizing() -> Iterator[None]:
    # Read when a graph is compiled (not when it runs), so it is set around every call; by hand,
    # as config.patch() builds a class per call (~20 us).
    if _shape_config is None:
        yield
        return
    before = _shape_config.use_duck_shape
    _shape_config.use_duck_shape = False
    try:
        yield
    finally:
        _shape_config.use_duck_shape = before


class _Padding:
    """The stand-ins that fill a group up to FUSED_GROUP layers: one weight, gradient and three
    scalars per missing layer, each tensor distinct (the compiled graph is specialized on which
    inputs alias) and of a size in the group's class (zeros: T is floored, the mask is 1/2)."""

    def __init__(self, like: Tensor, small: bool) -> None:
        k, n = FUSED_GROUP - 1, 64 if small else SMALL_LAYER + 1

        def make(size: tuple[int, ...], dtype: torch.dtype = like.dtype, value: float = 0.0) -> list[Tensor]:
            return [torch.full(size, value, dtype=dtype, device=like.device) for _ in range(k)]

        compute = _as_compute(like).dtype  # of T and of the soft-L0 (and so of its gradient)
        self.weights, self.grads_v, self.taus = make((n,)), make((n,)), make(())
        self.grads_l0, self.temperatures = make((), compute), make((), compute, 1.0)


@functools.cache
def _padding(device: torch.device, dtype: torch.dtype, small: bool) -> _Padding:
    return _Padding(torch.empty((), dtype=dtype, device=device), small)


def _probe(device_type: str) -> None:
    # Layers as big as the smallest that uses the kernels by default: Inductor's code is
    # guarded to a size class, so a tiny probe would serve no real layer.
    ws = [torch.linspace(-1.0, 1.0, FUSED_MIN_WEIGHTS + i, device=device_type) for i in range(FUSED_GROUP)]
    taus = [torch.tensor(0.25, device=device_type) for _ in ws]
    with _no_duck_sizing():
        out = _kernel("forward")(ws, taus, [0.5] * len(ws))
        _kernel("backward")([torch.ones_like(w) for w in ws], [torch.ones_like(o[1]) for o in out], ws, taus,
                            [o[2] for o in out], False)


def _import_cpp_extension_quietly() -> None:
    # Inductor imports it on its first compile; on a machine with a CUDA toolkit but no GPU the
    # import logs "No CUDA runtime is found", which says nothing about the CPU kernels.
    logger = logging.getLogger("torch.utils.cpp_extension")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")
    finally:
        logger.setLevel(before)


@functools.cache
def fused_kernels_work(device_type: str) -> bool:
    """Whether the compiled mask kernels build and run on `device_type` ("cpu", "cuda", ...).

    Checked once per process by compiling both directions for a group of FUSED_GROUP layers of
    about FUSED_MIN_WEIGHTS weights (the kernels are compiled for dynamic sizes, so this compile
    serves every layer of more than SMALL_LAYER weights that follows). Any failure (no C++
    compiler, no Triton, an unsupported platform) answers False, with one warning saying why.
    """
    try:  # in the global state FusedSoftPrune calls the kernels in: grad off, autocast off
        if device_type == "cpu":
            _import_cpp_extension_quietly()
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device_type, enabled=False):
            _probe(device_type)
        return True
    except Exception as e:  # noqa: BLE001 - whatever stops the compiler, eager still works
        warnings.warn(f"ltp_core: the compiled mask kernels do not build on {device_type!r} "
                      f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                      "LTP uses the eager mask there (same math, slower)", RuntimeWarning, stacklevel=2)
        return False


def _memory_order(t: Tensor) -> list[int] | None:
    """The permutation of t's dims from outermost to innermost in memory (a channels_last conv
    weight: (0, 2, 3, 1)), or None for the identity (row-major), the common case, which needs no
    permute."""
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    return None if order == list(range(t.dim())) else order


def _flat(t: Tensor, order: list[int] | None) -> Tensor:
    # The elements in memory order as one dimension: no copy for any dense layout (the kernels,
    # elementwise plus whole-tensor sums, are blind to order). The final detach makes it a
    # tensor of its own, not a view: torch.compile guards on a view's base, whose shapes
    # (3x3 vs 1x1 kernels, square or not) would each cost a recompile.
    # (.contiguous() copies only a strided gradient, e.g. sum()'s expanded ones: the kernels are
    # compiled for stride 1 and would otherwise compile again.)
    if order is None:
        return t.contiguous().view(-1).detach()
    return t.permute(order).reshape(-1).contiguous().detach()


def _unflat(flat: Tensor, shape: torch.Size, order: list[int] | None) -> Tensor:
    # The inverse of _flat: `shape`, with the strides of the tensor `order` came from.
    if order is None:
        return flat.view(shape)
    return flat.view([shape[d] for d in order]).permute(sorted(range(len(order)), key=order.__getitem__))


def _unflat_each(flats: list[Tensor], ctx) -> list[Tensor]:
    # _unflat for every layer of a FusedSoftPrune group, with the shapes and orders its forward kept
    return [_unflat(f, shape, order) for f, shape, order in zip(flats, ctx.shapes, ctx.orders)]


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    # Entering autocast costs more than the check, and a training step calls this per group.
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FusedSoftPrune(torch.autograd.Function):
    """(exact, t0s, w_1..w_n, tau_1..tau_n) -> (v_1..v_n, L0_1..L0_n) for n <= FUSED_GROUP
    layers of one device, dtype and size class (see `fused_soft_prune`, which forms the groups):
    `SoftPrune` for each, with T_i = t0s[i] * Var(|w_i|) computed inside, each direction one
    compiled call for the group. Same values and gradients as the eager path up to float32
    rounding (the math is float32, float64 for float64 weights). Each v_i has w_i's layout (a
    channels_last weight gives a channels_last v)."""

    @staticmethod
    def forward(ctx, exact: bool, t0s: tuple[float, ...], *weights_and_thresholds: Tensor):
        n = len(t0s)
        weights, thresholds = weights_and_thresholds[:n], weights_and_thresholds[n:]
        ctx.orders = [_memory_order(w) for w in weights]
        ctx.shapes = [w.shape for w in weights]
        flats = [_flat(w, order) for w, order in zip(weights, ctx.orders)]
        taus = [t.detach() for t in thresholds]
        pad = _padding(flats[0].device, flats[0].dtype, flats[0].numel() <= SMALL_LAYER)
        # Autocast off: the math is float32 whatever the context, and the compiled kernel sees
        # one global state (under bf16 autocast it would otherwise compile a second time).
        with _autocast_off(flats[0].device.type), _no_duck_sizing():
            out = _kernel("forward")(flats + pad.weights[:FUSED_GROUP - n], taus + pad.taus[:FUSED_GROUP - n],
                                     list(t0s) + [1.0] * (FUSED_GROUP - n))[:n]
        temperatures = [o[2] for o in out]
        ctx.save_for_backward(*flats, *taus, *temperatures)
        ctx.exact, ctx.pad = exact, pad
        return (*_unflat_each([o[0] for o in out], ctx), *(o[1] for o in out))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        n, pad = len(ctx.shapes), ctx.pad
        saved = ctx.saved_tensors
        flats, taus, temperatures = list(saved[:n]), list(saved[n:2 * n]), list(saved[2 * n:])
        grads_v = [_flat(g, order) for g, order in zip(grads[:n], ctx.orders)]
        # Tensors of their own: autograd hands one tensor to several layers' L0 (the gradient of
        # their sum), and the compiled graph is specialized on which inputs are the same object.
        grads_l0 = [g.detach() for g in grads[n:]]
        k = FUSED_GROUP - n
        with _autocast_off(flats[0].device.type), _no_duck_sizing():
            out = _kernel("backward")(grads_v + pad.grads_v[:k], grads_l0 + pad.grads_l0[:k],
                                      flats + pad.weights[:k], taus + pad.taus[:k],
                                      temperatures + pad.temperatures[:k], ctx.exact)[:n]
        return (None, None, *_unflat_each([o[0] for o in out], ctx), *(o[1].to(f.dtype) for o, f in zip(out, flats)))


def fused_soft_prune(weights: list[Tensor], thresholds: list[Tensor], t0s: list[float], exact: list[bool]
                     ) -> tuple[list[Tensor], list[Tensor]]:
    """(v_i, L0_i) for every layer i, as `SoftPrune` with T_i = t0s[i] * Var(|w_i|), through the
    compiled kernels: the layers go in groups of up to FUSED_GROUP, in the order given, each
    group of one device, dtype, size class (up to SMALL_LAYER weights or more) and `exact`
    flag. Returns two lists in the order of `weights`: the soft-pruned weights (each of its
    weight's shape and layout) and the 0-d soft-L0s (float32 for 16-bit weights)."""
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault((w.device, w.dtype, w.numel() <= SMALL_LAYER, bool(exact[i])), []).append(i)
    vs: list[Tensor | None] = [None] * len(weights)
    l0s: list[Tensor | None] = [None] * len(weights)
    for (_, _, _, flag), members in groups.items():
        for start in range(0, len(members), FUSED_GROUP):
            chunk = members[start:start + FUSED_GROUP]
            out = FusedSoftPrune.apply(flag, tuple(float(t0s[i]) for i in chunk), *(weights[i] for i in chunk),
                                       *(thresholds[i] for i in chunk))
            for j, i in enumerate(chunk):
                vs[i], l0s[i] = out[j], out[len(chunk) + j]
    return vs, l0s


def soft_prune(weight: Tensor, threshold: Tensor, temperature: Tensor, exact_weight_grad: bool = False
               ) -> tuple[Tensor, Tensor]:
    """Functional form of `SoftPrune`: returns (v, L0) for one layer; see the module docstring."""
    if not torch.is_tensor(temperature):  # float32 at least (see _as_compute)
        temperature = torch.tensor(float(temperature), dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)
    if not torch.is_tensor(threshold):
        threshold = torch.tensor(float(threshold), dtype=weight.dtype, device=weight.device)
    return SoftPrune.apply(weight, threshold, temperature, exact_weight_grad)
