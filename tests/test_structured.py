"""Channel surgery through Torch-Pruning's dependency graph (ltp_core.methods.surgery), the
StructuredMethod contract, and the four structured methods on residual and torchvision networks,
in the library and through ltp-train / ltp-pick.

Every network here is built with random weights (weights=None) and run on small inputs on the
CPU. The surgery is checked three ways on each: the smaller network computes what the network
whose readers see the removed channels as zero computes, its FLOPs measured by FlopCounterMode
equal the prediction, and its state_dict loads into the dense architecture resized to it.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ltp_core.core.flops import layer_flops
from ltp_core.core.trail import Trail
from ltp_core.deploy import pick
from ltp_core.engine import train
from ltp_core.engine.train import parse_args
from ltp_core.methods import DSA, GDP, GReg, L1Filter, StructuredMethod, build
from ltp_core.methods import surgery as S
from ltp_core.methods.surgery import (
    ChannelMap,
    channel_plan,
    check_plan,
    load_pruned,
    load_pruned_state_dict,
    mask_readers,
    predicted_flops,
    remove_channels_,
    save_pruned,
)
from ltp_core.models import get_model, mlp, resnet20, resnet56, small_cnn


def vgg_chain():
    """A VGG-style chain: Conv-BN-ReLU blocks with max pooling, a Flatten, two Linear layers."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))


NETWORKS = {  # name -> (builder, input shape)
    "resnet20": (lambda: resnet20(), (2, 3, 16, 16)),
    "resnet20_B": (lambda: resnet20(shortcut="B"), (2, 3, 16, 16)),
    "resnet56": (lambda: resnet56(), (2, 3, 8, 8)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (2, 3, 32, 32)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), (2, 3, 32, 32)),
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(num_classes=10), (2, 3, 48, 48)),  # concatenations
    "vgg_chain": (vgg_chain, (2, 3, 16, 16)),
    "small_cnn": (lambda: small_cnn(), (2, 1, 8, 8)),
    "mlp": (lambda: mlp(hidden=(48, 32), batch_norm=True), (2, 64)),
}


def make(name, seed=0):
    torch.manual_seed(seed)
    builder, shape = NETWORKS[name]
    model = builder().eval()
    with torch.no_grad():  # BatchNorm statistics other than (0, 1), so a wrong channel shows
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))


def random_keep(plan, seed=0, fraction=0.5):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randperm(grp.channels, generator=g)[:max(1, round(fraction * grp.channels))].sort().values
            for n, grp in plan.groups.items()}


def masked_output(model, plan, keep, x):
    handles = mask_readers(model, plan, keep)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def assert_same(a, b, tol=1e-5):
    scale = max(1.0, float(b.abs().max()))
    assert a.shape == b.shape and float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# -- the surgery -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NETWORKS))
def test_surgery_equals_the_masked_network_flops_and_load(name):
    model, x = make(name)
    plan = channel_plan(model, x[:1])
    assert plan.groups
    keep = random_keep(plan)
    expected = masked_output(model, plan, keep, x)
    dense = layer_flops(model, x[:1])
    dense_params = n_params(model)
    remove_channels_(model, plan, keep)
    with torch.no_grad():
        got = model(x)
    assert_same(got, expected)
    assert layer_flops(model, x[:1])["total"] == predicted_flops(plan, dense, keep) < dense["total"]
    assert n_params(model) < dense_params
    fresh = load_pruned_state_dict(make(name, seed=5)[0], model.state_dict())  # strict
    with torch.no_grad():
        assert_same(fresh.eval()(x), expected)


def test_groups_follow_residual_adds_depthwise_convs_and_excitation():
    model, x = make("resnet20")
    plan = channel_plan(model, x[:1])
    stream = plan.groups["conv1"]  # stage 1: the stem and every block's second conv, joined by the adds
    assert stream.producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert stream.readers == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1",
                              "layer2.0.shortcut"]
    assert plan.group_of("layer1.2.bn2") == "conv1" and "fc" not in plan.groups  # the classifier stays whole
    assert len(plan.groups) == 1 + 9 + 2  # three streams (the option-A shortcut separates them), nine inner convs
    model, x = make("resnet18")
    layer1 = channel_plan(model, x[:1]).groups["conv1"]
    assert layer1.producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    model, x = make("efficientnet_b0")
    plan = channel_plan(model, x[:1])
    stem = plan.groups["features.0.0"]  # the stem, the first block's depthwise conv and its excitation gate
    assert stem.depthwise == ["features.1.0.block.0.0"] and stem.producers == ["features.0.0",
                                                                               "features.1.0.block.1.fc2"]
    assert stem.readers == ["features.1.0.block.1.fc1", "features.1.0.block.2.0"]


