"""ltp_core.teaching.gradients: the soft mask's derivatives three ways, the band, and tau's two forces."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ltp_core import hard_mask, layer_temperature
from ltp_core.models import mlp
from ltp_core.teaching import gradients

f64 = torch.float64


def _layer(seed=0, shape=(12, 10)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=f64) * 0.3
    r = torch.randn(shape, generator=g, dtype=f64)
    tau = w.pow(2).median()
    return w, tau, layer_temperature(w, 0.5), r


def test_closed_form_values_at_the_cut():
    tau, T = 0.04, 0.004
    w = torch.tensor([math.sqrt(tau), -math.sqrt(tau)], dtype=f64)
    closed = gradients.closed_form_gradients(w, tau, T)
    assert torch.allclose(closed["m"], torch.tensor([0.5, 0.5], dtype=f64))
    assert torch.allclose(closed["dv/dw exact"], torch.full((2,), 0.5 + tau / (2 * T), dtype=f64))
    assert torch.allclose(closed["dv/dtau"], -w / (4 * T))
    assert torch.allclose(closed["dL0/dtau"], torch.tensor(-2 / (4 * T), dtype=f64))
    assert torch.equal(closed["dv/dw paper"], closed["m"])


def test_autograd_matches_closed_forms_and_central_differences():
    w, tau, T, r = _layer()
    auto = gradients.autograd_gradients(w, tau, T, r)
    closed = gradients.closed_form_gradients(w, tau, T, r)
    fd = gradients.central_differences(w, tau, T, r, step=1e-5)
    for key in ("dv/dw exact", "dL0/dtau", "d(r.v)/dtau"):
        assert gradients.relative_error(auto[key], closed[key]) < 1e-12, key
        assert gradients.relative_error(auto[key], fd[key]) < 1e-6, key
    assert torch.allclose(auto["dv/dw paper"], closed["m"], rtol=0, atol=1e-15)


def test_central_differences_see_a_wrong_derivative():
    w, tau, T, r = _layer(1)
    fd = gradients.central_differences(w, tau, T, r)
    closed = gradients.closed_form_gradients(w, tau, 2 * T, r)  # the wrong temperature
    assert gradients.relative_error(fd["dL0/dtau"], closed["dL0/dtau"]) > 0.01


def test_relative_error():
    assert gradients.relative_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0
    assert gradients.relative_error(1.0, 2.0) == pytest.approx(0.5)
    assert gradients.relative_error(torch.tensor([1.0, -3.0]), torch.tensor([1.0, 3.0])) == pytest.approx(2.0)


@pytest.mark.parametrize("width", [2.0, 4.0])
def test_band_gradient_share_is_sigmoid_of_the_width(width):
    tau, T = 0.04, 0.002
    w = torch.linspace(-0.5, 0.5, 20001, dtype=f64)
    expected = torch.sigmoid(torch.tensor(width)) - torch.sigmoid(torch.tensor(-width))
    assert gradients.band_gradient_share(w, tau, T, width) == pytest.approx(expected.item(), abs=1e-3)


def test_gradcheck_accepts_the_derivatives_and_rejects_eq14():
    w, tau, T, _ = _layer(2, shape=(16,))
    assert gradients.gradcheck_soft_prune(w, tau, T) == {"exact: w and tau": True, "paper: tau": True,
                                                         "paper: w": False}


def test_band_fraction_counts_the_band():
    w = torch.tensor([0.0, 0.1, 0.19, 0.205, 0.3])  # w**2 = 0, .01, .0361, .042, .09
    assert gradients.band_fraction(w, 0.04, 0.001, width=4.0) == pytest.approx(2 / 5)
    assert gradients.band_fraction(w, 0.04, 1.0, width=4.0) == 1.0
    assert gradients.band_fraction(w, 0.04, 1e-9, width=4.0) == 0.0


def test_l0_gradient_scan_is_the_density_of_w2_for_a_wide_band():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(20000, generator=g, dtype=f64).sqrt()  # w**2 uniform on [0, 1]: density 1
    taus = torch.tensor([0.3, 0.5, 0.7], dtype=f64)
    scan = gradients.l0_gradient_scan(w, taus, 0.005)
    closed = torch.stack([gradients.closed_form_gradients(w, t, 0.005)["dL0/dtau"] for t in taus]) / w.numel()
    assert torch.allclose(scan, closed, rtol=1e-12, atol=0)
    assert torch.allclose(-scan, torch.ones(3, dtype=f64), rtol=0.1)
    # a band far narrower than the gaps between neighbouring w**2: tau gets (almost) no gradient
    sparse = torch.tensor([0.1, 0.2, 0.3], dtype=f64).sqrt()
    assert gradients.l0_gradient_scan(sparse, torch.tensor([0.15, 0.25], dtype=f64), 1e-4).abs().max() < 1e-100


def test_density_at_quantiles_of_a_uniform_sample():
    values = torch.linspace(0.0, 2.0, 100001)
    density = gradients.density_at_quantiles(values, torch.tensor([0.2, 0.5, 0.8]))
    assert torch.allclose(density, torch.full((3,), 0.5, dtype=f64), rtol=1e-3)


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    model = mlp(in_features=6, hidden=(16,), num_classes=3)
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.requires_grad_(False), x, y


def test_threshold_only_masks_one_layer_and_trains_only_its_threshold():
    model, _, _ = _model_and_data()
    before = copy.deepcopy(model.state_dict())
    net, ltp = gradients.threshold_only(model, "0", temperature=0.05)
    assert list(ltp.layers) == ["0"]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is ltp.thresholds["0"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


def test_soft_and_hard_loss_match_the_masks():
    model, x, y = _model_and_data()
    net, ltp = gradients.threshold_only(model, "0", temperature=0.05)
    w = model[0].weight
    tau = w.pow(2).median().item()
    with torch.no_grad():
        ltp.thresholds["0"].fill_(tau)
    soft, hard = gradients.soft_and_hard_loss(net, ltp, x, y)
    pruned = copy.deepcopy(model)
    pruned[0].weight.data = w * hard_mask(w, tau)
    assert hard == pytest.approx(F.cross_entropy(pruned(x), y).item(), rel=1e-6)
    soft_net = copy.deepcopy(model)
    soft_net[0].weight.data = w * torch.sigmoid((w * w - tau) / layer_temperature(w, 0.05))
    assert soft == pytest.approx(F.cross_entropy(soft_net(x), y).item(), rel=1e-6)


def test_tau_gradients_are_the_two_terms_separately():
    model, x, y = _model_and_data()
    net, ltp = gradients.threshold_only(model, "0", temperature=0.5, lambda_=2.0)
    w = model[0].weight.double()
    tau = w.pow(2).median().item()
    g_task, g_l0, task = gradients.tau_gradients(net, ltp, x, y, tau)
    T = layer_temperature(w, 0.5)
    assert g_l0 == pytest.approx(2.0 * gradients.closed_form_gradients(w, tau, T)["dL0/dtau"].item() / w.numel(),
                                 rel=1e-4)
    # the task term by hand: v = w * sigmoid((w**2 - t) / T) in the first layer, t a leaf
    t = torch.tensor(tau, requires_grad=True)
    v = model[0].weight * torch.sigmoid((model[0].weight ** 2 - t) / T.float())
    hidden = torch.relu(F.linear(x, v, model[0].bias))
    loss = F.cross_entropy(model[2](hidden), y)
    loss.backward()
    assert task == pytest.approx(loss.item(), rel=1e-5)
    assert g_task == pytest.approx(t.grad.item(), rel=1e-3)


def test_descend_tau_l0_alone_only_rises_and_lambda_sets_the_balance():
    model, x, y = _model_and_data()
    lr = 0.1 * model[0].weight.pow(2).mean().item()
    net, ltp = gradients.threshold_only(model, "0", temperature=0.05, lambda_=1.0)
    path = gradients.descend_tau(net, ltp, x, y, steps=100, lr=lr, with_task=False)
    assert len(path) == 100 and path[-1] > 0 and all(b >= a for a, b in zip(path, path[1:]))
    ends = {}
    for lam in (0.1, 1.0):
        net, ltp = gradients.threshold_only(model, "0", temperature=0.05, lambda_=lam)
        ends[lam] = gradients.descend_tau(net, ltp, x, y, steps=300, lr=lr)[-1]
        g_task, g_l0, _ = gradients.tau_gradients(net, ltp, x, y, ends[lam])
        assert abs(g_task + g_l0) < 0.1 * abs(g_l0)  # it settled where the two forces balance
    assert ends[0.1] < ends[1.0] < path[-1] * 3


def test_balance_residual():
    assert gradients.balance_residual(2.0, -2.0) == 0.0
    assert gradients.balance_residual(0.0, -3.0) == 1.0
    assert gradients.balance_residual(1.0, 0.0) == float("inf")  # no L0 gradient: a stall, never a balance
