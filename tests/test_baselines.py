"""The comparison methods of ltp_core.methods and the registry in ltp_core.methods."""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from ltp_core.core.flops import layer_flops
from ltp_core.methods import (
    DSA,
    GDP,
    GMP,
    LATS,
    METHODS,
    STR,
    GReg,
    L1Filter,
    Magnitude,
    build,
    channel_links,
    gmp_sparsity,
    lats_schedule,
    magnitude_masks,
    method_names,
)
from ltp_core.models import mlp, small_cnn


def cnn_batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(10, (n,), generator=g)


def mlp_batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(10, (n,), generator=g)


def train(model, method, x, y, steps, lr=0.05, **group_options):
    """`steps` SGD steps on one batch with the method's loss term and hook; returns the losses."""
    opt = torch.optim.SGD(method.param_groups(**group_options), lr=lr)
    losses = []
    for step in range(1, steps + 1):
        loss = F.cross_entropy(model(x), y) + method.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(method, "after_step"):
            method.after_step(step)
        losses.append(loss.item())
    return losses


def widths(model):
    """Output widths of every Conv/Linear but the last, i.e. the family's width arguments."""
    return tuple(m.weight.shape[0] for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))[:-1]


# -- magnitude / GMP ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: small_cnn(), lambda: mlp(hidden=(48, 32))], ids=["cnn", "mlp"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.77])
def test_magnitude_masks_match_torch_prune(make, sparsity):
    torch.manual_seed(1)
    model = make()
    layer_masks = magnitude_masks(model, sparsity, scope="layer")
    global_masks = magnitude_masks(model, sparsity, scope="global")
    reference = copy.deepcopy(model)
    for name, module in reference.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(module, "weight", amount=sparsity)
            assert torch.equal(module.weight_mask.bool(), layer_masks[name]), name
    reference = copy.deepcopy(model)
    layers = [(n, m) for n, m in reference.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                              amount=sparsity)
    for name, module in layers:
        assert torch.equal(module.weight_mask.bool(), global_masks[name]), name
    pruned = sum(int((~k).sum()) for k in global_masks.values())
    assert pruned == round(sparsity * sum(k.numel() for k in global_masks.values()))


def test_magnitude_one_shot_masks_fixed_and_finalize():
    torch.manual_seed(0)
    model = small_cnn()
    expected = magnitude_masks(model, 0.6, scope="layer")
    method = Magnitude(model, sparsity=0.6, scope="layer")
    x, y = cnn_batch()
    train(model, method, x, y, steps=5)
    for name, keep in method.masks().items():
        assert torch.equal(keep, expected[name])
        assert bool((model.get_submodule(name).weight[~keep] == 0).all())
    assert method.sparsity()["total"] == pytest.approx(0.6, abs=0.01)


def test_gmp_cubic_schedule_values():
    kw = dict(final=0.8, initial=0.1, start=10, end=110, frequency=10)
    assert gmp_sparsity(5, **kw) == 0.0  # not started
    assert gmp_sparsity(10, **kw) == pytest.approx(0.1)
    assert gmp_sparsity(60, **kw) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5 ** 3)
    assert gmp_sparsity(65, **kw) == gmp_sparsity(60, **kw)  # held between pruning steps
    assert gmp_sparsity(110, **kw) == pytest.approx(0.8) == gmp_sparsity(10_000, **kw)
    values = [gmp_sparsity(t, **kw) for t in range(10, 111, 10)]
    increments = [b - a for a, b in zip(values, values[1:])]
    assert all(d > 0 for d in increments) and increments == sorted(increments, reverse=True)  # fast, then slow


def test_gmp_follows_schedule_and_masks_only_grow():
    torch.manual_seed(0)
    model = mlp(hidden=(48, 32))
    method = GMP(model, sparsity=0.9, total_steps=40, frequency=5, scope="global")
    assert method.schedule["end"] == 30  # 0.75 * total_steps
    x, y = mlp_batch()
    opt = torch.optim.SGD(method.param_groups(), lr=0.05)
    previous = {n: k.clone() for n, k in method.masks().items()}
    for step in range(1, 41):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step)
        assert method.sparsity()["total"] == pytest.approx(method.target_sparsity(step), abs=1e-3)
        for name, keep in method.masks().items():
            assert not bool((keep & ~previous[name]).any())  # nothing revived
            previous[name] = keep.clone()
    assert method.sparsity()["total"] == pytest.approx(0.9, abs=1e-3)


