"""W-Gates (`ltp_core.methods.wgates`): binary gates computed from the filters' own weights,
a straight-through gradient, an exact FLOPs cost, and removal through the structured surgery."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ltp_core import methods
from ltp_core.core.flops import layer_flops
from ltp_core.data import load_digits, write_digits_cifar10
from ltp_core.engine import distributed, train
from ltp_core.engine.config import UsageError
from ltp_core.engine.train import parse_args
from ltp_core.methods.surgery import load_pruned_state_dict
from ltp_core.methods.wgates import WGates, step_through
from ltp_core.models import get_model, resnet20, small_cnn


def _digits_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return small_cnn(channels=(8, 16))


def train_on_digits(method, model, d, epochs: int, batch: int = 64) -> float:
    """Adam (lr 1e-2, the gate MLPs 1e-3) on the digits in a fixed order, the method's step
    hooks after each step; returns its cost fraction just before the gates freeze."""
    opt = torch.optim.Adam(method.param_groups(gate_lr=1e-3), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    step, before_freeze = 0, None
    per_epoch = len(d.x_train) // batch
    for _ in range(epochs):
        order = torch.randperm(len(d.x_train), generator=g)
        for i in range(per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(model(d.x_train[idx]), d.y_train[idx]) + method.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == method.freeze_step:
                before_freeze = float(method.gate_cost_fraction().detach())
            method.after_step(step)
    return before_freeze


def test_step_through_is_binary_forward_identity_backward():
    s = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0], requires_grad=True)
    g = step_through(s)
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    (g * torch.arange(5.0)).sum().backward()
    assert s.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_gates_follow_the_filter_weights():
    """A gate is a function of its filter's weights: swapping two filters swaps their gates (and
    no other gate moves: the group's scale is unchanged), so changing a filter flips its gate."""
    x = torch.zeros(1, 1, 8, 8)
    model = _digits_cnn()
    method = WGates(model, example_input=x, budget=0.5)
    gate = method.gate_modules["3"]  # the second conv's 16 filters
    with torch.no_grad():  # a gate MLP whose scores have both signs (as training makes them)
        gate.net[-1].weight.normal_(0.0, 1.0)
        gate.net[-1].bias.zero_()
    before = method.gates()["3"].detach().clone()
    assert 0 < int(before.sum()) < 16
    closed, open_ = int((before == 0).nonzero()[0]), int((before == 1).nonzero()[0])
    with torch.no_grad():
        w = model[3].weight
        w[[closed, open_]] = w[[open_, closed]].clone()
    after = method.gates()["3"]
    expected = before.clone()
    expected[[closed, open_]] = before[[open_, closed]]
    assert torch.equal(after, expected) and after[closed] == 1 and after[open_] == 0
    # the gate sends gradient into the MLP and, through it, into the filter weights
    model.zero_grad()
    (method.gates()["3"] * torch.arange(16.0)).sum().backward()
    assert gate.net[-1].bias.grad is not None and model[3].weight.grad.abs().sum() > 0


def test_flops_cost_is_exact_and_finalize_equals_the_gated_resnet():
    """On ResNet-20 (gates shared by the convolutions a residual add joins): the cost computed
    from 0/1 gates equals predicted_flops and the FLOPs measured on the finalized network; its
    gradient in one gate is the FLOPs that channel costs; finalize computes what the gated
    network computed."""
    torch.manual_seed(0)
    model = resnet20(num_classes=10, in_channels=3).eval()
    x = torch.randn(1, 3, 32, 32)
    method = methods.build("wgates", model, example_input=x, budget=0.5)
    assert any(len(g.producers) > 1 for g in method.groups.values())  # a residual group
    g = torch.Generator().manual_seed(1)
    gates = {name: (torch.rand(m.channels, generator=g) > 0.4).double() for name, m in method.gate_modules.items()}
    for name, m in method.gate_modules.items():
        gates[name][0] = 1.0
        m.freeze(gates[name].to(m.fixed))
    assert method.frozen and method.regularizer().item() == 0.0
    keep = method.keep_indices()
    assert {n: k.tolist() for n, k in keep.items()} == {n: v.nonzero().flatten().tolist() for n, v in gates.items()}
    predicted = method.predicted_flops()
    assert float(method.flops_of(gates)) == predicted
    xs = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        gated = model(xs)
    pruned = method.finalized_copy().eval()
    assert layer_flops(pruned, x)["total"] == predicted < method.dense_flops["total"]
    with torch.no_grad():
        torch.testing.assert_close(pruned(xs), gated, rtol=0, atol=1e-5)
    # differentiable: d F / d g_c is what channel c costs (F is linear in each single gate)
    live = {n: v.clone().requires_grad_() for n, v in gates.items()}
    method.flops_of(live).backward()
    name = "layer2.0.conv1"
    for c in (0, 5):
        on, off = dict(gates), dict(gates)
        on[name], off[name] = gates[name].clone(), gates[name].clone()
        on[name][c], off[name][c] = 1.0, 0.0
        assert float(live[name].grad[c]) == pytest.approx(float(method.flops_of(on) - method.flops_of(off)), rel=1e-12)


