"""The latency predictor (`ltp_core.methods.latency`) and W-Gates with cost="latency".

Timings on a shared machine are noisy, so no test here depends on their quality: the real CPU
timings are checked for what the fit report is (held-out networks, its numbers recomputed from
them), and the predictor's accuracy is checked on a known deterministic timing function, a
roofline model of the real pruned networks (each Conv/Linear costs the larger of its FLOPs at a
fixed compute rate and its bytes at a fixed bandwidth, plus a fixed overhead).
"""
from __future__ import annotations

import copy
import io
import statistics

import pytest
import torch
from test_wgates import train_on_digits  # the same training loop
from torch import nn

from ltp_core.core.flops import layer_flops
from ltp_core.data import load_digits
from ltp_core.engine import train
from ltp_core.methods.latency import (
    LatencyPredictor,
    fit_latency_predictor,
    measure_latency,
    pruned_copy,
    sample_keeps,
)
from ltp_core.methods.wgates import WGates
from ltp_core.models import resnet20, small_cnn


def roofline(net: nn.Module, x: torch.Tensor) -> float:
    """Seconds by a roofline model of `net`: per Conv/Linear layer, max(FLOPs / 20 GFLOP/s,
    (weights + input + output elements) x 4 bytes / 4 GB/s) + 5 µs; deterministic."""
    flops = layer_flops(net, x)
    moved, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(
                lambda mod, args, out, name=name: moved.__setitem__(name, mod.weight.numel() + args[0].numel()
                                                                    + out.numel())))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return sum(max(flops.get(n, 0) / 20e9, 4 * b / 4e9) + 5e-6 for n, b in moved.items())


@pytest.fixture(scope="module")
def resnet20_gates():
    """W-Gates on a ResNet-20 (12 channel groups, residual ones among them), all gates open."""
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = resnet20().eval()
    method = WGates(model, example_input=torch.randn(1, 3, 16, 16))
    torch.set_num_threads(before)
    return method


def _groups(method):
    return {n: g.channels for n, g in method.groups.items()}


def test_pruned_copies_are_the_surgery_networks(resnet20_gates):
    """The networks timed are the finalized networks of the sampled widths: their measured FLOPs
    are predicted_flops of those widths, without gates, and the model is untouched."""
    method = resnet20_gates
    model, x = method.model, method.example_input
    before = {k: v.shape for k, v in model.state_dict().items()}
    keeps = sample_keeps(_groups(method), 4, seed=3)
    assert keeps[0] == _groups(method)  # the dense network first
    assert all(1 <= k[n] <= c for k in keeps for n, c in _groups(method).items())
    assert any(k[n] < c for n, c in _groups(method).items() for k in keeps[1:])
    for keep in keeps[1:3]:
        net = pruned_copy(method, keep)
        assert not any("channel_gate" in k for k in net.state_dict())
        assert not any(m._forward_pre_hooks for m in net.modules())
        assert layer_flops(net, x)["total"] == method.predicted_flops(keep) < method.dense_flops["total"]
    assert {k: v.shape for k, v in model.state_dict().items()} == before
    assert hasattr(model.conv1, "channel_gate")


def test_fit_report_from_real_cpu_timings_is_on_held_out_networks():
    """Real timings (measure_latency) of pruned copies: the report is computed on the networks
    held out from the fit (never the dense one), and its numbers follow from them."""
    torch.manual_seed(0)
    method = WGates(small_cnn(channels=(16, 32)), example_input=torch.zeros(1, 1, 8, 8))
    timed = []

    def timer(net, x):  # the real measurement, recording which network it timed
        seconds = measure_latency(net, x, repeats=3, warmup=1)
        timed.append((net[0].out_channels, net[3].out_channels, seconds))
        return seconds

    predictor = fit_latency_predictor(method, samples=12, test_fraction=0.25, batch=8, rounds=1, timer=timer,
                                      steps=300, seed=1)
    fit = predictor.fit
    assert fit is not None and fit.test_samples == 3 and fit.train_samples == 9 and len(timed) == 12
    keeps = sample_keeps(_groups(method), 12, seed=1)
    assert [(k["0"], k["3"]) for k in keeps] == [t[:2] for t in timed]  # timed in sample order
    assert 0 not in fit.held_out and len(set(fit.held_out)) == 3
    assert list(fit.measured) == [timed[i][2] for i in fit.held_out]
    with torch.no_grad():
        again = [float(predictor(predictor.keep_fractions(keeps[i]))) for i in fit.held_out]
    assert again == pytest.approx(list(fit.predicted), rel=1e-6)
    rel = [abs(p - m) / m for p, m in zip(fit.predicted, fit.measured)]
    mean = sum(fit.measured) / 3
    r2 = 1 - sum((p - m) ** 2 for p, m in zip(fit.predicted, fit.measured)) / sum((m - mean) ** 2
                                                                                  for m in fit.measured)
    assert fit.median_relative_error == pytest.approx(statistics.median(rel))
    assert fit.max_relative_error == pytest.approx(max(rel)) and fit.r2 == pytest.approx(r2)
    assert fit.dense_latency == timed[0][2] > 0
    assert "R²" in str(fit) and set(fit.as_dict()) >= {"r2", "median_relative_error", "held_out"}


