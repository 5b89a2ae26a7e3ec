"""The method-comparison runner (ltp_core.teaching.comparison): one dense start, one budget."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ltp_core.data import ImageDatasets, TensorSplit, load_digits
from ltp_core.engine.fit import fit
from ltp_core.methods.budget import FlopsModel
from ltp_core.methods.channels import channel_links, remove_channels
from ltp_core.models import cifar_resnet, small_cnn
from ltp_core.teaching import comparison
from ltp_core.teaching.comparison import (
    Budget,
    calibrate,
    finalized_sparsity,
    in_memory,
    load_split,
    merge_settings,
    prune_run,
    rank,
    run_method,
    train_dense,
)


def image_datasets(n_train=50, n_test=20):
    x = torch.arange(n_train + n_test, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    y = torch.arange(n_train + n_test) % 3
    return ImageDatasets(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]),
                         ["a", "b", "c"], (1, 2, 2))


def test_in_memory_carves_a_disjoint_seeded_validation_split():
    split = in_memory(image_datasets(), val_fraction=0.2, seed=3)
    ids = lambda t: set(t[:, 0, 0, 0].long().tolist())  # noqa: E731
    assert len(split.x_train) == 40 and len(split.x_val) == 10 and len(split.x_test) == 20
    assert ids(split.x_train) | ids(split.x_val) == set(range(50)) and not ids(split.x_train) & ids(split.x_val)
    assert ids(split.x_test) == set(range(50, 70))                       # the held-out images are the test split
    assert torch.equal(split.y_val, split.x_val[:, 0, 0, 0].long() % 3)   # labels travel with their images
    assert torch.equal(in_memory(image_datasets(), 0.2, seed=3).x_val, split.x_val)
    assert not torch.equal(in_memory(image_datasets(), 0.2, seed=4).x_val, split.x_val)
    assert in_memory(image_datasets(), 0.0).x_val is None
    with pytest.raises(ValueError, match="val_fraction"):
        in_memory(image_datasets(), 1.0)


def test_load_split_carves_validation_from_training_and_keeps_the_test_split():
    split = load_split("digits", seed=1, val_fraction=0.2)
    plain = load_digits(seed=1, images=True)
    assert split.x_train.shape[1:] == (1, 8, 8)
    assert len(split.x_train) + len(split.x_val) == len(plain.x_train)
    assert torch.equal(split.y_test, plain.y_test)
    with pytest.raises(ValueError, match="valid: 'digits', 'cifar10'"):
        load_split("mnist")
    with pytest.raises(ValueError, match="data_path"):
        load_split("cifar10")


def tiny_data(n=192, seed=0):
    d = load_digits(seed=seed, images=True, val_fraction=0.2)
    return TensorSplit(d.x_train[:n], d.y_train[:n], d.x_test[:100], d.y_test[:100], 10, d.x_val[:60], d.y_val[:60])


def test_train_dense_gives_the_start_and_the_same_run_trained_longer():
    data = tiny_data()
    torch.manual_seed(0)
    model = small_cnn(channels=(8, 16))
    torch.manual_seed(0)
    alone = small_cnn(channels=(8, 16))
    start, reference = train_dense(model, data, epochs=2, extra_epochs=1, lr=2e-3, batch_size=64, seed=5)
    fit(alone, data, torch.optim.Adam(alone.parameters(), lr=2e-3), epochs=2, batch_size=64, seed=5, progress=False)
    for a, b in zip(start.state_dict().values(), alone.state_dict().values()):
        assert torch.equal(a, b)                                           # the start: `epochs` of dense training
    assert reference is model and not torch.equal(reference[0].weight, start[0].weight)  # trained on from there


def test_finalized_sparsity_counts_zero_and_removed_weights():
    model = small_cnn(channels=(8, 16))
    dense = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert finalized_sparsity(model, dense) == 0.0
    with torch.no_grad():
        model[0].weight[:4] = 0.0                                          # 4 of 8 filters of 9 weights: 36 zeros
    assert finalized_sparsity(model, dense) == pytest.approx(36 / dense)
    remove_channels(model, {"0": torch.arange(4, 8)}, channel_links(model))  # and now they are gone
    assert finalized_sparsity(model, dense) == pytest.approx(1 - (36 + 16 * 4 * 9 + 160) / dense)


def setup(epochs=2, flops=False):
    data = tiny_data()
    torch.manual_seed(0)
    start, _ = train_dense(small_cnn(channels=(8, 16)), data, epochs=2, extra_epochs=0, lr=2e-3)
    fm = FlopsModel(start, data.x_train[:1]) if flops else None
    return Budget(start, data, epochs=epochs, lr=1e-3, eval_every=1, flops_model=fm)


def test_budget_counts_steps_flops_weights_and_parameters():
    s = setup(epochs=3)
    assert s.total_steps == 3 * math.ceil(192 / 64)
    assert s.num_weights == 8 * 9 + 16 * 8 * 9 + 16 * 10
    assert s.num_parameters == s.num_weights + 2 * (8 + 16) + 10                 # + BN gamma/beta, head bias
    assert s.example_input.shape == (1, 1, 8, 8) and s.dense_flops > 0
    with torch.no_grad():
        s.dense[0].weight[0] = 0.0                                                # zeros are not counted
    assert Budget(s.dense, s.data, epochs=1, lr=1e-3).num_parameters == s.num_parameters - 9


def test_prune_run_measures_the_finalized_network_of_an_unstructured_method():
    s = setup()
    dense_before = [p.clone() for p in s.dense.parameters()]
    r = prune_run(s, "magnitude", family="unstructured", options={"sparsity": 0.8})
    assert r["sparsity"] == pytest.approx(0.8, abs=1 / s.num_weights)
    assert r["finalized_sparsity"] == pytest.approx(r["sparsity"], abs=1e-12)  # counted on the deployed weights
    assert r["logit_gap"] <= 1e-6
    assert 0.1 < r["flops"] < 0.5                                               # effective FLOPs at 80% sparsity
    assert [t["epoch"] for t in r["trajectory"]] == [0, 1, 2]
    assert r["trajectory"][0]["sparsity"] == pytest.approx(0.8, abs=1e-3)      # one-shot: pruned at step 0
    assert r["val_accuracy"] is not None and r["accuracy"] is not None
    assert all(torch.equal(a, b) for a, b in zip(dense_before, s.dense.parameters()))  # the start is untouched


def test_prune_run_structured_flops_are_measured_and_match_the_flops_model():
    s = setup(flops=True)
    r = prune_run(s, "gdp", family="structured", options={"budget": 0.5, "tolerance": 0.05, "lambda_": 0.05},
                  groups={"gate_lr": 0.05})
    assert 0.45 <= r["flops"] <= 0.5
    assert r["flops"] == pytest.approx(r["model_flops"], abs=1e-12)
    assert r["gates_at_cut"] is not None                                        # the budgeted GDP ran
    assert [t["epoch"] for t in r["trajectory"]] == [0, 1, 2] and r["trajectory"][-1]["flops"] <= 0.5
    with pytest.raises(ValueError, match="family"):
        prune_run(s, "gdp", family="channels")
    with pytest.raises(ValueError, match="valid"):
        prune_run(s, "obd", family="unstructured")


def test_prune_run_on_a_residual_network_reports_the_channels_and_parameters_kept():
    data = tiny_data()
    torch.manual_seed(0)
    start, _ = train_dense(cifar_resnet(8, num_classes=10, in_channels=1), data, epochs=1, extra_epochs=0, lr=2e-3)
    fm = FlopsModel(start, data.x_train[:1])
    s = Budget(start, data, epochs=1, lr=1e-3, flops_model=fm)
    assert "layer1.0.conv2" in fm.plan.groups["conv1"].producers                  # the skip connection couples them
    r = prune_run(s, "l1_filter", family="structured", options={"ratio": 0.5})
    assert r["channels_kept"] == {g: 0.5 for g in fm.channels}                    # every group, shared ones included
    assert r["flops"] == pytest.approx(r["model_flops"], abs=1e-12)
    assert r["trajectory"][0]["flops"] == pytest.approx(r["flops"], abs=1e-12)    # removed at construction
    # halving every group: the 3x3 convs between two groups keep a quarter, the stem and the head half
    convs = {n: m.weight.numel() for n, m in start.named_modules() if isinstance(m, nn.Conv2d)}
    kept = convs.pop("conv1") / 2 + sum(convs.values()) / 4 + start.fc.weight.numel() / 2 + 10
    norms = sum(m.weight.numel() for m in start.modules() if isinstance(m, nn.BatchNorm2d))
    assert r["parameters"] == kept + norms                                        # BN gamma and beta, halved
    assert r["parameters_kept"] == pytest.approx(r["parameters"] / s.num_parameters)
    w = prune_run(s, "wgates", family="structured", options={"budget": 0.5})
    assert w["flops"] <= 0.5 and w["flops"] == pytest.approx(w["model_flops"], abs=1e-12)
    assert w["logit_gap"] <= 1e-5 and min(w["channels_kept"].values()) < 1.0


def fake_run(response):
    calls = []

    def run(value):
        calls.append(value)
        return {"sparsity": response(value)}

    return run, calls


@pytest.mark.parametrize("guess, most_runs", [(0.05, 4), (3.0, 5), (1e-3, 6), (30.0, 7)])
def test_calibrate_brackets_then_interpolates_to_the_target(guess, most_runs):
    run, calls = fake_run(lambda lam: 0.9 + 0.03 * math.log(lam / 0.2))   # 0.9 at lambda = 0.2
    best, tried = calibrate(run, guess, "log", target=0.9, tolerance=0.005, max_runs=8)
    assert abs(best["sparsity"] - 0.9) <= 0.005
    assert len(tried) == len(calls) <= most_runs and best is tried[-1]
    assert [r["knob_value"] for r in tried] == pytest.approx(calls)


def test_calibrate_returns_the_closest_run_when_the_runs_are_spent():
    run, calls = fake_run(lambda q: q - 0.08)                                 # LATS-like: reaches less than D
    best, tried = calibrate(run, 0.9, "quantile", target=0.9, tolerance=1e-6, max_runs=3)
    assert len(tried) == 3
    assert best == min(tried, key=lambda r: abs(r["sparsity"] - 0.9))
    assert all(0 < v < 1 for v in calls)
    with pytest.raises(ValueError, match="scale"):
        calibrate(run, 0.9, "linear", target=0.9, tolerance=0.01)


def test_run_method_calibrates_only_a_spec_with_a_search(monkeypatch):
    seen = []

    def fake_prune_run(setup, method, *, family, options=None, groups=None):
        seen.append((method, dict(options), groups))
        return {"sparsity": min(0.99, 0.5 + options.get("lambda_", 0.4)), "flops": 0.5}

    monkeypatch.setattr(comparison, "prune_run", fake_prune_run)
    spec = {"method": "ltp", "family": "unstructured", "options": {"temperature": 0.05},
            "groups": {"threshold_lr": 3e-4}}
    best, tried = run_method(None, spec, target=0.9, tolerance=0.01)
    assert len(tried) == 1 and seen[0] == ("ltp", {"temperature": 0.05}, {"threshold_lr": 3e-4})
    best, tried = run_method(None, {**spec, "search": {"knob": "lambda_", "guess": 0.1, "scale": "log"}},
                             target=0.9, tolerance=0.01)
    assert abs(best["sparsity"] - 0.9) <= 0.01 and len(tried) > 1
    assert all(r["knob"] == "lambda_" for r in tried) and spec["options"] == {"temperature": 0.05}


def test_merge_settings_changes_only_the_named_values():
    settings = {"str": {"method": "str", "options": {"s_init": -5.0}, "groups": {"threshold_lr": 0.01}},
                "gmp": {"method": "gmp", "options": {"sparsity": 0.9}}}
    merged = merge_settings(settings, {"str": {"groups": {"threshold_lr": 0.03}}})
    assert merged["str"] == {"method": "str", "options": {"s_init": -5.0}, "groups": {"threshold_lr": 0.03}}
    assert merged["gmp"] == settings["gmp"] and settings["str"]["groups"]["threshold_lr"] == 0.01
    assert merge_settings(settings, None) == settings
    with pytest.raises(ValueError, match="valid rows"):
        merge_settings(settings, {"stp": {}})


def test_rank_reads_the_validation_accuracy_not_the_test_accuracy():
    results = {"a": {"val_accuracy": 0.90, "accuracy": 0.99}, "b": {"val_accuracy": 0.95, "accuracy": 0.80},
               "c": {"val_accuracy": 0.90, "accuracy": 0.50}}
    assert rank(results) == ["b", "a", "c"]                                   # ties keep the given order
    assert rank(results, "accuracy") == ["a", "b", "c"]
