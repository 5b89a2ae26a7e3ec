"""ltp_core.teaching.batchnorm: the measurements of notebook 03 on tiny networks and the digits."""
import copy

import pandas as pd
import pytest
import torch
from torch import nn

from ltp_core import LTP
from ltp_core.data import load_digits
from ltp_core.engine.fit import accuracy, fit
from ltp_core.models import small_cnn
from ltp_core.teaching import batchnorm as bn


@pytest.fixture(scope="module")
def data():
    return load_digits(val_fraction=0.2, seed=0, images=True)


def net(batch_norm=True, seed=0):
    torch.manual_seed(seed)
    return small_cnn(channels=(4, 6), batch_norm=batch_norm)


@pytest.fixture(scope="module")
def trained(data):
    """The two tiny nets after 3 epochs of Adam: logits large enough for a rescaling to show."""
    nets = {}
    for batch_norm in (True, False):
        model = net(batch_norm)
        fit(model, data, torch.optim.Adam(model.parameters(), lr=1e-2), epochs=3, progress=False)
        nets[batch_norm] = model
    return nets


def test_bn_followed_finds_exactly_the_convs_that_feed_a_batchnorm():
    model = net(batch_norm=True)
    assert bn.bn_followed(model) == list(bn.conv_layers(model).values())
    assert bn.bn_followed(net(batch_norm=False)) == []
    mixed = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert bn.bn_followed(mixed) == [mixed[0]]


def test_conv_layers_names_the_convs_in_order():
    model = net()
    layers = bn.conv_layers(model)
    assert list(layers) == ["conv1", "conv2"]
    assert [m.out_channels for m in layers.values()] == [4, 6]


def test_scale_response_bn_cancels_the_factor_the_plain_net_does_not(data, trained):
    x, y = data.x_train[:200], data.y_train[:200]
    with_bn = bn.scale_response(trained[True], x, y, factors=(0.1, 10.0))
    without = bn.scale_response(trained[False], x, y, factors=(0.1, 10.0))
    assert len(with_bn) == 4 and set(with_bn.layer) == {"conv1", "conv2"}
    assert with_bn["loss change"].max() < 0.01   # BN's eps: not exactly 0
    assert with_bn["predictions unchanged"].min() >= 0.99   # BN's eps: a rare flip at a near tie
    assert without["loss change"].min() > 0.05