def test_option_a_shortcut_becomes_a_channel_map_and_saves_whole(tmp_path):
    model, x = make("resnet20")
    plan = channel_plan(model, x[:1])
    keep = random_keep(plan, seed=3)
    expected = masked_output(model, plan, keep, x)
    remove_channels_(model, plan, keep)
    assert isinstance(model.layer2[0].shortcut, ChannelMap)
    assert model.layer2[0].shortcut.source.numel() == keep["layer2.0.conv2"].numel()  # stage 2's kept channels
    save_pruned(model, tmp_path / "net.pt")
    loaded = load_pruned(tmp_path / "net.pt")  # torch.load(weights_only=True), the model's classes allowed
    with torch.no_grad():
        assert_same(loaded.eval()(x), expected)
    torch.save(nn.Sequential(Unlisted()), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="Unlisted"):
        load_pruned(tmp_path / "other.pt")


class Unlisted(nn.Module):
    def forward(self, x):
        return x


def test_a_wrong_coupling_breaks_the_checks():
    """The checks can fail: drop one member from a coupled group and the smaller network no
    longer computes the masked one (or does not run), and check_plan names the group."""
    model, x = make("resnet20")
    plan = channel_plan(model, x[:1])
    broken = copy.deepcopy(plan)
    broken.groups["conv1"].members = [m for m in broken.groups["conv1"].members if m.module != "layer1.1.bn2"]
    with pytest.raises(ValueError, match=r"group\(s\) of 'conv1' \("):
        check_plan(model, broken, x[:1])
    check_plan(model, plan, x[:1])  # the true plan passes
    keep = random_keep(broken)
    with pytest.raises(RuntimeError):  # BatchNorm 'layer1.1.bn2' kept 16 channels, its input lost some
        remove_channels_(copy.deepcopy(model), broken, keep)(x)
    shifted = copy.deepcopy(plan)  # the right members, the wrong channel of one of them
    member = next(m for m in shifted.groups["layer1.0.conv1"].members if m.role == "reader")
    member.roots = member.roots.roll(1)
    keep = random_keep(shifted)
    expected = masked_output(model, shifted, keep, x)
    clone = remove_channels_(copy.deepcopy(model), shifted, keep)
    with torch.no_grad():
        assert float((clone(x) - expected).abs().max()) > 1e-3


class InputAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head((x + self.conv(x)).mean((2, 3)))


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x).relu()
        return self.head(y.reshape(y.shape[0], 8, -1).mean(2))


class ChannelSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        a, b = self.conv(x).split(4, 1)
        return self.head(torch.cat([self.inner(a), b], 1).mean((2, 3)))


class Normed(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("model, match", [
    (InputAdd(), r"cannot prune InputAdd: .*group\(s\) of 'conv' \(RuntimeError"),  # the input cannot shrink
    (HardCoded(), r"cannot prune HardCoded: .*group\(s\) of 'conv' \(RuntimeError"),  # reshape to 8 channels
    (ChannelSplit(), r"cannot prune ChannelSplit: the forward splits or slices the channels .*SplitOp"),
    (Normed(nn.GroupNorm(2, 8)), r"layer 'norm' \(GroupNorm\) takes the channels"),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)),
     r"layer '1' is a grouped convolution \(groups=2\)"),
])
def test_what_the_graph_cannot_handle_is_refused_naming_the_layer(model, match):
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=match):
        check_plan(model, channel_plan(model, x, "L1Filter"), x, "L1Filter")


def test_an_operation_taken_as_element_wise_that_changes_channels_is_refused(monkeypatch):
    # without its registration, the option-A shortcut's zero padding looks element-wise to the graph
    monkeypatch.setattr(S, "MAP_TYPES", (ChannelMap,))
    with pytest.raises(ValueError, match=r"the 32 channels of layer 'layer2.0.conv2' are joined with the 16 channels "
                                         r"of 'conv1' through ConstantPadNdBackward0"):
        channel_plan(resnet20(), torch.randn(1, 3, 16, 16))


