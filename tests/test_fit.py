"""The in-memory training loop (`ltp_core.engine.fit`): fine-tuning with the mask fixed, and a
pruning run recorded in a trail on the split it is chosen by."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ltp_core import LTP
from ltp_core.core.layers import prunable_layers, zero_fractions
from ltp_core.core.trail import Trail
from ltp_core.data import make_synthetic
from ltp_core.engine.fit import accuracy, fit, fit_fixed_mask, fit_with_trail
from ltp_core.methods.magnitude import magnitude_masks
from ltp_core.models import mlp


def _data(val_fraction: float = 0.25):
    data = make_synthetic(num_train=256, num_test=128, num_features=16, num_classes=4, seed=0)
    n_val = int(len(data.x_train) * val_fraction)
    if n_val:
        data.x_val, data.y_val = data.x_train[:n_val], data.y_train[:n_val]
        data.x_train, data.y_train = data.x_train[n_val:], data.y_train[n_val:]
    return data


def _pruned_mlp(sparsity: float = 0.7) -> nn.Module:
    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[32], num_classes=4)
    with torch.no_grad():
        for name, keep in magnitude_masks(model, sparsity, "layer").items():
            model.get_submodule(name).weight.mul_(keep)
    return model


def test_fit_fixed_mask_keeps_the_zeros_and_trains_the_rest():
    data = _data()
    model = _pruned_mlp()
    zeros = {n: m.weight == 0 for n, m in prunable_layers(model)}
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(model)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)  # built before the call
    history = fit_fixed_mask(model, data, optimizer, epochs=3, seed=0, progress=False)
    assert len(history) == 3
    for name, m in prunable_layers(model):
        assert torch.equal(m.weight == 0, zeros[name]), name          # exactly the same zeros
        assert not torch.equal(m.weight, before[name]), name           # the survivors trained
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    fresh = mlp(in_features=16, hidden=[32], num_classes=4)
    fresh.load_state_dict(model.state_dict(), strict=True)             # a plain model again


def test_fit_fixed_mask_without_the_mask_would_regrow_weights():
    # the control: the same training through plain `fit` moves the zero weights
    data = _data()
    model = _pruned_mlp()
    fit(model, data, torch.optim.Adam(model.parameters(), lr=1e-2), epochs=1, seed=0, progress=False)
    assert zero_fractions(dict(prunable_layers(model)))["total"] < 0.1


def test_fit_fixed_mask_refuses_a_model_with_a_pruning_method_attached():
    model = _pruned_mlp()
    LTP(model)
    with pytest.raises(ValueError, match="parametrization"):
        fit_fixed_mask(model, _data(), torch.optim.Adam(model.parameters()), epochs=1, progress=False)


def test_fit_with_trail_records_the_start_and_every_evaluation_on_the_named_splits(tmp_path):
    data = _data()
    torch.manual_seed(0)
    model = mlp(in_features=16, hidden=[32], num_classes=4)
    ltp = LTP(model, temperature=0.05, lambda_=5.0)
    optimizer = torch.optim.Adam(ltp.param_groups(threshold_lr=1e-2), lr=1e-3)
    trail = Trail(tmp_path)
    history = fit_with_trail(model, data, optimizer, trail, method=ltp, epochs=4, eval_every=2,
                             splits=("val", "test"), extra=lambda: {"lambda_": ltp.lambda_}, seed=0, progress=False)
    assert [r["epoch"] for r in trail] == [0.0, 2.0, 4.0]
    assert trail[0]["sparsity"] == 0.0 and trail[-1]["sparsity"] > 0.0
    assert [h["sparsity"] for h in history] == [r["sparsity"] for r in trail.records[1:]]
    with ltp.hard_masks():
        assert trail[-1]["hard_val_accuracy"] == accuracy(model, data.x_val, data.y_val)
        assert trail[-1]["hard_test_accuracy"] == accuracy(model, data.x_test, data.y_test)
    assert trail[-1]["soft_val_accuracy"] == accuracy(model, data.x_val, data.y_val)
    assert trail[-1]["lambda_"] == 5.0
    assert Trail.load(tmp_path).pick(min_accuracy=0.0, accuracy_key="hard_val_accuracy")["epoch"] == 4.0
    state = trail.load_checkpoint(trail[-1])                          # a hard-pruned plain state_dict
    assert float((state["0.weight"] == 0).float().mean()) == pytest.approx(trail[-1]["layer_sparsity"]["0"])


def test_fit_with_trail_needs_the_split_it_records():
    data = _data(val_fraction=0.0)
    model = mlp(in_features=16, hidden=[32], num_classes=4)
    ltp = LTP(model)
    with pytest.raises(ValueError, match="no validation split"):
        fit_with_trail(model, data, torch.optim.Adam(ltp.param_groups()), Trail(), method=ltp, epochs=1,
                       progress=False)