# -- STR ---------------------------------------------------------------------------------------
def test_str_forward_formula_and_gradients():
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    method = STR(model, s_init=-3.0)
    for name, layer in method.layers.items():
        w = method.weights()[name]
        cut = torch.sigmoid(torch.tensor(-3.0))
        assert torch.allclose(layer.weight, torch.sign(w) * torch.relu(w.abs() - cut))
    x, y = mlp_batch()
    F.cross_entropy(model(x), y).backward()
    for name in method.layers:
        w, s = method.weights()[name], method.thresholds[name]
        pruned = w.abs() <= torch.sigmoid(s)
        assert pruned.any() and bool((w.grad[pruned] == 0).all())  # pruned weights get no gradient
        assert s.grad is not None and float(s.grad) != 0.0


def test_str_sparsity_rises_with_weight_decay_on_s():
    x, y = mlp_batch(64)
    results = []
    for decay in (0.0, 0.1, 0.2):
        torch.manual_seed(0)
        model = mlp(hidden=(32,))
        method = STR(model, s_init=-6.0, threshold_weight_decay=decay)
        train(model, method, x, y, steps=60, lr=0.1)
        results.append(method.sparsity()["total"])
    assert results[0] < results[1] < results[2] < 1.0, results  # measured ~0.14, 0.25, 0.65
    assert results[2] - results[0] > 0.3, results


# -- LATS --------------------------------------------------------------------------------------
def test_lats_implied_lambda_constant_under_cosine_lr():
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    steps, base = 200, 0.1
    cosine = lambda t: base * 0.5 * (1 + math.cos(math.pi * t / steps)) + 1e-4  # noqa: E731
    method = LATS(model, threshold=0.05, schedule="lats", total_steps=steps, lr_schedule=cosine)
    lambdas = method.implied_lambdas()
    total_lr = sum(cosine(t) for t in range(steps))
    assert torch.allclose(lambdas, torch.full_like(lambdas, 0.05 / total_lr), rtol=1e-9)
    # the thresholds the model sees follow it: d_t = D * sum_{s<t} lr_s / sum lr
    method.after_step(50)
    assert method.threshold == pytest.approx(0.05 * sum(cosine(t) for t in range(50)) / total_lr, rel=1e-5)
    # with a constant lr the same schedule is linear
    linear = lats_schedule("lats", 100, 1.0)
    assert torch.allclose(linear, torch.linspace(0, 1, 101, dtype=torch.float64))


def test_lats_soft_threshold_with_straight_through_gradient():
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    method = LATS(model, threshold=0.05, schedule="constant")
    name, layer = next(iter(method.layers.items()))
    w = method.weights()[name]
    assert torch.allclose(layer.weight, torch.sign(w) * torch.relu(w.abs() - 0.05))
    layer.weight.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through, pruned weights included
    assert method.sparsity()[name] == pytest.approx(float((w.abs() <= 0.05).float().mean()))


