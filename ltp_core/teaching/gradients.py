"""The gradients of LTP's soft mask on one layer: closed forms, autograd, differences, and tau's two forces.

Notation (the paper's): a layer's weights w_k, its threshold tau and its temperature T (both in
units of w**2), z_k = (w_k**2 - tau) / T, the soft mask s_k = m_k = sigmoid(z_k), s'_k = s_k (1 - s_k),
the soft-pruned weight v_k = w_k m_k and the soft count L0 = sum_k m_k. Then

    dv/dtau  = -(w / T) s'              dL0/dtau = -(1 / T) sum_k s'_k
    dv/dw    = s + (2 w**2 / T) s'      (exact)
    dv/dw   ~= s                        (the paper's eq. 14: the mask is held constant in w)

The same derivatives three ways, to check `ltp_core.core.mask.SoftPrune`'s hand-written backward
against the math: `closed_form_gradients` (the formulas above), `autograd_gradients` (through
SoftPrune) and `central_differences` (through its forward only). `band_gradient_share`,
`l0_gradient_scan` and `band_fraction` measure where tau's gradient comes from: the transition
band |w**2 - tau| < 4T. `threshold_only`, `tau_gradients` and `descend_tau` study the two forces on
one layer's tau (the task loss against lambda * L0) with every weight frozen.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import gradcheck

from ..core.layers import prunable_layers
from ..core.ltp import LTP
from ..core.mask import SoftPrune, soft_prune

__all__ = ["closed_form_gradients", "autograd_gradients", "central_differences", "relative_error",
           "band_gradient_share", "gradcheck_soft_prune", "band_fraction", "l0_gradient_scan",
           "density_at_quantiles", "threshold_only", "soft_and_hard_loss", "tau_gradients", "balance_residual",
           "descend_tau"]


def _scalar(value: Tensor | float, like: Tensor) -> Tensor:
    return value.to(like.dtype) if torch.is_tensor(value) else torch.tensor(float(value), dtype=like.dtype)


def closed_form_gradients(weight: Tensor, tau: Tensor | float, temperature: Tensor | float,
                          direction: Tensor | None = None) -> dict[str, Tensor]:
    """The module docstring's formulas, evaluated directly (no ltp_core mask code involved):
    {"m", "dv/dtau", "dv/dw exact", "dv/dw paper"} elementwise, the scalar "dL0/dtau", and
    "d(r.v)/dtau" = sum_k r_k dv_k/dtau for a `direction` r (default: all ones)."""
    tau, temperature = _scalar(tau, weight), _scalar(temperature, weight)
    r = torch.ones_like(weight) if direction is None else direction
    s = torch.sigmoid((weight * weight - tau) / temperature)
    ds = s * (1 - s)
    dv_dtau = -(weight / temperature) * ds
    return {"m": s, "dv/dtau": dv_dtau, "dv/dw exact": s + 2 * weight ** 2 / temperature * ds,
            "dv/dw paper": s, "dL0/dtau": -ds.sum() / temperature, "d(r.v)/dtau": (r * dv_dtau).sum()}


def autograd_gradients(weight: Tensor, tau: Tensor | float, temperature: Tensor | float,
                       direction: Tensor | None = None) -> dict[str, Tensor]:
    """The same derivatives through `SoftPrune`'s backward: "dv/dw exact" and "dv/dw paper"
    elementwise (v_k depends on w_k only, so the gradient of sum(v) is dv_k/dw_k), the scalar
    "dL0/dtau", and "d(r.v)/dtau", the derivative of sum_k r_k v_k for a `direction` r
    (default: all ones). tau is a scalar, so dv/dtau itself only comes as such a projection."""
    tau, temperature = _scalar(tau, weight), _scalar(temperature, weight)
    r = torch.ones_like(weight) if direction is None else direction
    out = {}
    for mode, exact in (("exact", True), ("paper", False)):
        w = weight.detach().clone().requires_grad_(True)
        v, _ = SoftPrune.apply(w, tau, temperature, exact)
        out[f"dv/dw {mode}"] = torch.autograd.grad(v.sum(), w)[0]
    t = tau.detach().clone().requires_grad_(True)
    v, l0 = SoftPrune.apply(weight.detach(), t, temperature, False)
    out["dL0/dtau"] = torch.autograd.grad(l0, t, retain_graph=True)[0]
    out["d(r.v)/dtau"] = torch.autograd.grad((r * v).sum(), t)[0]
    return out


def central_differences(weight: Tensor, tau: Tensor | float, temperature: Tensor | float,
                        direction: Tensor | None = None, step: float = 1e-5) -> dict[str, Tensor]:
    """The derivatives of `autograd_gradients` as central differences (f(x + h) - f(x - h)) / 2h of
    SoftPrune's forward. Each step h is `step` in z: h = step * T for tau, and for weight k
    h_k = step * T / (2 max(|w_k|, sqrt T)), since dz = 2 w dw / T (the max keeps h finite near 0)."""
    tau, temperature = _scalar(tau, weight), _scalar(temperature, weight)
    r = torch.ones_like(weight) if direction is None else direction
    h = step * temperature
    (v_up, l0_up), (v_down, l0_down) = (soft_prune(weight, tau + h, temperature),
                                        soft_prune(weight, tau - h, temperature))
    hw = step * temperature / (2 * torch.maximum(weight.abs(), temperature.sqrt()))
    v_right, v_left = soft_prune(weight + hw, tau, temperature)[0], soft_prune(weight - hw, tau, temperature)[0]
    return {"dv/dw exact": (v_right - v_left) / (2 * hw), "dL0/dtau": (l0_up - l0_down) / (2 * h),
            "d(r.v)/dtau": (r * (v_up - v_down)).sum() / (2 * h)}


def relative_error(a: Tensor | float, b: Tensor | float) -> float:
    """max_k |a_k - b_k| / max(|a_k|, |b_k|): 0 for equal values, at most 2 (0/0 counts as 0)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).abs() / torch.maximum(a.abs(), b.abs()).clamp_min(1e-300)).max().item()


