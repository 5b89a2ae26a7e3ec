"""The FLOPs budget of channel pruning: FlopsModel, uniform_filter_ratio, GDP's budget."""
import pytest
import torch
from torch import nn

from ltp_core.core.flops import layer_flops
from ltp_core.methods.budget import FlopsModel, uniform_filter_ratio
from ltp_core.methods.channels import channel_links, remove_channels
from ltp_core.methods.gdp import GDP
from ltp_core.methods.greg import num_removed
from ltp_core.models import mlp, resnet20, small_cnn


def cnn():
    torch.manual_seed(0)
    return small_cnn(channels=(8, 16, 24)), torch.randn(1, 1, 8, 8)


@pytest.mark.parametrize("kept", [{}, {"0": 3}, {"0": 5, "3": 7}, {"0": 1, "3": 1, "6": 1}, {"6": 20}])
def test_flops_model_equals_flops_measured_on_the_smaller_network(kept):
    model, x = cnn()
    fm = FlopsModel(model, x)
    dense = layer_flops(model, x)["total"]
    smaller = remove_channels(model, {p: torch.arange(k) for p, k in kept.items()}, channel_links(model))
    assert fm.fraction(kept) == pytest.approx(layer_flops(smaller, x)["total"] / dense, abs=1e-12)


def test_flops_model_on_an_mlp_and_its_refusals():
    torch.manual_seed(0)
    model, x = mlp(hidden=(48, 32), batch_norm=True), torch.randn(1, 64)
    fm = FlopsModel(model, x)
    assert fm.fraction({}) == 1.0
    names = list(fm.channels)
    smaller = remove_channels(model, {names[0]: torch.arange(12)}, channel_links(model))
    assert fm.fraction({names[0]: 12}) == pytest.approx(layer_flops(smaller, x)["total"] / fm.dense["total"])
    with pytest.raises(ValueError, match="valid"):
        fm.fraction({"nonexistent": 3})
    with pytest.raises(ValueError, match="needs an example_input"):
        FlopsModel(resnet20(), None)


def test_flops_model_prices_a_residual_network_exactly():
    """On ResNet-20 the groups a skip connection joins lose channels in every layer they touch;
    the model's fraction equals the FLOPs measured on the network the surgery gives."""
    from ltp_core.methods.surgery import remove_channels_
    torch.manual_seed(0)
    model, x = resnet20(), torch.randn(1, 3, 16, 16)
    fm = FlopsModel(model, x)
    kept = {g: max(1, c // 3) for g, c in list(fm.channels.items())[::2]}
    assert "conv1" in kept and len(fm.plan.groups["conv1"].producers) == 4  # the stage-1 residual stream
    remove_channels_(model, fm.plan, {g: torch.arange(k) for g, k in kept.items()})
    assert fm.fraction(kept) == pytest.approx(layer_flops(model, x)["total"] / fm.dense["total"], abs=1e-12)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_uniform_filter_ratio_is_the_grid_point_closest_to_the_budget(budget):
    model, x = cnn()
    fm = FlopsModel(model, x)
    ratio = uniform_filter_ratio(fm, budget)

    def fraction(r):
        return fm.fraction({p: c - num_removed(r, c) for p, c in fm.channels.items()})

    grid = [i / 100 for i in range(96)]
    assert abs(fraction(ratio) - budget) == pytest.approx(min(abs(fraction(r) - budget) for r in grid))
    assert abs(fraction(ratio) - budget) < 0.05
    with pytest.raises(ValueError, match="budget"):
        uniform_filter_ratio(fm, 0.0)


def train_gdp(budget, tolerance, steps=12, cut_fraction=0.5):
    model, x = cnn()
    gdp = GDP(model, budget=budget, tolerance=tolerance, cut_fraction=cut_fraction, total_steps=steps,
              example_input=x, lambda_=0.05)
    opt = torch.optim.Adam(gdp.param_groups(gate_lr=0.05), lr=1e-2)
    torch.manual_seed(1)
    xs, ys = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    lambdas = []
    for step in range(1, steps + 1):
        loss = nn.functional.cross_entropy(model(xs), ys) + gdp.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        gdp.after_step(step)
        lambdas.append(gdp.lambda_)
    return gdp, x, lambdas


@pytest.mark.parametrize("budget", [0.4, 0.6])
def test_gdp_budget_cuts_the_lowest_gates_to_the_budget(budget):
    gdp, x, lambdas = train_gdp(budget, tolerance=0.03)
    assert gdp.cut_step == 6
    assert lambdas[4] == 0.05 and lambdas[5] == 0.0  # polarization until the cut, fine-tuning after
    cut = gdp.cut
    for p, g in gdp.gates.items():                    # the cut gates are held at exactly 0
        assert torch.all(g.detach()[cut[p]] == 0)
    # within each layer the cut took the lowest gates at the cut
    for p, before in gdp.gates_at_cut.items():
        if cut[p].any() and (~cut[p]).any():
            assert before[cut[p].cpu()].max() <= before[(~cut[p]).cpu()].min()
    fraction = gdp.flops_model.fraction(gdp.kept_channels())
    assert budget - 0.03 <= fraction <= budget
    dense = layer_flops(gdp.model, x)["total"]
    with torch.no_grad(), gdp.hard_masks():
        hard = gdp.model(x)
    assert gdp.flops(x) / dense == pytest.approx(fraction, abs=1e-12)   # the model prices it exactly
    gdp.finalize()
    assert torch.allclose(gdp.model(x), hard, atol=1e-5)              # removal does not change the function


def test_gdp_budget_state_dict_round_trip_and_refusals():
    gdp, x, _ = train_gdp(0.5, tolerance=0.03)
    state = gdp.state_dict()
    model, _ = cnn()
    other = GDP(model, budget=0.5, total_steps=12, example_input=x)
    assert other.cut is None and other.state_dict()["cut"] is None
    other.load_state_dict(state)
    assert other.lambda_ == 0.0
    assert {p: r.tolist() for p, r in other.cut.items()} == {p: r.tolist() for p, r in gdp.cut.items()}
    with pytest.raises(ValueError, match="total_steps"):
        GDP(cnn()[0], budget=0.5, example_input=x)
    with pytest.raises(ValueError, match="budget"):
        GDP(cnn()[0], budget=1.5, total_steps=10, example_input=x)