def test_the_predictor_is_monotone_and_differentiable_in_the_gates(resnet20_gates):
    """More kept channels never predict a lower latency (the MLP is monotone by construction),
    so the gates' gradient is >= 0; the gradient reaches a straight-through gate's scores."""
    method = resnet20_gates
    method.model.zero_grad()
    predictor = fit_latency_predictor(method, samples=16, rounds=1, timer=roofline, steps=500)
    g = torch.Generator().manual_seed(0)
    low = 0.1 + 0.9 * torch.rand(200, len(predictor.groups), generator=g)
    high = (low + 0.5 * torch.rand(low.shape, generator=g)).clamp(max=1.0)
    with torch.no_grad():
        assert bool((predictor(high) >= predictor(low)).all())
        assert float(predictor(high).mean()) > float(predictor(low).mean())
    gates = method.gates()
    rel = predictor.relative(gates)
    assert float(rel.detach()) == pytest.approx(1.0)  # every gate starts open
    rel.backward()
    grads = {n: m.net[-1].bias.grad for n, m in method.gate_modules.items()}
    assert all(v is not None for v in grads.values()) and all(float(v) >= 0 for v in grads.values())
    assert sum(float(v) for v in grads.values()) > 0


def test_the_mlp_fits_a_known_timing_function(resnet20_gates):
    """On ResNet-20's 12 channel groups, a roofline model of the pruned networks is fitted to
    R² > 0.9 on held-out networks."""
    method = resnet20_gates
    predictor = fit_latency_predictor(method, samples=40, rounds=1, timer=roofline)
    fit = predictor.fit
    assert fit.test_samples == 10
    assert fit.r2 > 0.9 and fit.median_relative_error < 0.1, str(fit)  # measured: R² 0.997, median 3%


def test_wgates_with_latency_cost_trains_to_the_latency_budget():
    """W-Gates with cost="latency" on the digits, with a predictor fitted to the roofline model:
    the cost term brings the predicted latency to the budget, the frozen gates meet it, and the
    finalized network's latency by the same model is what the predictor said."""
    d = load_digits(images=True)
    torch.manual_seed(0)
    model = small_cnn(channels=(16, 32))
    x = d.x_train[:1]
    fitter = WGates(copy.deepcopy(model), example_input=x)
    predictor = fit_latency_predictor(fitter, samples=24, rounds=1, batch=16, timer=roofline)
    assert predictor.fit.r2 > 0.9, str(predictor.fit)
    epochs, per_epoch = 4, len(d.x_train) // 64
    method = WGates(model, budget=0.5, cost="latency", latency=predictor, total_steps=epochs * per_epoch,
                    example_input=x)
    assert method.latency_fit is predictor.fit and float(method.gate_cost_fraction().detach()) == pytest.approx(1.0)
    dense = roofline(pruned_copy(method, {}), d.x_train[:16])
    before_freeze = train_on_digits(method, model, d, epochs)
    assert method.frozen and before_freeze <= 0.5 + 0.1, before_freeze
    predicted = method.predicted_latency_fraction()
    assert predicted <= 0.5 and float(method.cost_of(method.gates()).detach()) == pytest.approx(predicted, rel=1e-5)
    assert method.flops_fraction() < 0.9  # channels went
    model.eval()
    with torch.no_grad():
        gated = model(d.x_train[:64])
    pruned = method.finalize()
    with torch.no_grad():
        torch.testing.assert_close(pruned(d.x_train[:64]), gated, rtol=0, atol=1e-5)
    actual = roofline(pruned, d.x_train[:16]) / dense
    assert abs(actual - predicted) < 0.1 and actual <= 0.5 + 0.1, (actual, predicted)  # measured: 0.44, 0.50


