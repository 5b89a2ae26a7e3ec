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
gradient to w either; tau always gets its full gradient.
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import Tensor

__all__ = ["soft_mask", "hard_mask", "layer_temperature", "SoftPrune", "FusedSoftPrune", "soft_prune",
           "fused_kernels_work", "FUSED_MIN_WEIGHTS"]


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
    """
    return weight * weight > threshold


def layer_temperature(weight: Tensor, t0: float) -> Tensor:
    """T_l = t0 * Var(|w|) over all elements of one layer's weight (the paper's eq. 15).

    Returns a detached 0-d tensor in units of w**2. The rule makes every layer hold a similar
    share of its weights in the transition band whatever its scale, so t0 is dimensionless.
    Computed as E[w**2] - E[|w|]**2 (the population variance) from two reductions that
    allocate nothing, in float32 at least; a floor of 1e-12 keeps a constant layer from
    dividing by zero.
    """
    with torch.no_grad():
        w = weight.detach().reshape(-1)
        if w.dtype in (torch.float16, torch.bfloat16):
            w = w.float()
        n = w.numel()
        mean_sq = torch.dot(w, w) / n
        mean_abs = torch.linalg.vector_norm(w, 1) / n
        return (t0 * (mean_sq - mean_abs * mean_abs)).clamp_min(1e-12).to(weight.dtype)


class SoftPrune(torch.autograd.Function):
    """(w, tau, T) -> (v = w * m, L0 = sum m), fused, with the gradient described above.

    T is treated as a constant (no gradient). `exact` selects the exact weight gradient
    instead of the paper's straight-through one. The elementwise work is a handful of
    passes over the weight (every extra pass over a ResNet's 10-25M weights costs about as
    much as a small layer's forward): forward addcmul, div_, sigmoid_ (in place), mul, sum;
    backward addcmul (s'), addcmul (upstream), dot (tau's gradient), mul (w's gradient).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, threshold: Tensor, temperature: Tensor, exact: bool):
        m = torch.addcmul(-threshold, weight, weight).div_(temperature).sigmoid_()
        ctx.save_for_backward(weight, m, temperature)
        ctx.exact = exact
        # The L0 sum is accumulated in float32 at least: a bf16 sum of a million ~1.0 terms
        # would lose the count entirely.
        l0 = m.sum(dtype=torch.float32 if m.dtype in (torch.float16, torch.bfloat16) else None)
        return weight * m, l0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v: Tensor, grad_l0: Tensor):
        weight, m, temperature = ctx.saved_tensors
        grad_w = grad_tau = None
        ds = torch.addcmul(m, m, m, value=-1)  # s' = s (1 - s)
        # The factor every non-paper term shares: dv = w s' dz and dL0 = s' dz, z = (w**2 - tau)/T.
        upstream = torch.addcmul(grad_l0.to(grad_v.dtype), grad_v, weight)
        if ctx.needs_input_grad[1]:
            grad_tau = (torch.dot(upstream.reshape(-1), ds.reshape(-1)) / -temperature).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            grad_w = grad_v * m
            if ctx.exact:  # + (2 w / T) s' (grad_v w + grad_l0)
                grad_w.addcmul_(weight * ds, upstream * (2 / temperature))
        return grad_w, grad_tau, None, None


# -- the fused variant: the same math, compiled into one kernel per direction -------------------
#
# Eager PyTorch makes about eleven passes over a layer's weights per step (two reductions for
# T, five forward ops, four backward ones). torch.compile (Inductor) fuses each direction into
# one kernel: the forward reads w twice (T's two sums, then the mask) and writes v; the
# backward reads the upstream gradient and w once and recomputes the mask. A ResNet-18 step's
# mask work takes about half the eager time (see `python -m ltp_core.bench`). Compiling costs
# seconds once per process (then cached on disk), so by default `LTP` compiles only for a model
# with a layer of at least FUSED_MIN_WEIGHTS weights, and then runs every layer's mask
# compiled: in a training step one compiled call costs less than a small layer's dozen eager
# ops, whose code runs cold after each convolution. Only where the kernels build
# (`fused_kernels_work`: on CPU Inductor needs a C++ compiler, on CUDA Triton).

FUSED_MIN_WEIGHTS = 1 << 16  # ~ where compiled and eager cost the same, one layer alone (CPU, 2 threads)


def _fused_temperature(wf: Tensor, t0: float) -> Tensor:
    mean_abs = wf.abs().mean()
    return (t0 * ((wf * wf).mean() - mean_abs * mean_abs)).clamp_min(1e-12)


def _as_compute(t: Tensor) -> Tensor:
    # float32 math for float32/16/bf16 weights (as the eager path accumulates), float64 kept
    return t if t.dtype == torch.float64 else t.float()


def _fused_forward_math(w: Tensor, tau: Tensor, t0: float):
    wf = _as_compute(w)
    temperature = _fused_temperature(wf, t0)
    # Scalars folded first, so the per-weight work is a multiply-add, an exp and one division
    # (inside the sigmoid), not two divisions.
    inv_t = 1 / temperature
    m = torch.sigmoid(wf * wf * inv_t - tau.to(wf.dtype) * inv_t)
    return (wf * m).to(w.dtype), m.sum(), temperature


def _fused_backward_math(grad_v: Tensor, grad_l0: Tensor, w: Tensor, tau: Tensor, temperature: Tensor,
                         exact: bool):
    # The mask is recomputed, not saved by the forward: on a CPU a ResNet-18 step measured
    # slightly faster so (a sigmoid per weight costs less than writing m and reading it back),
    # and it saves a weight-sized tensor per layer.
    wf = _as_compute(w)
    gv = grad_v.to(wf.dtype)
    inv_t = 1 / temperature
    mf = torch.sigmoid(wf * wf * inv_t - tau.to(wf.dtype) * inv_t)
    ds = mf * (1 - mf)
    upstream = gv * wf + grad_l0.to(wf.dtype)
    grad_tau = -(upstream * ds).sum() * inv_t
    grad_w = gv * mf
    if exact:
        grad_w = grad_w + (2 * inv_t) * wf * ds * upstream
    return grad_w.to(w.dtype), grad_tau


_KERNELS: dict[str, object] = {}


def _kernel(name: str):
    if name not in _KERNELS:
        fn = _fused_forward_math if name == "forward" else _fused_backward_math
        _KERNELS[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _KERNELS[name]


def _probe(device_type: str) -> None:
    # As many weights as the smallest layer that uses the kernels by default: Inductor's
    # code for tiny sizes is guarded to them, so a tiny probe would serve no real layer.
    w = torch.linspace(-1.0, 1.0, FUSED_MIN_WEIGHTS, device=device_type)
    tau = torch.tensor(0.25, device=device_type)
    _, l0, temperature = _kernel("forward")(w, tau, 0.5)
    _kernel("backward")(torch.ones_like(w), torch.ones_like(l0), w, tau, temperature, False)


@functools.cache
def fused_kernels_work(device_type: str) -> bool:
    """Whether the compiled mask kernels build and run on `device_type` ("cpu", "cuda", ...).

    Checked once per process by compiling both directions for a FUSED_MIN_WEIGHTS-long weight
    (the kernels are compiled for dynamic sizes, so this compile serves the layers that
    follow). Any failure (no C++
    compiler, no Triton, an unsupported platform) answers False, with one warning saying why.
    """
    try:  # in the global state FusedSoftPrune calls the kernels in: grad off, autocast off
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


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    # Entering autocast costs more than the check, and a training step calls this per layer.
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FusedSoftPrune(torch.autograd.Function):
    """(w, tau, t0) -> (v, L0): `SoftPrune` with T = t0 * Var(|w|) computed inside, each
    direction one compiled kernel. Same values and gradients as the eager path up to float32
    rounding (the math is float32, float64 for float64 weights).
    v has w's layout (a channels_last weight gives a channels_last v)."""

    @staticmethod
    def forward(ctx, weight: Tensor, threshold: Tensor, t0: float, exact: bool):
        order = _memory_order(weight)
        flat = _flat(weight, order)
        tau = threshold.detach()
        # Autocast off: the math is float32 whatever the context, and the compiled kernel sees
        # one global state (under bf16 autocast it would otherwise compile a second time).
        with _autocast_off(weight.device.type):
            v, l0, temperature = _kernel("forward")(flat, tau, t0)
        ctx.save_for_backward(flat, tau, temperature)
        ctx.exact, ctx.order, ctx.shape = exact, order, weight.shape
        return _unflat(v, weight.shape, order), l0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v: Tensor, grad_l0: Tensor):
        flat, tau, temperature = ctx.saved_tensors
        with _autocast_off(flat.device.type):
            grad_w, grad_tau = _kernel("backward")(_flat(grad_v, ctx.order), grad_l0, flat, tau, temperature,
                                                   ctx.exact)
        return _unflat(grad_w, ctx.shape, ctx.order), grad_tau.to(flat.dtype), None, None


def soft_prune(weight: Tensor, threshold: Tensor, temperature: Tensor, exact_weight_grad: bool = False
               ) -> tuple[Tensor, Tensor]:
    """Functional form of `SoftPrune`: returns (v, L0) for one layer; see the module docstring."""
    if not torch.is_tensor(temperature):
        temperature = torch.tensor(float(temperature), dtype=weight.dtype, device=weight.device)
    if not torch.is_tensor(threshold):
        threshold = torch.tensor(float(threshold), dtype=weight.dtype, device=weight.device)
    return SoftPrune.apply(weight, threshold, temperature, exact_weight_grad)
