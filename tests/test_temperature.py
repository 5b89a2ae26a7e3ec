"""ltp_core.teaching.temperature: LTP runs at a chosen T0 and lambda, and what they measure in the band."""
from __future__ import annotations

import pytest
import torch

from ltp_core import LTP, layer_temperature, soft_prune
from ltp_core.data import TensorSplit, make_synthetic
from ltp_core.engine.fit import fit
from ltp_core.models import mlp
from ltp_core.teaching.temperature import (
    LTPRun,
    ThresholdWatch,
    band_coordinates,
    layer_band_fractions,
    layer_scaled_groups,
    rescale_layers,
    run_summary,
    train_ltp,
    use_global_temperature,
)


def small_data(seed: int = 0) -> TensorSplit:
    """Gaussian clusters with a validation split carved from the training share."""
    d = make_synthetic(num_train=240, num_test=80, num_features=8, num_classes=3, seed=seed)
    return TensorSplit(d.x_train[:180], d.y_train[:180], d.x_test, d.y_test, 3, d.x_train[180:], d.y_train[180:])


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    net = mlp(in_features=8, hidden=(16, 12), num_classes=3)
    fit(net, small_data(), torch.optim.Adam(net.parameters(), lr=1e-2), epochs=5, batch_size=32, progress=False)
    return net


def with_thresholds(net, taus):
    ltp = LTP(net, temperature=0.05, fused=False)
    with torch.no_grad():
        for t, tau in zip(ltp.thresholds.values(), taus):
            t.fill_(tau)
    return ltp


def test_layer_band_fractions_counts_the_band_per_layer(dense):
    net = mlp(in_features=8, hidden=(16, 12), num_classes=3)
    net.load_state_dict(dense.state_dict())
    ltp = with_thresholds(net, [1e-2, 2e-2, 5e-3])
    got = layer_band_fractions(ltp, width=3.0)
    for name, w in ltp.weights().items():
        w = w.detach()
        T = layer_temperature(w, 0.05)
        want = float(((w * w - ltp.thresholds[name]).abs() < 3.0 * T).float().mean())
        assert got[name] == pytest.approx(want)
    # weighted by layer size, the per-layer shares give LTP.band_fraction
    sizes = {n: w.numel() for n, w in ltp.weights().items()}
    pooled = sum(got[n] * sizes[n] for n in got) / sum(sizes.values())
    assert pooled == pytest.approx(ltp.band_fraction(3.0))


def test_band_coordinates_are_the_sigmoid_argument(dense):
    net = mlp(in_features=8, hidden=(16, 12), num_classes=3)
    net.load_state_dict(dense.state_dict())
    ltp = with_thresholds(net, [1e-2, 2e-2, 5e-3])
    z = band_coordinates(ltp)
    assert z.shape == (ltp.num_prunable,)
    first = next(iter(ltp.weights()))
    w = ltp.weights()[first].detach().flatten()
    m = torch.sigmoid(z[: w.numel()])
    assert torch.allclose(m, torch.sigmoid((w * w - 1e-2) / layer_temperature(w, 0.05)), atol=1e-6)


def test_layer_scaled_groups_scale_weights_by_a_and_thresholds_by_a_squared(dense):
    ltp = LTP(mlp(in_features=8, hidden=(16, 12), num_classes=3), temperature=0.05, fused=False)
    groups = layer_scaled_groups(ltp, lr=1e-3, threshold_lr=1e-4, scale={"0": 4.0, "2": 0.25})
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in ltp.model.parameters())  # every parameter exactly once
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(ltp.weights()["0"])] == pytest.approx(4e-3)
    assert lr_of[id(ltp.layers["0"].bias)] == pytest.approx(4e-3)
    assert lr_of[id(ltp.thresholds["0"])] == pytest.approx(16e-4)
    assert lr_of[id(ltp.weights()["2"])] == pytest.approx(0.25e-3)
    assert lr_of[id(ltp.thresholds["2"])] == pytest.approx(0.0625e-4)
    assert lr_of[id(ltp.thresholds["4"])] == pytest.approx(1e-4)  # not in scale: unchanged


def test_rescale_layers_keeps_the_function_and_scales_the_weights(dense):
    x = small_data().x_test
    scaled = rescale_layers(dense, "0", "2", 8.0)
    assert torch.allclose(scaled(x), dense(x), atol=1e-5)
    assert torch.allclose(scaled[0].weight, 8.0 * dense[0].weight)
    assert torch.allclose(scaled[2].weight, dense[2].weight / 8.0)
    assert torch.equal(scaled[4].weight, dense[4].weight)
    with pytest.raises(ValueError, match="a must be > 0"):
        rescale_layers(dense, "0", "2", 0.0)


