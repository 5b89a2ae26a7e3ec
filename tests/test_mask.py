"""The soft mask and the autograd of v = w * m, checked in float64."""
import pytest
import torch

from ltp_core import hard_mask, layer_temperature, soft_mask, soft_prune
from ltp_core.core.mask import SoftPrune

torch.manual_seed(0)


def _inputs():
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.25, dtype=torch.float64)
    return w, tau, temperature


def test_soft_mask_formula_and_limits():
    w = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    m = soft_mask(w, 0.25, 0.1)
    assert torch.allclose(m, torch.sigmoid((w ** 2 - 0.25) / 0.1))
    assert m[2] < 0.1 and m[0] > 0.99 and torch.allclose(m[1], torch.tensor(0.5))
    # T -> 0: the soft mask becomes the hard step (except exactly on the threshold)
    sharp = soft_mask(torch.tensor([0.3, 0.7]), 0.25, 1e-6)
    assert torch.equal(sharp > 0.5, hard_mask(torch.tensor([0.3, 0.7]), 0.25))


def test_hard_mask_prunes_at_and_below_threshold():
    w = torch.tensor([0.0, 0.5, -0.5, 0.6])
    assert hard_mask(w, 0.25).tolist() == [False, False, False, True]
    assert hard_mask(w, 0.0).tolist() == [False, True, True, True]


def test_exact_gradient_matches_finite_differences():
    w, tau, temperature = _inputs()
    assert torch.autograd.gradcheck(lambda w, t: SoftPrune.apply(w, t, temperature, True), (w, tau))


def test_paper_gradient_tau_exact_weight_straight_through():
    w, tau, temperature = _inputs()
    w_fixed = w.detach()
    # tau's gradient is the full one in the paper's mode too
    assert torch.autograd.gradcheck(lambda t: SoftPrune.apply(w_fixed, t, temperature, False), (tau,))
    # the weight gradient holds the mask constant: dv/dw = m, dL0/dw = 0
    gv = torch.randn_like(w)
    v, l0 = soft_prune(w, tau, temperature)
    torch.autograd.backward([v, l0], [gv, torch.tensor(1.0, dtype=torch.float64)])
    m = soft_mask(w.detach(), tau.detach(), temperature)
    assert torch.allclose(w.grad, gv * m)


def test_analytic_gradients_match_formulas():
    w, tau, temperature = _inputs()
    v, l0 = soft_prune(w, tau, temperature, exact_weight_grad=True)
    s = soft_mask(w.detach(), tau.detach(), temperature)
    ds = s * (1 - s)
    (g_tau_v,) = torch.autograd.grad(v.sum(), tau, retain_graph=True)
    assert torch.allclose(g_tau_v, (-(w.detach() / temperature) * ds).sum())
    (g_tau_l0,) = torch.autograd.grad(l0, tau)
    assert torch.allclose(g_tau_l0, -(ds.sum() / temperature))
    assert g_tau_l0 < 0  # the L0 term always pushes tau up


def test_fused_matches_plain_autograd():
    w, tau, temperature = _inputs()
    v, l0 = soft_prune(w, tau, temperature, exact_weight_grad=True)
    m = soft_mask(w, tau, temperature)
    assert torch.allclose(v, w * m) and torch.allclose(l0, m.sum())
    g_fused = torch.autograd.grad(v.pow(2).sum() + 3 * l0, (w, tau))
    g_plain = torch.autograd.grad((w * m).pow(2).sum() + 3 * m.sum(), (w, tau))
    for a, b in zip(g_fused, g_plain):
        assert torch.allclose(a, b)


def test_layer_temperature_rule_and_scale():
    w = torch.randn(1000)
    t = layer_temperature(w, 0.1)
    assert torch.isclose(t, 0.1 * w.abs().var(unbiased=False))
    assert torch.isclose(layer_temperature(10 * w, 0.1), 100 * t, rtol=1e-4)  # follows the w**2 scale
    assert layer_temperature(torch.zeros(5), 0.1) > 0


def test_soft_mask_rejects_nonpositive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        soft_mask(torch.ones(3), 0.0, 0.0)


def test_half_precision_l0_is_accumulated_in_float32():
    w = torch.full((100_000,), 10.0, dtype=torch.bfloat16)
    _, l0 = soft_prune(w, torch.tensor(0.0, dtype=torch.bfloat16), torch.tensor(1.0, dtype=torch.bfloat16))
    assert l0.dtype == torch.float32 and l0.item() == 100_000


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_weights_are_masked_in_float32(dtype, exact):
    # A conv layer's scale: w ~ 3e-3, so w**2, tau and T (~1e-8) are below float16's range.
    torch.manual_seed(0)
    w64 = torch.randn(4096, dtype=torch.float64) * 3e-3
    tau64 = torch.tensor(5e-6, dtype=torch.float64)
    w, tau = w64.to(dtype).requires_grad_(), tau64.to(dtype).requires_grad_()
    temperature = layer_temperature(w, 0.01)
    assert temperature.dtype == torch.float32 and 0 < temperature < 1e-6
    v, l0 = soft_prune(w, tau, temperature, exact_weight_grad=exact)
    assert v.dtype == dtype and l0.dtype == torch.float32
    g = torch.randn(4096, dtype=torch.float64) * 1e-4
    ((v * g.to(dtype)).sum() + 1e-6 * l0).backward()

    # The reference: float64 from the same (rounded) inputs, plain autograd.
    wr = w.detach().double().requires_grad_()
    taur = tau.detach().double().requires_grad_()
    m = soft_mask(wr if exact else wr.detach(), taur, temperature.double())  # paper: constant in w
    vr = wr * m
    ((vr * g.to(dtype).double()).sum() + 1e-6 * m.sum()).backward()
    eps = torch.finfo(dtype).eps
    # atol: float16's subnormal spacing; for bf16, float32's least normal (flush_denormals, on in
    # any test process that trained before, zeroes the float32 product below it)
    atol = max(torch.finfo(dtype).tiny * eps, torch.finfo(torch.float32).tiny)
    assert torch.allclose(v.double(), vr.detach(), rtol=eps, atol=atol)
    assert torch.isclose(l0.double(), m.sum().detach(), rtol=1e-5)
    assert torch.isfinite(w.grad).all() and torch.isclose(tau.grad.double(), taur.grad, rtol=4 * eps)
    # within 4 units in the last place, or float32's rounding of the largest gradient's terms,
    # or float16's subnormal spacing
    atol = max(1e-6 * wr.grad.abs().max().item(), 2 * torch.finfo(dtype).tiny * eps)
    assert torch.allclose(w.grad.double(), wr.grad, rtol=4 * eps, atol=atol)


def test_compiled_kernels_use_the_same_temperature_floor():
    # kernels.fused imports nothing from the core, so it keeps its own copy of the floor
    from ltp_core.core.mask import TEMPERATURE_FLOOR
    from ltp_core.kernels import fused

    assert fused._FLOOR == TEMPERATURE_FLOOR