def test_lats_variant_schedule_shapes():
    n, d = 100, 0.2
    slats, pgh, const = (lats_schedule(k, n, d) for k in ("slats", "pgh", "constant"))
    for sched in (slats, pgh):
        assert sched[0] == 0 and sched[-1] == pytest.approx(d)
        inc = sched[1:] - sched[:-1]
        assert bool((inc >= -1e-15).all())
        assert inc[: n // 4].mean() > inc[-n // 4:].mean()  # front-loaded, flat at the end
    x = torch.arange(n + 1, dtype=torch.float64) / n
    assert torch.allclose(slats, d * (x + torch.sin(math.pi * x) / math.pi))
    assert pgh[n // 4] > slats[n // 4] > d / 4  # PGH prunes earliest (beta=0.1)
    assert torch.equal(const, torch.full((n + 1,), d, dtype=torch.float64))


# -- GReg --------------------------------------------------------------------------------------
def test_greg_penalty_grows_then_groups_removed():
    torch.manual_seed(0)
    model = small_cnn()
    method = GReg(model, ratio=0.5, delta=0.25, interval=2, ceiling=1.0, stabilize_steps=2, include_norm=False)
    x, _ = cnn_batch()
    model.eval()
    with method.hard_masks():  # before any pruning: the network finalize() would give
        assert torch.allclose(model(x), method.finalized_copy().eval()(x), atol=1e-5)
    assert model[0].weight.abs().sum().item() > 0 and method.phase == "grow"
    penalties = []
    for step in range(1, 9):
        method.after_step(step)
        penalties.append(method.regularizer().item())
    # lambda: 0, .25, .25, .5, .5, .75, .75, 1 -> the penalty grows linearly with it (weights fixed)
    assert penalties[0] == 0 and penalties[1] > 0
    assert penalties[3] == pytest.approx(2 * penalties[1]) and penalties[7] == pytest.approx(4 * penalties[1])
    assert method.phase == "stabilize"
    method.after_step(9)
    method.after_step(10)
    assert method.phase == "pruned" and float(method.regularizer()) == 0
    conv = model[0]
    assert bool((conv.weight[method.picked["0"]] == 0).all())
    before = model(x)
    method.finalize()
    assert widths(model) == (8, 16)
    assert torch.allclose(model(x), before, atol=1e-5)  # zeroed groups: removal changes nothing
    small_cnn(channels=(8, 16)).load_state_dict(model.state_dict())


def test_greg_penalty_pulls_groups_down_and_greg2_picks_late():
    torch.manual_seed(0)
    model = mlp(hidden=(32, 32), batch_norm=True)
    method = GReg(model, ratio=0.25, variant=2, total_steps=40, interval=2, reg_fraction=0.5)
    assert method.phase == "pick" and method.picked is None
    start = {p: model.get_submodule(p).weight.norm().item() for p in method.groups}
    x, y = mlp_batch()
    train(model, method, x, y, steps=40, lr=0.1)
    assert method.phase == "pruned" and method.picked is not None
    for p, chosen in method.picked.items():
        assert int(chosen.sum()) == 8
        assert model.get_submodule(p).weight.norm().item() < start[p]
    assert method.sparsity()["0"] == pytest.approx(0.25)
    method.finalize()
    assert widths(model) == (24, 24)
    mlp(hidden=(24, 24), batch_norm=True).load_state_dict(model.state_dict())


def test_greg_state_dict_resumes_the_schedule_exactly():
    """lambda, the picked groups and the phase live outside the model: a checkpoint needs
    state_dict(), or a resumed GReg starts growing lambda again from 0."""
    def make():
        torch.manual_seed(0)
        model = mlp(hidden=(32, 32), batch_norm=True)
        return model, GReg(model, ratio=0.25, variant=2, total_steps=40, interval=2, reg_fraction=0.5)

    x, y = mlp_batch()
    model, method = make()
    train(model, method, x, y, steps=16, lr=0.1)
    assert method.phase == "grow" and method.picked is not None  # GReg-2 picked its groups at step 16
    saved = copy.deepcopy((model.state_dict(), method.state_dict()))
    resumed_model, resumed = make()
    resumed_model.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    assert resumed.current_lambda == method.current_lambda > 0
    for step in range(17, 41):
        for m in (method, resumed):
            m.after_step(step)
    assert method.phase == resumed.phase == "pruned" and method.pruned_step == resumed.pruned_step
    for p in method.groups:
        assert torch.equal(method.picked[p], resumed.picked[p]) and torch.equal(method.lambdas[p], resumed.lambdas[p])
    with pytest.raises(ValueError, match=r"GReg state lacks \['picked'\]"):
        resumed.load_state_dict({k: v for k, v in saved[1].items() if k != "picked"})
    with pytest.raises(ValueError, match="GReg state is for channel groups"):
        GReg(mlp(hidden=(32,), batch_norm=True)).load_state_dict(saved[1])
    with pytest.raises(ValueError, match="group '0' has 32 channels there, 16 here"):
        GReg(small_cnn()).load_state_dict(saved[1])


def test_step_options_name_real_options():
    """STEP_OPTIONS (the options ltp-train cannot rescale at a resume with another number of
    steps per epoch) name parameters the methods really take."""
    assert GMP.STEP_OPTIONS and LATS.STEP_OPTIONS and GReg.STEP_OPTIONS
    for name, builder in METHODS.items():
        params = inspect.signature(builder).parameters
        for option in getattr(builder, "STEP_OPTIONS", ()):
            assert option in params, (name, option)


# -- GDP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_gdp_gates_polarize_fold_exactly_and_cut_flops(family):
    torch.manual_seed(0)
    model = small_cnn() if family == "cnn" else mlp(hidden=(48, 32), batch_norm=True)
    x, y = cnn_batch() if family == "cnn" else mlp_batch()
    method = GDP(model, lambda_=0.5, t=1.0, budget=None, example_input=x[:1])
    train(model, method, x, y, steps=15, lr=0.1)
    gates = torch.cat([g.detach() for g in method.gates.values()])
    assert int((gates == 0).sum()) > 0 and bool((gates >= 0).all() and (gates <= 1).all())
    with torch.no_grad():  # make the kept gates far from 1, so the fold has something to do
        for g in method.gates.values():
            g[g > 0] = torch.rand(int((g > 0).sum())) * 0.9 + 0.1
    model.eval()
    before = model(x)
    dense = layer_flops(model, x[:1])["total"]
    kept = method.kept_channels()
    method.finalize()
    assert torch.allclose(model(x), before, atol=1e-5)
    assert widths(model) == tuple(kept.values()) and sum(kept.values()) < gates.numel()
    assert layer_flops(model, x[:1])["total"] < dense
    fresh = small_cnn(channels=widths(model)) if family == "cnn" else mlp(hidden=widths(model), batch_norm=True)
    fresh.load_state_dict(model.state_dict())


# -- L1-norm filter pruning --------------------------------------------------------------------
def test_l1_filter_removes_smallest_filters_for_real():
    torch.manual_seed(0)
    model = small_cnn(channels=(16, 32))
    x, _ = cnn_batch()
    norms = model[0].weight.detach().abs().flatten(1).sum(1)
    kept_rows = model[0].weight.detach()[norms.argsort(descending=True)[:8].sort().values]
    dense = layer_flops(model, x[:1])["total"]
    method = L1Filter(model, ratio={"0": 0.5, "3": 0.25}, example_input=x[:1])
    assert model[0].weight.shape == (8, 1, 3, 3) and model[1].running_mean.shape == (8,)
    assert model[3].weight.shape == (24, 8, 3, 3) and model[8].weight.shape == (10, 24)
    assert torch.equal(model[0].weight.detach(), kept_rows)
    assert method.flops_before == dense and method.flops_after < 0.6 * dense
    assert method.flops_after == layer_flops(model, x[:1])["total"]
    assert method.sparsity()["3"] == pytest.approx(1 - (24 * 8) / (32 * 16))
    method.finalize()
    small_cnn(channels=(8, 24)).load_state_dict(model.state_dict())


def test_structured_methods_take_sync_batch_norm():
    # `ltp-train --sync-bn` converts the BatchNorms before the method sees the model; out of a
    # process group SyncBatchNorm computes as BatchNorm, so the surgery can be checked here.
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(small_cnn(channels=(16, 32)))
    x, _ = cnn_batch()
    L1Filter(model, ratio={"0": 0.5}, example_input=x[:1])
    assert isinstance(model[1], nn.SyncBatchNorm) and model[1].running_mean.shape == (8,)
    assert model(x).shape == (len(x), 10)


# -- DSA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_dsa_meets_flops_budget(budget):
    torch.manual_seed(0)
    model = small_cnn(channels=(16, 32))
    x, y = cnn_batch()
    dense = layer_flops(model, x[:1])["total"]
    method = DSA(model, example_input=x[:1], budget=budget)
    train(model, method, x, y, steps=10, lr=0.05, alpha_lr=0.05)
    with torch.no_grad():
        model.eval()
        before = model(x)
    predicted = method.flops_fraction()
    method.finalize()
    measured = layer_flops(model, x[:1])["total"] / dense
    # stated tolerance: at or below the budget, and within 5% of the dense FLOPs of it
    assert budget - 0.05 <= measured <= budget + 1e-9
    assert measured == pytest.approx(predicted, abs=1e-6)
    assert torch.allclose(model(x), before, atol=1e-5)  # the trained network is the deployed one
    small_cnn(channels=widths(model)).load_state_dict(model.state_dict())


def test_dsa_rejects_unreachable_budget_and_missing_input():
    x, _ = cnn_batch()
    with pytest.raises(ValueError, match="example_input"):
        DSA(small_cnn(), budget=0.5)
    with pytest.raises(ValueError, match="below the smallest reachable"):
        DSA(small_cnn(), example_input=x[:1], budget=0.001)


# -- the registry and the shared shape ---------------------------------------------------------
OPTIONS = {"ltp": {"lambda_": 1e-3, "target_sparsity": 0.6, "target_pace": 1.0}, "magnitude": {"sparsity": 0.5},
           "gmp": {"sparsity": 0.7}, "str": {"s_init": -4.0}, "lats": {"sparsity": 0.5}, "greg": {"ratio": 0.5},
           "gdp": {"lambda_": 2.0}, "l1_filter": {"ratio": 0.5}, "dsa": {"budget": 0.5}, "wgates": {"budget": 0.5}}
STRUCTURED = {"greg", "gdp", "l1_filter", "dsa", "wgates"}


def check_pruned_as_asked(name, method, dense_widths, plain, x):
    """Each method's pruning after 12 steps, against the option it was given."""
    total = method.sparsity()["total"]
    if name in ("ltp", "magnitude", "gmp", "lats"):  # the share of weights asked for (LATS: its D's quantile)
        asked = OPTIONS[name].get("sparsity", OPTIONS[name].get("target_sparsity"))
        assert total == pytest.approx(asked, abs=0.03 if name == "lats" else 0.01)
    elif name == "str":  # no sparsity option: sigmoid(-4) = 0.018 cuts the smallest weights
        assert 0.05 < total < 0.5
    elif name in ("greg", "l1_filter"):  # ratio 0.5 of every prunable layer's channels
        assert widths(plain) == tuple(c - round(0.5 * c) for c in dense_widths)
    elif name == "gdp":  # the default FLOPs budget (half), met by the cut at mid-run, and channels removed
        ratio = layer_flops(plain, x[:1])["total"] / method.dense_flops["total"]
        assert ratio <= 0.5 + 1e-9 and total > 0.2 and widths(plain) != dense_widths
    elif name == "dsa":  # a FLOPs budget: at most half the dense FLOPs, within 5 points
        ratio = layer_flops(plain, x[:1])["total"] / method.dense_flops["total"]
        assert 0.45 <= ratio <= 0.5 + 1e-9
    elif name == "wgates":  # a FLOPs budget: the gates, frozen at 3/4 of the run, brought to at most half
        ratio = layer_flops(plain, x[:1])["total"] / method.dense_flops["total"]
        assert 0.4 <= ratio <= 0.5 + 1e-9


def test_registry_names_and_unknown_name():
    assert set(method_names()) == set(OPTIONS) == set(METHODS)
    with pytest.raises(ValueError, match="unknown pruning method 'obd'.*gmp"):
        build("obd", mlp())


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_every_method_finalizes_to_a_loadable_model(name, family):
    torch.manual_seed(0)
    make = small_cnn if family == "cnn" else (lambda hidden=(48, 32): mlp(hidden=hidden))
    model = make()
    dense_widths = widths(model)
    x, y = cnn_batch() if family == "cnn" else mlp_batch()
    method = build(name, model, total_steps=12, example_input=x[:1], **OPTIONS[name])
    assert method.regularizer().shape == ()
    train(model, method, x, y, steps=12)
    model.eval()
    with method.hard_masks():
        deployed = model(x)
    hard = method.hard_state_dict()
    sparsity = method.sparsity()
    assert 0.05 < sparsity["total"] < 1.0  # a pruned network: the checks below compare something
    plain = method.finalize()
    assert plain is model and not any("parametrizations" in k for k in plain.state_dict())
    assert torch.allclose(plain(x), deployed, atol=1e-5)
    assert method.sparsity()["total"] == pytest.approx(sparsity["total"])
    assert list(hard) == list(plain.state_dict())
    arch = make(**({"channels": widths(plain)} if family == "cnn" else {"hidden": widths(plain)})) \
        if name in STRUCTURED else make()
    arch.load_state_dict(plain.state_dict())  # strict
    arch.load_state_dict(hard)
    check_pruned_as_asked(name, method, dense_widths, plain, x)


def test_deep_copies_survive_finalize():
    # parametrize gives a copy the same generated class; finalizing one must not break the other
    for name in ("gmp", "gdp"):
        model = small_cnn()
        x, _ = cnn_batch()
        method = build(name, model, total_steps=10, example_input=x[:1])
        clone = copy.deepcopy(model)
        method.finalize()
        assert clone(x).shape == (32, 10)


# -- bad input ---------------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head((x + self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("call, match", [
    (lambda: magnitude_masks(mlp(), 1.0), r"sparsity must be a number in \[0, 1\), got 1.0"),
    (lambda: magnitude_masks(mlp(), -0.1), "sparsity"),
    (lambda: magnitude_masks(mlp(), 0.5, scope="local"), r"unknown scope 'local'; allowed: \['global', 'layer'\]"),
    (lambda: GMP(mlp(), sparsity=0.5), "needs end_step or total_steps"),
    (lambda: GMP(mlp(), sparsity=0.5, initial_sparsity=0.7, total_steps=10), "initial sparsity"),
    (lambda: LATS(mlp(), schedule="cosine", total_steps=10), "unknown LATS schedule 'cosine'"),
    (lambda: LATS(mlp(), total_steps=10, lr_schedule=[0.1] * 5), "lr_schedule has 5 entries"),
    (lambda: LATS(mlp(), total_steps=10, lr_schedule=-0.1), "learning rates must be > 0"),
    (lambda: LATS(mlp(), schedule="lats"), "needs total_steps"),
    (lambda: STR(mlp(), threshold_weight_decay=-1.0), "threshold_weight_decay must be a finite number >= 0"),
    (lambda: GReg(small_cnn(), variant=3), r"unknown GReg variant 3; allowed: \[1, 2\]"),
    (lambda: GReg(small_cnn(), delta=-1e-4), "delta must be a finite number > 0"),
    (lambda: GReg(small_cnn(), ratio={"7": 0.5}), r"ratio names \['7'\]"),
    (lambda: GDP(small_cnn(), lambda_=-1), "lambda_ must be a finite number >= 0"),
    (lambda: L1Filter(small_cnn(), ratio=1.0), r"ratio must be a number in \[0, 1\)"),
    (lambda: L1Filter(small_cnn(), exclude=["7"]), "not layers whose channels can be removed"),
    (lambda: DSA(small_cnn(), example_input=torch.zeros(1, 1, 8, 8), budget=0.0), r"budget must be .* \(0, 1\]"),
    (lambda: L1Filter(Residual()), "L1Filter needs an example_input .* of Residual"),
    (lambda: L1Filter(Residual(), example_input=torch.zeros(1, 4, 8, 8)),
     r"L1Filter cannot prune Residual: .* group\(s\) of 'conv' \(RuntimeError"),  # x + conv(x): x cannot shrink
    (lambda: GDP(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2))), "grouped"),
    (lambda: GReg(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))), "LayerNorm"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_channel_links_of_the_suite_models():
    assert [(l.producer, l.norm, l.consumer, l.spatial) for l in channel_links(small_cnn())] == [
        ("0", "1", "3", 1), ("3", "4", "8", 1)]
    flat = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    assert channel_links(flat)[0].spatial == 36
    method = L1Filter(flat, ratio=0.5)
    assert flat[3].weight.shape == (10, 2 * 36) and method.sparsity()["3"] == pytest.approx(0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_methods_run_on_cuda(name):
    torch.manual_seed(0)
    model = small_cnn().cuda()
    x, y = (t.cuda() for t in cnn_batch())
    method = build(name, model, total_steps=6, example_input=x[:1], **OPTIONS[name])
    assert method.regularizer().device.type == "cuda"
    train(model, method, x, y, steps=6)
    method.finalize()
    assert model(x).device.type == "cuda" and 0 <= method.sparsity()["total"] < 1


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_residual_networks_every_method_finalizes(name):
    from ltp_core import models
    from ltp_core.methods import load_pruned_state_dict
    torch.manual_seed(0)
    model = models.resnet20(in_channels=1)
    x, y = cnn_batch(8)
    method = build(name, model, total_steps=4, example_input=x[:1], **OPTIONS[name])
    train(model, method, x, y, steps=4)
    model.eval()
    with torch.no_grad(), method.hard_masks():
        deployed = model(x)
    hard = method.hard_state_dict()
    plain = method.finalize()
    with torch.no_grad():
        assert torch.allclose(plain(x), deployed, atol=1e-5)
    fresh = load_pruned_state_dict(models.resnet20(in_channels=1), plain.state_dict()) if name in STRUCTURED \
        else models.resnet20(in_channels=1)
    fresh.load_state_dict(hard)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), deployed, atol=1e-5)
    if name in STRUCTURED:  # channels were removed, the groups a skip connection joins included
        assert method.sparsity()["total"] > 0.1 and sum(m.weight.numel() for m in plain.modules()
                                                        if isinstance(m, (nn.Conv2d, nn.Linear))) < 0.9 * 270_000
