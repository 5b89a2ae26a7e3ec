"""The soft mask of Learned Threshold Pruning and the autograd of v = w * m.

For one layer with weights w (any shape), a learned scalar threshold tau (units of w**2)
and a temperature T > 0 (also units of w**2):

    m = sigmoid((w**2 - tau) / T)        soft mask, same shape as w, values in (0, 1)
    v = w * m                            the soft-pruned weight the forward pass uses
    L0 = sum(m)                          soft count of surviving weights (a scalar)
    T = t0 * Var(|w|)                    the temperature rule (the paper's eq. 15)

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

The same math as compiled kernels, faster on big layers, is `ltp_core.kernels.fused`.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft_mask", "hard_mask", "layer_temperature", "SoftPrune", "soft_prune", "soft_prune_t0",
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

    A detached 0-d tensor in units of w**2 (float32; float64 for float64 weights). The rule
    makes every layer hold a similar share of its weights in the transition band whatever its
    scale, so t0 is dimensionless. Var(|w|) is the population variance of |w| by `torch.var`
    (a Welford reduction, accurate to float32 rounding: E[w**2] - E[|w|]**2 summed in float32
    is off by ~1e-3 of itself on a layer of a million weights), the same reduction the compiled
    kernels (`ltp_core.kernels.fused`) use; the floor TEMPERATURE_FLOOR keeps a layer whose
    weights all have one magnitude from dividing by zero.
    """
    with torch.no_grad():
        w = _as_compute(weight.detach().reshape(-1))
        return (t0 * torch.var(w.abs(), correction=0)).clamp_min(TEMPERATURE_FLOOR)


class SoftPrune(torch.autograd.Function):
    """(w, tau, T, exact) -> (v = w * m, L0 = sum m), with the gradient of the module docstring.

    T gets no gradient; at or below TEMPERATURE_FLOOR tau gets none either. `exact` selects the
    exact weight gradient instead of the paper's. 16-bit weights are computed in float32: m and
    the soft-L0 are float32, v and the gradients have the dtypes of w and tau.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, threshold: Tensor, temperature: Tensor, exact: bool):
        w = _as_compute(weight)
        m = torch.addcmul(-threshold.to(w.dtype), w, w).div_(temperature.to(w.dtype)).sigmoid_()
        ctx.save_for_backward(weight, m, temperature)
        ctx.exact, ctx.threshold_dtype = exact, threshold.dtype
        v = w * m
        # Converted only where the dtype differs: under torch 2.11 a torch.compile'd model whose
        # forward returned a no-op .to() trained differently from eager.
        return (v if v.dtype == weight.dtype else v.to(weight.dtype)), m.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v: Tensor, grad_l0: Tensor):
        weight, m, temperature = ctx.saved_tensors
        w, grad_v, temperature = _as_compute(weight), grad_v.to(m.dtype), temperature.to(m.dtype)
        grad_w = grad_tau = None
        ds = torch.addcmul(m, m, m, value=-1)  # s' = s (1 - s)
        # The factor both terms share: dv = w s' dz and dL0 = s' dz, with z = (w**2 - tau) / T.
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


def soft_prune(weight: Tensor, threshold: Tensor | float, temperature: Tensor | float,
               exact_weight_grad: bool = False) -> tuple[Tensor, Tensor]:
    """(v, L0) for one layer at temperature T (`SoftPrune` with numbers accepted too)."""
    if not torch.is_tensor(temperature):  # float32 at least (see _as_compute)
        temperature = torch.tensor(float(temperature), dtype=torch.promote_types(weight.dtype, torch.float32),
                                   device=weight.device)
    if not torch.is_tensor(threshold):
        threshold = torch.tensor(float(threshold), dtype=weight.dtype, device=weight.device)
    return SoftPrune.apply(weight, threshold, temperature, exact_weight_grad)


def soft_prune_t0(weight: Tensor, threshold: Tensor, t0: float, exact_weight_grad: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """(v, L0) for one layer with T = t0 * Var(|w|): what `ThresholdMask` computes per forward."""
    return SoftPrune.apply(weight, threshold, layer_temperature(weight, t0), exact_weight_grad)