def test_budget_met_after_training_on_digits():
    """From scratch on the digits: the cost term brings the gates from all open to the budget
    before they freeze; the finalized network is smaller, meets the budget, learned, and
    computes what the gated one did."""
    d = load_digits(images=True)
    model = _digits_cnn()
    epochs, batch = 10, 64
    per_epoch = len(d.x_train) // batch
    method = WGates(model, budget=0.5, cost_weight=2.0, total_steps=epochs * per_epoch, example_input=d.x_train[:1])
    assert method.gate_flops_fraction().item() == 1.0  # every gate starts open
    before_freeze = train_on_digits(method, model, d, epochs, batch)  # what the cost term reached
    assert method.frozen
    assert before_freeze <= 0.5 + 0.05, before_freeze  # measured 0.48
    assert 0.5 - 0.15 <= method.gate_flops_fraction().item() <= 0.5  # one channel costs up to 12%
    model.eval()
    with torch.no_grad():
        gated = model(d.x_train[:256])
    predicted = method.predicted_flops()
    pruned = method.finalize()
    assert layer_flops(pruned, d.x_train[:1])["total"] == predicted <= 0.5 * method.dense_flops["total"]
    with torch.no_grad():
        torch.testing.assert_close(pruned(d.x_train[:256]), gated, rtol=0, atol=1e-5)
        accuracy = (pruned(d.x_test).argmax(1) == d.y_test).float().mean().item()
    assert accuracy > 0.5, accuracy  # measured 0.69 (10 epochs from scratch at half the FLOPs)
    assert not any("channel_gate" in k for k in pruned.state_dict())


def test_freeze_meets_the_budget_by_closing_the_lowest_scores():
    """Frozen above the budget, the lowest-scoring open channels close, the fewest that meet it;
    frozen, the gate MLPs still get a (zero) gradient every step (DistributedDataParallel)."""
    x = torch.zeros(1, 1, 8, 8)
    model = _digits_cnn()
    method = WGates(model, example_input=x, budget=0.3)
    with torch.no_grad():
        for m in method.gate_modules.values():
            m.net[-1].weight.normal_(0.0, 0.1)  # all open, with scores of different heights
    scores = method.scores()
    assert all(bool((s > 0).all()) for s in scores.values())
    gates = method.freeze()
    assert method.frozen and method.predicted_flops() <= 0.3 * method.dense_flops["total"]
    closed = torch.cat([scores[g][gates[g] == 0] for g in gates])
    kept = torch.cat([scores[g][gates[g] == 1] for g in gates])
    assert closed.numel() > 0 and float(closed.max()) <= float(kept.min())  # the lowest went
    reopened = {g: v.clone() for g, v in gates.items()}
    best = max((float(scores[g][i]), g, i) for g in gates for i in (gates[g] == 0).nonzero().flatten().tolist())
    reopened[best[1]][best[2]] = 1.0
    assert float(method.flops_of(reopened)) > 0.3 * method.dense_flops["total"]  # none closed needlessly
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    for m in method.gate_modules.values():
        assert all(p.grad is not None and not p.grad.any() for p in m.net.parameters())