def test_use_global_temperature_gives_every_layer_the_pooled_T(dense):
    scaled = rescale_layers(dense, "0", "2", 8.0)
    ltp = with_thresholds(scaled, [1e-3, 1e-3, 1e-3])
    per_layer = ltp.temperatures
    use_global_temperature(ltp)
    pooled = torch.cat([w.detach().abs().flatten() for w in ltp.weights().values()]).var(unbiased=False) * 0.05
    assert all(t == pytest.approx(float(pooled)) for t in ltp.temperatures.values())
    assert len({round(t, 12) for t in per_layer.values()}) == 3  # the per-layer rule gave three different T
    # the forward uses it: layer "2" computes w * sigmoid((w**2 - tau) / T_pooled)
    w = ltp.weights()["2"]
    v, _ = soft_prune(w.detach(), torch.tensor(1e-3), pooled)
    assert torch.allclose(ltp.model[2].weight, v, atol=1e-7)


def test_threshold_watch_counts_steps_in_which_a_threshold_moved(dense):
    data = small_data()
    net = mlp(in_features=8, hidden=(16, 12), num_classes=3)
    net.load_state_dict(dense.state_dict())
    warm = ThresholdWatch(LTP(net, temperature=0.05, fused=False))
    fit(net, data, torch.optim.Adam(warm.ltp.param_groups(threshold_lr=1e-4), lr=1e-3), epochs=2,
        batch_size=32, method=warm, progress=False)
    assert warm.steps == 2 * 6 and warm.moved_fraction == 1.0
    # tau far above every w**2 at a tiny T: sigmoid' underflows to exactly 0, so no step moves tau
    net = mlp(in_features=8, hidden=(16, 12), num_classes=3)
    net.load_state_dict(dense.state_dict())
    ltp = LTP(net, temperature=1e-9, init_threshold=100.0, fused=False)
    cold = ThresholdWatch(ltp)
    fit(net, data, torch.optim.Adam(ltp.param_groups(threshold_lr=1e-4), lr=1e-3), epochs=1, batch_size=32,
        method=cold, progress=False)
    assert cold.steps == 6 and cold.moved == 0 and cold.moved_fraction == 0.0


def test_train_ltp_records_validation_and_test_from_the_dense_start(dense):
    data = small_data()
    run = train_ltp(dense, data, t0=0.05, lambda_=1.0, epochs=3, lr=1e-3, threshold_lr=3e-3, batch_size=32)
    assert isinstance(run, LTPRun)
    assert [r["epoch"] for r in run.trail.records] == [0, 1, 2, 3]
    start = run.trail.records[0]
    assert start["sparsity"] == 0.0 and start["step"] == 0
    for key in ("soft_val_accuracy", "hard_val_accuracy", "soft_test_accuracy", "hard_test_accuracy",
                "band_fraction", "layer_band_fraction"):
        assert key in run.last
    assert run.last["sparsity"] > 0.0          # thresholds moved and pruned
    assert run.tau_moved == 1.0
    assert run.band_mean == pytest.approx(sum(r["band_fraction"] for r in run.trail.records[1:]) / 3)
    assert run.gap == run.last["soft_test_accuracy"] - run.last["hard_test_accuracy"]
    assert not hasattr(dense[0], "parametrizations")  # a copy was pruned, the dense net is untouched
    row = run_summary(run)
    assert row["sparsity"] == run.last["sparsity"] and row["steps tau moved"] == 1.0


def test_train_ltp_setup_and_lr_scale_reach_the_run(dense):
    data = small_data()
    scaled = rescale_layers(dense, "0", "2", 4.0)
    run = train_ltp(scaled, data, t0=0.05, lambda_=1.0, epochs=1, lr=1e-3, threshold_lr=1e-3,
                    setup=use_global_temperature, lr_scale={"0": 4.0, "2": 0.25}, batch_size=32)
    temps = set(round(t, 12) for t in run.ltp.temperatures.values())
    assert len(temps) == 1                     # one global T in every layer
    with pytest.raises(ValueError, match="no validation split"):
        train_ltp(dense, make_synthetic(num_train=64, num_test=32, num_features=8, num_classes=3), t0=0.05,
                  lambda_=1.0, epochs=1, lr=1e-3, threshold_lr=1e-3)