def band_gradient_share(weight: Tensor, tau: Tensor | float, temperature: Tensor | float,
                        width: float = 4.0) -> float:
    """Share of sum_k |dv_k/dtau| that comes from the weights in the band |w**2 - tau| < width * T,
    through SoftPrune's backward.

    dv_k/dtau = -(w_k / T) s'_k has the sign of -w_k, so sum over a set of |dv_k/dtau| is
    d(r.v)/dtau with r = -sign(w) on that set. For weights spread evenly in w (a grid) the change
    of variables |dv/dtau| dw = s'(z) dz / 2 makes the share sigmoid(width) - sigmoid(-width)
    (0.964 for width 4) whatever tau and T are: outside the band a weight does not move tau.
    """
    tau_, temperature_ = _scalar(tau, weight), _scalar(temperature, weight)
    r = -torch.sign(weight)
    in_band = (weight * weight - tau_).abs() < width * temperature_
    band = autograd_gradients(weight, tau_, temperature_, r * in_band)["d(r.v)/dtau"]
    return (band / autograd_gradients(weight, tau_, temperature_, r)["d(r.v)/dtau"]).item()


def gradcheck_soft_prune(weight: Tensor, tau: Tensor | float, temperature: Tensor | float) -> dict[str, bool]:
    """`torch.autograd.gradcheck` on SoftPrune (float64 inputs): {"exact: w and tau", "paper: tau",
    "paper: w"}, each True where gradcheck passes. The first two must; the paper's w-gradient (eq. 14)
    is by design not the derivative, so gradcheck must reject it. (A T so small that gradcheck's own
    step of 1e-6 crosses the whole band fails too: the check needs a band wider than its step.)"""
    tau, temperature = _scalar(tau, weight), _scalar(temperature, weight)
    w, t = weight.detach().clone().requires_grad_(True), tau.detach().clone().requires_grad_(True)
    return {"exact: w and tau": gradcheck(lambda w_, t_: SoftPrune.apply(w_, t_, temperature, True), (w, t),
                                          raise_exception=False),
            "paper: tau": gradcheck(lambda t_: SoftPrune.apply(weight.detach(), t_, temperature, False), (t,),
                                    raise_exception=False),
            "paper: w": gradcheck(lambda w_: SoftPrune.apply(w_, tau.detach(), temperature, False), (w,),
                                  raise_exception=False)}


def band_fraction(weight: Tensor, tau: Tensor | float, temperature: Tensor | float, width: float = 4.0) -> float:
    """Fraction of the weights in the transition band |w**2 - tau| < width * T: the ones that move tau."""
    return ((weight * weight - tau).abs() < width * temperature).double().mean().item()