def test_scale_response_under_ltp_rescales_tau_with_w(data, trained):
    model = copy.deepcopy(trained[True])
    ltp = LTP(model, temperature=0.05)
    with torch.no_grad():
        for name, w in ltp.weights().items():   # half of each layer pruned, tau between two weights
            sq = w.pow(2).flatten().sort().values
            ltp.thresholds[name].fill_(float(sq[len(sq) // 2 - 1] + sq[len(sq) // 2]) / 2)
    table = bn.scale_response(model, data.x_train[:200], data.y_train[:200], factors=(0.1, 10.0))
    assert table["soft-L0 relative change"].max() < 1e-4
    assert table["hard mask flipped"].max() <= 0.01
    assert table["predictions unchanged"].min() >= 0.99
    assert float(ltp.thresholds[next(iter(ltp.layers))].detach()) > 0  # the model itself was not rescaled


def test_relative_sparsity_is_scale_free_and_counts_zeros():
    w = torch.tensor([1.0, 0.5, 0.001, 0.0])
    assert bn.relative_sparsity([w], cut=0.01) == 0.5
    assert bn.relative_sparsity([1e-4 * w], cut=0.01) == 0.5
    assert bn.relative_sparsity([w, torch.zeros(4)], cut=0.01) == 0.75  # an all-zero layer counts whole
    assert bn.relative_sparsity([w], cut=0.6) == 0.75


def test_cut_below_zeroes_a_copy_and_reports_the_shares():
    model = net(False)
    layers = bn.conv_layers(model)
    cuts = [float(m.weight.detach().abs().flatten().quantile(0.25)) for m in layers.values()]
    pruned, shares = bn.cut_below(model, cuts)
    for (name, m), c in zip(bn.conv_layers(pruned).items(), cuts):
        assert torch.all((m.weight == 0) | (m.weight.abs() >= c))
        assert shares[name] == pytest.approx(0.25, abs=0.05)
    assert all(bool((m.weight != 0).all()) for m in layers.values())  # the original is untouched
    _, relative = bn.cut_below(model, [1.0, 1.0], relative=True)      # below the max: all but the max
    assert relative["total"] > 0.95
    with pytest.raises(ValueError, match="one cut per conv"):
        bn.cut_below(model, [0.1])


def test_measure_records_val_and_test_and_the_fixed_cut(data):
    model = net(True)
    cuts = [float(m.weight.detach().abs().flatten().quantile(0.5)) for m in bn.conv_layers(model).values()]
    out = bn.measure(model, data, fixed_cuts=cuts)
    assert out["val_accuracy"] == accuracy(model, data.x_val, data.y_val)
    assert out["test_accuracy"] == accuracy(model, data.x_test, data.y_test)
    assert out["fixed_pruned"] == pytest.approx(0.5, abs=0.02)
    assert {"fixed_conv1", "fixed_conv2", "thresholded_accuracy", "train_loss", "relative_sparsity"} <= set(out)
    assert model.training  # the mode is restored


def test_penalty_hooks_l1_term_scheduler_and_norms():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    hooks = bn.PenaltyHooks(nn.Linear(1, 1), {"w": w}, l1=0.1, scheduler=sched)
    assert hooks.regularizer().item() == pytest.approx(0.3)
    assert float(bn.PenaltyHooks(nn.Linear(1, 1), {"w": w}).regularizer()) == 0.0
    with torch.no_grad():
        w.mul_(0.5)
    opt.step()   # no gradient: the weights stay
    hooks.after_step(1)
    assert opt.param_groups[0]["lr"] == 0.5
    assert [n["w"] for n in hooks.norms] == pytest.approx([5 ** 0.5, 0.5 * 5 ** 0.5])


def test_train_penalized_l2_shrinks_only_the_conv_weights_under_bn(data, trained):
    start = trained[True]
    head = start[-1].weight.detach().clone()
    run = bn.train_penalized(start, data, optimizer="sgd", lr=0.05, epochs=2, weight_decay=1.0, seed=1)
    assert list(run.history.epoch) == [0, 1, 2]
    assert len(run.norms) == 1 + 2 * -(-len(data.x_train) // 64)   # the start, then every step
    assert (run.norms.iloc[-1] / run.norms.iloc[0]).max() < 0.6     # (1 - lr)^steps, slowed by the cosine
    assert run.history.val_accuracy.iloc[-1] >= run.history.val_accuracy.iloc[0] - 0.05  # BN: the function stays
    assert not torch.equal(head, run.model[-1].weight)  # trained
    assert torch.equal(head, start[-1].weight)          # the start is untouched
    with pytest.raises(ValueError, match="optimizer"):
        bn.train_penalized(start, data, optimizer="rmsprop", lr=0.1, epochs=1)


def test_train_penalized_l1_adds_its_term(data):
    start = net(False)
    plain = bn.train_penalized(start, data, optimizer="adam", lr=1e-2, epochs=2, seed=1)
    l1 = bn.train_penalized(start, data, optimizer="adam", lr=1e-2, epochs=2, l1=1e-2, seed=1)
    assert (l1.norms.iloc[-1] < plain.norms.iloc[-1]).all()
    assert l1.history.relative_sparsity.iloc[-1] > plain.history.relative_sparsity.iloc[-1]


def test_train_ltp_prunes_and_measures_the_hard_masked_network(data):
    run = bn.train_ltp(net(True), data, temperature=0.05, lambda_=5.0, lr=1e-3, threshold_lr=3e-3, epochs=3, seed=1)
    last = run.history.iloc[-1]
    assert run.history.sparsity.iloc[0] == 0.0 and last.sparsity > 0.3
    with run.ltp.hard_masks():
        assert last.test_accuracy == accuracy(run.model, data.x_test, data.y_test)
        convs = [m.weight for m in bn.conv_layers(run.model).values()]
        zeros = sum(int((w == 0).sum()) for w in convs) / sum(w.numel() for w in convs)
    assert last.relative_sparsity >= zeros > 0.3   # the hard-pruned conv weights count as near zero


def test_effective_lr_growth_is_the_inverse_squared_norm_ratio():
    norms = pd.DataFrame({"conv1": [2.0, 1.0, 0.5], "conv2": [1.0, 1.0, 2.0]})
    growth = bn.effective_lr_growth(norms)
    assert growth.conv1.tolist() == [1.0, 4.0, 16.0]
    assert growth.conv2.tolist() == [1.0, 1.0, 0.25]


def test_choose_strength_picks_the_sparsest_within_tolerance_on_validation():
    table = pd.DataFrame({"strength": [1e-4, 1e-3, 1e-2], "relative_sparsity": [0.2, 0.5, 0.9],
                          "val_accuracy": [0.97, 0.96, 0.80], "test_accuracy": [0.0, 0.0, 1.0]})
    assert bn.choose_strength(table, 0.97, 0.02) == 1e-3
    assert bn.choose_strength(table, 0.97, 0.2) == 1e-2
    assert bn.choose_strength(table, 0.99, 0.001) == 1e-4    # none within: the best validation accuracy