def test_a_model_needs_an_example_input_unless_it_is_a_chain():
    with pytest.raises(ValueError, match="needs an example_input .* CifarResNet"):
        channel_plan(resnet20())
    chain = channel_plan(small_cnn())  # read layer by layer: the same groups as traced
    traced = channel_plan(small_cnn(), torch.randn(1, 1, 8, 8))
    assert {n: [(m.module, m.role) for m in g.members] for n, g in chain.groups.items()} == \
        {n: [(m.module, m.role) for m in g.members] for n, g in traced.groups.items()}


# -- the StructuredMethod contract ---------------------------------------------------------------

class Scale(nn.Module):
    """A gate module: fixed values, 0 on the channels to remove."""

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(values)

    def forward(self):
        return self.values


class FixedGates(StructuredMethod):
    """The smallest subclass: keep_indices() from a dict, gates from attach_gates."""

    def __init__(self, model, keep, example_input, exclude=()):
        super().__init__(model, exclude, example_input)
        self.keep = {g: k for g, k in keep.items() if g in self.groups}
        g = torch.Generator().manual_seed(0)
        gates = {}
        for name, grp in self.groups.items():
            values = torch.rand(grp.channels, generator=g) + 0.5
            values[~torch.isin(torch.arange(grp.channels), self.keep[name])] = 0.0
            gates[name] = Scale(values)
        self.attach_gates(gates)

    def keep_indices(self):
        return self.keep


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_a_subclass_with_gates_finalizes_to_the_gated_network(name):
    model, x = make(name)
    keep = random_keep(channel_plan(model, x[:1]), seed=1)
    method = FixedGates(model, keep, x[:1])
    assert all(hasattr(model.get_submodule(g), "channel_gate") for g in method.groups)
    with torch.no_grad():
        gated = model(x)  # the gates alone: the closed channels read as 0, the others scaled
        with method.hard_masks():
            assert_same(model(x), gated)
    clone = copy.deepcopy(model)  # a copy carries its own gates
    ungated = method.ungated_copy()  # every channel, no gates: the network before the method
    assert not any("channel_gate" in k for k in ungated.state_dict())
    assert not any(m._forward_pre_hooks for m in ungated.modules())
    assert n_params(ungated) == n_params(make(name)[0])
    with torch.no_grad():
        assert_same(ungated(x), make(name)[0](x))
        assert_same(model(x), gated)  # the model still carries its gates
    hard = method.hard_state_dict()
    assert method.flops() == method.predicted_flops() == layer_flops(method.finalized_copy(), x[:1])["total"]
    plain = method.finalize()
    assert not any("channel_gate" in k for k in plain.state_dict()) and list(hard) == list(plain.state_dict())
    assert not any(m._forward_pre_hooks for m in plain.modules())
    with torch.no_grad():
        assert_same(plain(x), gated)
        assert_same(clone(x), gated)
    assert method.sparsity()["total"] > 0.3


def test_contract_names_and_bad_input():
    model, x = make("resnet20")
    method = FixedGates(model, random_keep(channel_plan(model, x[:1])), x[:1], exclude=["layer1.1.bn2"])
    assert "conv1" not in method.groups and "conv1" in method.all_groups  # a member's name excludes its group
    with pytest.raises(ValueError, match="already has a channel_gate"):
        method.attach_gates({"layer1.0.conv1": Scale(torch.ones(16))})
    with pytest.raises(ValueError, match=r"\['nope'\] are not prunable channel groups"):
        method.attach_gates({"nope": Scale(torch.ones(16))})
    with pytest.raises(ValueError, match=r"exclude names \['fc'\] are not layers whose channels can be removed"):
        FixedGates(make("resnet20")[0], {}, x[:1], exclude=["fc"])
    with pytest.raises(ValueError, match=r"channels to keep of group 'conv1' must be 1..16 indices"):
        method.predicted_flops({"conv1": torch.tensor([], dtype=torch.long)})


# -- the four methods on residual and torchvision networks --------------------------------------