def test_wgates_fits_its_predictor_at_construction_and_keeps_it_in_checkpoints():
    x = torch.zeros(1, 1, 8, 8)
    torch.manual_seed(0)
    method = WGates(small_cnn(channels=(8, 16)), cost="latency", example_input=x,
                    latency_options={"samples": 8, "rounds": 1, "timer": roofline, "steps": 200})
    assert method.latency_fit is not None and method.latency_fit.test_samples == 2
    assert not any(p.requires_grad for p in method.latency_predictor.parameters())
    assert not any("latency" in k for k in method.model.state_dict())  # the deployed network has no predictor
    state = method.state_dict()
    torch.save(state, buffer := io.BytesIO())
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # a checkpoint's method state loads safely
    other = WGates(small_cnn(channels=(8, 16)), cost="latency", example_input=x,
                   latency_options={"samples": 8, "rounds": 1, "timer": lambda net, b: 1.0 + roofline(net, b),
                                    "steps": 50})
    fractions = torch.tensor([0.5, 0.25])
    assert float(other.latency_predictor(fractions)) != pytest.approx(float(method.latency_predictor(fractions)))
    other.load_state_dict(state)  # a resumed run keeps the run's predictor
    assert float(other.latency_predictor(fractions)) == pytest.approx(float(method.latency_predictor(fractions)))
    assert other.latency_fit == method.latency_fit


def test_bad_latency_options_are_clear_errors():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"unknown cost 'time'; allowed: \['flops', 'latency'\]"):
        WGates(small_cnn(), example_input=x, cost="time")
    fitted = LatencyPredictor({"0": 16, "3": 32})
    with pytest.raises(ValueError, match="latency= and latency_options= are for cost='latency'"):
        WGates(small_cnn(), example_input=x, latency=fitted)
    with pytest.raises(ValueError, match=r"fitted on groups \{'0': 16, '3': 32\}, but WGates has \{'0': 8, '3': 16\}"):
        WGates(small_cnn(channels=(8, 16)), example_input=x, cost="latency", latency=fitted)
    method = WGates(small_cnn(), example_input=x)
    with pytest.raises(ValueError, match=r"unknown statistic 'mean'; allowed: \['median', 'min'\]"):
        fit_latency_predictor(method, statistic="mean")
    with pytest.raises(ValueError, match="samples must be >= 4"):
        fit_latency_predictor(method, samples=3)
    with pytest.raises(ValueError, match=r"the timer must return latencies > 0 in seconds, got \[0.0"):
        fit_latency_predictor(method, samples=4, rounds=1, timer=lambda net, b: 0.0)
    with pytest.raises(ValueError, match="latency_of\\(\\) needs cost='latency'"):
        method.latency_of(method.gates())
    with pytest.raises(ValueError, match=r"\['nope'\] are not groups of this latency predictor"):
        fitted.fractions({"nope": torch.ones(3)})


def test_ltp_train_method_wgates_with_latency_cost(tmp_path):
    """`ltp-train --method wgates --method-opt cost=latency`: the predictor is fitted on real CPU
    timings at construction, its fit report is in the checkpoint, and the run's network shrinks."""
    out = tmp_path / "run"
    flags = ["--dataset", "digits", "--model", "small_cnn", "--method", "wgates", "--method-opt", "cost=latency",
             "--method-opt", "budget=0.6", "--method-opt", "freeze_fraction=0.5", "--method-opt",
             "latency_options={samples: 8, rounds: 1, repeats: 2, statistic: min, steps: 300}", "--epochs", "2",
             "-b", "128", "--lr", "0.01", "--opt", "adam", "-j", "0", "--device", "cpu", "--no-progress",
             "--output-dir", str(out)]
    assert train.main(flags) == 0
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    fit = ckpt["method"]["latency"]["fit"]
    assert fit["test_samples"] == 2 and len(fit["measured"]) == 2 and 0 not in fit["held_out"]
    last = torch.load(sorted((out / "trail").glob("step_*.pt"))[-1], weights_only=True)
    assert not any("channel_gate" in k for k in last)
    assert last["0.weight"].shape[0] < 16 or last["3.weight"].shape[0] < 32