@pytest.mark.parametrize("fill", [True, False])
def test_freeze_below_the_budget_reopens_the_highest_scores(fill):
    x = torch.zeros(1, 1, 8, 8)
    method = WGates(_digits_cnn(), example_input=x, budget=0.6, fill_budget=fill)
    with torch.no_grad():
        for m in method.gate_modules.values():  # mostly closed: far below the budget
            m.net[-1].weight.normal_(0.0, 0.1)
            m.net[-1].bias.fill_(-0.2)
    scores, before = method.scores(), {g: v.detach().clone() for g, v in method.gates().items()}
    limit = 0.6 * method.dense_flops["total"]
    assert float(method.flops_of(before)) < limit - 0.2 * method.dense_flops["total"]
    gates = method.freeze()
    if not fill:  # as they were, but a group with every gate closed reopens its best channel
        for g, v in before.items():
            if not v.any():
                v[scores[g].argmax()] = 1.0
            assert torch.equal(gates[g], v)
        return
    assert float(method.flops_of(gates)) <= limit
    opened = torch.cat([scores[g][(gates[g] == 1) & (before[g] == 0)] for g in gates])
    still = torch.cat([scores[g][gates[g] == 0] for g in gates])
    assert opened.numel() > 0 and float(opened.min()) >= float(still.max())  # the highest came back
    best = max((float(scores[g][i]), g, i) for g in gates for i in (gates[g] == 0).nonzero().flatten().tolist())
    more = {g: v.clone() for g, v in gates.items()}
    more[best[1]][best[2]] = 1.0
    assert float(method.flops_of(more)) > limit  # as many as fit


def test_gates_live_in_the_model_state_dict_and_deep_copies():
    x = torch.zeros(1, 1, 8, 8)
    model = _digits_cnn()
    method = WGates(model, example_input=x)
    with torch.no_grad():
        method.gate_modules["0"].net[-1].weight.normal_(0.0, 1.0)
        method.gate_modules["0"].net[-1].bias.zero_()
    method.freeze()
    state = model.state_dict()
    assert "0.channel_gate.fixed" in state and bool(state["0.channel_gate.frozen"])
    fresh = _digits_cnn(seed=1)
    again = WGates(fresh, example_input=x)
    fresh.load_state_dict(state)  # strict: a checkpoint of a frozen run loads into a new one
    assert again.frozen and torch.equal(again.gates()["0"], method.gates()["0"])
    # a deep copy's gates read the copy's filters
    clone = copy.deepcopy(model)
    gate = clone[0].channel_gate
    assert gate.layers[0] is clone[0] and gate.layers[0] is not model[0]


def test_bad_options_are_clear_errors(tmp_path):
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="WGates needs example_input"):
        WGates(_digits_cnn())
    with pytest.raises(ValueError, match=r"budget must be a number in \(0, 1\], got 0"):
        WGates(_digits_cnn(), example_input=x, budget=0)
    with pytest.raises(ValueError, match="hidden must be an int >= 0, got 2.5"):
        WGates(_digits_cnn(), example_input=x, hidden=2.5)
    with pytest.raises(UsageError, match=r"--method wgates: budget must be a number in \(0, 1\], got 2"):
        train.setup(parse_args(["--dataset", "digits", "--model", "small_cnn", "--method", "wgates",
                                "--method-opt", "budget=2", "--no-progress", "--output-dir", str(tmp_path)]),
                    distributed.Procs())


@pytest.mark.parametrize("model", ["small_cnn", "resnet20"])
def test_ltp_train_method_wgates(model, tmp_path):
    """`ltp-train --method wgates` on the digits (small_cnn) and on a CIFAR-format folder of
    real digits (ResNet-20): the trail holds the finalized, smaller network."""
    data = (["--dataset", "digits"] if model == "small_cnn" else
            ["--dataset", "cifar10", "--data-path", str(write_digits_cifar10(tmp_path / "cifar", per_class=4))])
    out = tmp_path / "run"
    flags = [*data, "--model", model, "--method", "wgates", "--method-opt", "budget=0.5", "--method-opt",
             "freeze_fraction=0.5", "--epochs", "2", "-b", "128" if model == "small_cnn" else "8", "--lr", "0.01",
             "--opt", "adam", "-j", "0", "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    assert train.main(flags) == 0
    steps = sorted((out / "trail").glob("step_*.pt"))
    state = torch.load(steps[-1], weights_only=True)
    assert not any("channel_gate" in k for k in state)
    sample = (1, 8, 8) if model == "small_cnn" else (3, 32, 32)
    dense = get_model(model, 10, in_channels=sample[0], image_size=sample[1])
    dense_params = sum(p.numel() for p in dense.parameters())
    pruned = load_pruned_state_dict(dense, state)  # the same architecture at the kept widths
    assert sum(p.numel() for p in pruned.parameters()) < dense_params
    with torch.no_grad():
        assert pruned.eval()(torch.zeros(2, *sample)).shape == (2, 10)