def fit_steps(model, method, x, steps, lr=0.05):
    y = torch.arange(len(x)) % 10
    opt = torch.optim.SGD(method.param_groups(), lr=lr)
    model.train()
    for step in range(1, steps + 1):
        loss = F.cross_entropy(model(x), y) + method.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step)
    model.eval()


def finalize_and_compare(method, x):
    with torch.no_grad(), method.hard_masks():
        deployed = method.model(x)
    predicted = method.predicted_flops()
    plain = method.finalize()
    with torch.no_grad():
        assert_same(plain(x), deployed)
    assert layer_flops(plain, x[:1])["total"] == predicted
    return plain


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_l1_filter_ranks_a_coupled_group_by_all_its_producers(name):
    model, x = make(name)
    plan = channel_plan(model, x[:1])
    group = next(g for g in plan.groups.values() if len(g.producers) > 1 and not g.depthwise)
    norms = sum(torch.zeros(group.channels).index_add_(0, m.roots, model.get_submodule(m.module).weight.detach()
                                                      .abs().flatten(1).sum(1)[m.positions])
                for m in group.members if m.role == "producer")
    expected = norms.argsort(descending=True)[:group.channels // 2].sort().values
    first = model.get_submodule(group.producers[0]).weight.detach()[expected].clone()
    method = L1Filter(model, ratio=0.5, example_input=x[:1])
    assert torch.equal(method.kept_at_construction[group.name], expected)
    if first.shape[1] == 3:  # ResNet-18's stem reads the image: its kept rows are whole
        assert torch.equal(model.get_submodule(group.producers[0]).weight.detach(), first)
    for p in group.producers + group.norms + group.depthwise:  # every member lost the same channels
        assert model.get_submodule(p).weight.shape[0] == group.channels // 2, p
    assert method.flops_after == method.flops_predicted < 0.5 * method.flops_before
    finalize_and_compare(method, x)


def test_greg_zeroes_coupled_groups_then_removes_them():
    model, x = make("resnet20")
    method = GReg(model, ratio=0.25, delta=0.5, interval=1, ceiling=1.0, stabilize_steps=1, example_input=x[:1])
    fit_steps(model, method, x, steps=4, lr=0.01)
    assert method.phase == "pruned"
    stream = method.groups["conv1"]
    picked = method.picked["conv1"]
    assert int(picked.sum()) == 4
    for p in stream.producers + stream.norms:  # every layer a skip connection joins holds them at 0
        assert bool((model.get_submodule(p).weight[picked] == 0).all()), p
    with torch.no_grad():
        zeroed = model(x)
    plain = finalize_and_compare(method, x)
    with torch.no_grad():
        assert_same(plain(x), zeroed)  # zeroed groups: removal changes nothing
    assert plain.conv1.weight.shape[0] == plain.layer1[2].conv2.weight.shape[0] == 12


def test_gdp_shares_one_gate_across_a_skip_connection_and_meets_its_budget():
    model, x = make("resnet20")
    dense = copy.deepcopy(model)
    method = GDP(model, lambda_=0.5, budget=0.4, total_steps=6, example_input=x[:1])
    gates = method.gates
    assert set(gates) == set(method.groups) and "layer1.0.conv2" not in gates  # joined into the stem's group
    assert gates["conv1"].numel() == 16 and model.conv1.channel_gate.gate is gates["conv1"]
    with torch.no_grad():  # closing one gate of the stream removes that channel from all 4 convs and 5 readers
        gates["conv1"][5] = 0.0
        closed = model(x)
        gates["conv1"][5] = 1.0
        plan = channel_plan(dense, x[:1])
        remove_channels_(dense, plan, {"conv1": torch.tensor([c for c in range(16) if c != 5])})
        assert_same(dense(x), closed)
    fit_steps(model, method, x, steps=6, lr=0.05)
    assert method.cut is not None and method.lambda_ == 0.0
    assert 0.4 - 0.05 <= method.flops_fraction() <= 0.4
    plain = finalize_and_compare(method, x)
    assert layer_flops(plain, x[:1])["total"] / method.dense_flops["total"] <= 0.4


def test_gdp_with_default_options_prunes():
    model, x = make("resnet20")
    method = build("gdp", model, total_steps=4, example_input=x[:1])
    assert method.budget == 0.5 and method.cut_step == 2
    fit_steps(model, method, x, steps=4)
    assert sum(method.kept_channels().values()) < sum(g.channels for g in method.groups.values())
    assert method.flops_fraction() <= 0.5
    finalize_and_compare(method, x)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_dsa_style_projection_meets_the_budget_on_coupled_groups(name):
    model, x = make(name)
    method = DSA(model, example_input=x[:1], budget=0.5)
    fit_steps(model, method, x, steps=3, lr=0.01)
    assert 0.45 <= method.flops_fraction() <= 0.5
    plain = finalize_and_compare(method, x)
    assert layer_flops(plain, x[:1])["total"] / method.dense_flops["total"] <= 0.5


# -- ltp-train and ltp-pick --------------------------------------------------------------------------

RUNS = [  # method, model, dataset, extra --method-opt
    ("l1_filter", "resnet20", "cifar10", []),
    ("greg", "resnet20", "cifar10", ["interval=1"]),
    ("gdp", "resnet20", "cifar10", []),
    ("dsa", "resnet20", "cifar10", ["budget=0.6"]),
    ("gdp", "resnet18", "imagenet", ["budget=0.7"]),
    ("l1_filter", "mobilenet_v2", "imagenet", ["ratio=0.3"]),
]


@pytest.mark.parametrize("method, model, dataset, opts", RUNS, ids=[f"{r[0]}-{r[1]}" for r in RUNS])
def test_ltp_train_then_ltp_pick_then_finalize(method, model, dataset, opts, tiny_cifar, tiny_imagenet, tmp_path,
                                               capsys):
    out = tmp_path / "run"
    data = ["--dataset", "cifar10", "--data-path", str(tiny_cifar)] if dataset == "cifar10" else \
        ["--dataset", "imagenet", "--data-path", str(tiny_imagenet), "--train-crop-size", "32",
         "--val-resize-size", "32", "--val-crop-size", "32"]
    flags = [*data, "--model", model, "--method", method, *[a for o in opts for a in ("--method-opt", o)],
             "--epochs", "1", "-b", "8", "--lr", "0.02", "-j", "0", "--device", "cpu", "--no-progress",
             "--output-dir", str(out)]
    result = train.run(parse_args(flags))
    trail = Trail.load(out)
    classes = 10 if dataset == "cifar10" else 3
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense = layer_flops(get_model(model, classes, image_size=32), x[:1])["total"]
    assert 0 < trail[-1]["sparsity"] < 1 and trail[-1]["flops"] < 0.95 * dense and trail[-1]["hard_accuracy"] >= 0
    # ltp-pick writes the chosen network's plain state_dict; it loads into the dense architecture
    assert pick.main([str(out), "--min-accuracy", "0", "--out", str(tmp_path / "picked.pt"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    picked = torch.load(tmp_path / "picked.pt", weights_only=True)
    arch = load_pruned_state_dict(get_model(model, classes, image_size=32).eval(), picked)
    assert n_params(arch) < n_params(get_model(model, classes, image_size=32))
    assert record["step"] in (0, trail[-1]["step"])
    # finalize() gives the network of the last record, with the gated / masked network's outputs
    live, net = result.method, result.model.eval()
    with torch.no_grad(), live.hard_masks():
        deployed = net(x)
    last = trail.load_checkpoint(trail[-1])
    plain = live.finalize()
    assert list(last) == list(plain.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, last[k]), k
    with torch.no_grad():
        assert_same(plain(x), deployed)
        loaded = load_pruned_state_dict(get_model(model, classes, image_size=32).eval(), last)
        assert_same(loaded(x), deployed)


def test_the_ltp_train_command_with_gdp_defaults_prunes(tiny_cifar, tmp_path):
    """`ltp-train --method gdp` with no --method-opt cuts to half the dense FLOPs at mid-run."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "ltp_core.engine.train", "--dataset", "cifar10", "--data-path", str(tiny_cifar),
           "--model", "resnet20", "--method", "gdp", "--epochs", "2", "-b", "8", "--lr", "0.02", "-j", "0",
           "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trail = Trail.load(out)
    dense = layer_flops(resnet20(), torch.zeros(1, 3, 32, 32))["total"]
    assert trail[0]["sparsity"] == 0 and trail[-1]["flops"] <= 0.5 * dense and trail[-1]["sparsity"] > 0.1
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["method"]["cut"] is not None and ckpt["method"]["lambda_"] == 0.0