def l0_gradient_scan(weight: Tensor, taus: Tensor, temperature: Tensor | float) -> Tensor:
    """d(L0 / N)/dtau at every tau of `taus` (N = number of weights, so L0 / N is the soft fraction
    kept, as `LTP(normalize=True)` counts it), through SoftPrune's backward.

    -dL0/dtau / N = (1 / N T) sum_k s'_k is a histogram of w**2 smoothed by s'(z) / T: for a band
    holding many weights it is the density of w**2 at tau; for a band narrower than the gaps between
    neighbouring w_k**2 it is a comb, near zero at most tau (tau gets no gradient there).
    """
    temperature = _scalar(temperature, weight)
    grads = []
    for tau in taus:
        t = _scalar(tau, weight).detach().clone().requires_grad_(True)
        grads.append(torch.autograd.grad(SoftPrune.apply(weight.detach(), t, temperature, False)[1], t)[0])
    return torch.stack(grads) / weight.numel()


def density_at_quantiles(values: Tensor, q: Tensor, dq: float = 0.02) -> Tensor:
    """The density of the distribution of `values` at its q-quantiles, from the quantile function:
    2 dq / (Q(q + dq) - Q(q - dq)) (q +- dq must stay in [0, 1])."""
    values = values.flatten().double()
    q = q.double()
    return 2 * dq / (torch.quantile(values, q + dq) - torch.quantile(values, q - dq))


def threshold_only(model: nn.Module, layer: str, **ltp_options) -> tuple[nn.Module, LTP]:
    """A copy of `model` with LTP on `layer` alone and only its threshold trainable: every weight is
    frozen, so tau's forces can be studied by themselves. Returns (the copy, its LTP)."""
    net = copy.deepcopy(model)
    others = [name for name, _ in prunable_layers(net) if name != layer]
    ltp = LTP(net, exclude=others, **ltp_options)
    net.requires_grad_(False)
    for tau in ltp.thresholds.values():
        tau.requires_grad_(True)
    return net, ltp


@torch.no_grad()
def soft_and_hard_loss(model: nn.Module, ltp: LTP, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Cross-entropy on (x, y) of the soft-masked network that trains and of the hard-masked one
    that would be deployed (`LTP.hard_masks()`), every weight as it is."""
    soft = F.cross_entropy(model(x), y).item()
    with ltp.hard_masks():
        return soft, F.cross_entropy(model(x), y).item()


def _threshold(ltp: LTP) -> nn.Parameter:
    (tau,) = ltp.thresholds.values()
    return tau


def tau_gradients(model: nn.Module, ltp: LTP, x: Tensor, y: Tensor, tau: float) -> tuple[float, float, float]:
    """(dL_task/dtau, d(lambda L0)/dtau, L_task) on (x, y) with the one threshold of `ltp` set to tau:
    the two forces on tau, back-propagated separately. The L0 term is always < 0 (it raises tau);
    the task term is near 0 while the band holds weights the task does not need and > 0 once it
    holds weights it does."""
    threshold = _threshold(ltp)
    with torch.no_grad():
        threshold.fill_(tau)
    task = F.cross_entropy(model(x), y)
    (g_task,) = torch.autograd.grad(task, threshold, retain_graph=True)  # L0 reuses this forward's mask
    (g_l0,) = torch.autograd.grad(ltp.regularizer(), threshold)
    return g_task.item(), g_l0.item(), task.item()


def balance_residual(g_task: float, g_l0: float) -> float:
    """|dL_task/dtau + lambda dL0/dtau| / |lambda dL0/dtau| (the two terms of `tau_gradients`): 0 where
    the forces on tau balance, about 1 where the task loss does not push back yet, and inf where the
    L0 term sends tau nothing at all (no weight in the band: a stalled threshold, not a balance)."""
    return abs(g_task + g_l0) / abs(g_l0) if g_l0 != 0 else float("inf")


def descend_tau(model: nn.Module, ltp: LTP, x: Tensor, y: Tensor, *, steps: int, lr: float,
                with_task: bool = True) -> list[float]:
    """Gradient descent on the one threshold of `ltp` alone, from tau = 0: full batch (x, y), Adam as in
    training, its lr cosine-decayed to 0 so tau can settle. The loss is L_task + lambda L0, or
    lambda L0 alone (`with_task=False`: tau only rises). Returns tau after every step.

    Adam moves tau by about lr per step whatever the gradient's size, so give lr in units of w**2.
    Where it settles, dL_task/dtau = -lambda dL0/dtau: pruning a little more of the layer would cost
    as much task loss as lambda saves.
    """
    threshold = _threshold(ltp)
    with torch.no_grad():
        threshold.zero_()
    opt = torch.optim.Adam([threshold], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    path = []
    for _ in range(steps):
        task = F.cross_entropy(model(x), y) if with_task else 0.0
        loss = task + ltp.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        path.append(threshold.item())
    return path
