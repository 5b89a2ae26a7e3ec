"""LTP on real modules: parametrize round trips, soft-L0, sparsity, finalize, bad input."""
import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ltp_core import LTP, ThresholdMask, soft_mask
from ltp_core.models import mlp, small_cnn


def _set_thresholds(ltp, value):
    with torch.no_grad():
        for t in ltp.thresholds.values():
            t.fill_(value)


def test_attaches_to_every_conv_and_linear_including_depthwise():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(2, 2, 8)
    before = model(x)
    ltp = LTP(model)
    assert sorted(ltp.thresholds) == ["0", "2", "4"]
    for name in ("0", "2", "4"):
        assert parametrize.is_parametrized(model.get_submodule(name), "weight")
    # tau = 0 keeps every weight, soft mask ~1 for all but tiny weights: output close to dense
    assert ltp.sparsity()["total"] == 0.0
    assert torch.allclose(model(x), before, atol=0.1)
    conv3d = nn.Sequential(nn.Conv3d(1, 2, 1))
    assert list(LTP(conv3d).thresholds) == ["0"]


def test_forward_uses_soft_masked_weight():
    layer = nn.Linear(5, 3)
    w = layer.weight.detach().clone()
    ltp = LTP(nn.Sequential(layer), temperature=0.5)
    _set_thresholds(ltp, 0.04)
    temperature = 0.5 * w.abs().var(unbiased=False)
    assert torch.allclose(layer.weight, w * soft_mask(w, 0.04, temperature), atol=1e-6)


def test_soft_l0_normalized_and_raw():
    model = mlp(hidden=(16,))
    ltp = LTP(model, lambda_=2.0)
    _set_thresholds(ltp, 1e9)  # everything far below threshold: mask ~ 0
    assert ltp.soft_l0().item() < 1e-6
    _set_thresholds(ltp, -1e9)  # everything above: mask ~ 1, normalized soft-L0 ~ 1
    assert abs(ltp.soft_l0().item() - 1.0) < 1e-6
    assert abs(ltp.regularizer().item() - 2.0) < 1e-5
    raw = LTP(mlp(hidden=(16,)), normalize=False, init_threshold=0.0)
    assert raw.soft_l0().item() == pytest.approx(raw.num_prunable, rel=0.2)


def test_soft_l0_reuses_the_forward_and_matches_a_fresh_computation():
    model = mlp(hidden=(32,))
    ltp = LTP(model)
    _set_thresholds(ltp, 1e-3)
    x = torch.randn(4, 64)
    model(x)
    cached = ltp.soft_l0()
    layer = next(iter(ltp.layers.values()))
    assert layer.parametrizations.weight[0].l0 is not None
    with torch.no_grad():
        fresh = sum(soft_mask(w, t, ltp.masks[n].temperature(w)).sum()
                    for (n, w), t in zip(ltp.weights().items(), ltp.thresholds.values()))
    assert torch.allclose(cached * ltp.num_prunable, fresh, rtol=1e-5)
    # after an in-place update the cache is stale and must not be used
    with torch.no_grad():
        for w in ltp.weights().values():
            w.mul_(2)
    with torch.no_grad():
        fresh2 = sum(soft_mask(w, t, ltp.masks[n].temperature(w)).sum()
                     for (n, w), t in zip(ltp.weights().items(), ltp.thresholds.values()))
    assert torch.allclose(ltp.soft_l0() * ltp.num_prunable, fresh2, rtol=1e-5)


def test_regularizer_gradient_reaches_thresholds_and_pushes_them_up():
    model = mlp(hidden=(32,))
    ltp = LTP(model, lambda_=1.0)
    _set_thresholds(ltp, 1e-3)
    ltp.regularizer().backward()
    for t in ltp.thresholds.values():
        assert t.grad is not None and t.grad < 0


def test_training_step_updates_weights_and_thresholds():
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    ltp = LTP(model, lambda_=1.0)
    opt = torch.optim.Adam(ltp.param_groups(threshold_lr=1e-3), lr=1e-3)
    before = {n: t.item() for n, t in ltp.thresholds.items()}
    for _ in range(3):
        x, y = torch.randn(16, 64), torch.randint(10, (16,))
        loss = nn.functional.cross_entropy(model(x), y) + ltp.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(ltp.thresholds[n].item() > before[n] for n in before)


@pytest.mark.parametrize("fused", [False, True])
def test_a_zero_initialized_layer_is_not_pruned_whole_by_its_first_step(fused):
    # torchvision's ViT starts its head at zero: T is at its floor there, where 1/T (1e12) would
    # throw the threshold far above any weight the layer will have and prune all of it for good.
    from ltp_core.core.mask import TEMPERATURE_FLOOR
    from ltp_core.kernels.fused import fused_kernels_work

    if fused and not fused_kernels_work("cpu"):
        pytest.skip("the compiled mask kernels do not build here")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    nn.init.zeros_(model[2].weight)
    with pytest.warns(RuntimeWarning, match=r"layers \['2'\] have weights all of one magnitude"):
        ltp = LTP(model, lambda_=1.0, fused=fused)
    assert ltp.temperatures["2"] == pytest.approx(TEMPERATURE_FLOOR)
    opt = torch.optim.SGD(ltp.param_groups(threshold_lr=1e-6), lr=0.1)  # tau's gradient ~ 1/T
    x, y = torch.randn(16, 64), torch.randint(10, (16,))
    loss = nn.functional.cross_entropy(model(x), y) + ltp.regularizer()
    loss.backward()
    assert ltp.thresholds["0"].grad != 0 and ltp.thresholds["2"].grad == 0
    opt.step()
    assert ltp.sparsity()["2"] == 0 and ltp.temperatures["2"] > TEMPERATURE_FLOOR  # spread: learning from here


def test_sparsity_counts_w2_at_or_below_tau():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.25, -0.5, 0.75, 1.0]]))
    ltp = LTP(nn.Sequential(layer))
    _set_thresholds(ltp, 0.25)  # w**2 = 1/16, 1/4, 9/16, 1 -> two pruned (<=)
    assert ltp.sparsity() == {"0": 0.5, "total": 0.5}
    assert ltp.compression() == pytest.approx(2.0)


def test_state_dict_round_trip_and_deepcopy():
    torch.manual_seed(0)
    model = small_cnn()
    ltp = LTP(model)
    _set_thresholds(ltp, 1e-3)
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    out = model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = small_cnn()
    LTP(other)
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    other.eval()
    assert torch.allclose(other(x), out)
    clone = copy.deepcopy(model)
    assert torch.allclose(clone(x), out)
    assert all(k.endswith("threshold") or k in clone.state_dict() for k in model.state_dict())


def test_finalize_hard_prunes_and_loads_strictly_into_plain_architecture():
    torch.manual_seed(0)
    model = small_cnn()
    ltp = LTP(model)
    _set_thresholds(ltp, 2e-3)
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    with ltp.hard_masks():
        hard_out = model(x)
    expected_sparsity = ltp.sparsity()
    hard_sd = ltp.hard_state_dict()
    originals = {n: w.detach().clone() for n, w in ltp.weights().items()}
    taus = {n: t.item() for n, t in ltp.thresholds.items()}
    ltp.finalize()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    for name, w in originals.items():
        final = model.get_submodule(name).weight
        assert torch.equal(final, w * (w * w > taus[name]))
    assert ltp.sparsity() == pytest.approx(expected_sparsity)
    assert 0 < expected_sparsity["total"] < 1
    plain = small_cnn()
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.eval()
    assert torch.allclose(plain(x), hard_out, atol=1e-6)
    assert list(hard_sd) == list(model.state_dict())
    assert all(torch.equal(hard_sd[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="finalized"):
        ltp.soft_l0()


def test_param_groups_separate_thresholds_without_weight_decay():
    model = mlp(hidden=(8,))
    ltp = LTP(model)
    groups = ltp.param_groups(weight_decay=5e-4, threshold_lr=1e-4)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[1] == {id(t) for t in ltp.thresholds.values()}
    assert ids[0].isdisjoint(ids[1]) and len(ids[0]) + len(ids[1]) == len(list(model.parameters()))
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 1e-4
    for bad in ({"threshold_lr": -1e-3}, {"threshold_lr": float("nan")}, {"weight_decay": -1.0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number >= 0"):
            ltp.param_groups(**bad)


def test_exclude_first_last_and_by_name():
    model = mlp(hidden=(8, 8))
    assert list(LTP(mlp(hidden=(8, 8)), exclude_first=True, exclude_last=True).thresholds) == ["2"]
    assert list(LTP(model, exclude=["4"]).thresholds) == ["0", "2"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(lambda_=-0.1), "lambda_"),
    (dict(exclude=["nope"]), "nope"),
    (dict(exclude=["0", "2"]), "nothing left"),
    (dict(init_threshold=-1.0), "init_threshold"),
    (dict(lambda_=float("inf")), r"lambda_ must be a finite number >= 0, got inf"),
    (dict(temperature=True), r"temperature \(T0\) must be a finite number > 0, got True"),
    (dict(init_threshold=float("nan")), "init_threshold"),
    (dict(normalize="False"), "normalize must be True or False, got 'False'"),
    (dict(layer_weights={"0": -1.0}), r"layer_weights must be finite numbers >= 0, got \{'0': -1.0\}"),
    (dict(layer_weights={"0": "x"}), "layer_weights must be finite numbers"),
])
def test_bad_input_raises_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LTP(mlp(hidden=(8,)), **kwargs)


def test_exclude_none_is_no_exclusion():
    assert set(LTP(mlp(hidden=(8,)), exclude=None).layers) == {"0", "2"}


def test_hard_state_dict_leaves_an_excluded_layers_own_parametrization_alone():
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    parametrizations.orthogonal(model[0])
    ltp = LTP(model, exclude=["0"], init_threshold=0.05)
    hard = ltp.hard_state_dict()
    ltp.finalize()
    assert list(hard) == list(model.state_dict())
    assert all(torch.equal(hard[k], v) for k, v in model.state_dict().items())


def test_shared_layers_and_tied_weights_are_rejected():
    layer = nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"layer '0' is one module used at 2 places of the model \(0, 2\)"):
        LTP(nn.Sequential(layer, nn.ReLU(), layer))
    embedding, head = nn.Embedding(8, 8), nn.Linear(8, 8, bias=False)
    head.weight = embedding.weight
    with pytest.raises(ValueError, match=r"layer '1' shares its weight with 0.weight \(tied weights\)"):
        LTP(nn.Sequential(embedding, head))
    LTP(nn.Sequential(embedding, head, nn.Linear(8, 2)), exclude=["1"])  # excluded: nothing prunes the tie


def test_model_without_prunable_layers_is_rejected():
    with pytest.raises(ValueError, match="no Conv1d/2d/3d or Linear"):
        LTP(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


def test_exact_flag_changes_weight_gradient_only():
    grads = {}
    for exact in (False, True):
        torch.manual_seed(1)
        model = mlp(hidden=(8,))
        ltp = LTP(model, exact_weight_grad=exact)
        _set_thresholds(ltp, 1e-2)
        x = torch.randn(4, 64)
        model(x).square().sum().backward()
        grads[exact] = (ltp.weights()["0"].grad.clone(), ltp.thresholds["0"].grad.clone())
    assert not torch.allclose(grads[False][0], grads[True][0])
    assert torch.allclose(grads[False][1], grads[True][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_forward_backward_and_finalize():
    model = small_cnn().cuda()
    ltp = LTP(model)
    _set_thresholds(ltp, 1e-3)
    x = torch.randn(4, 1, 8, 8, device="cuda")
    (model(x).sum() + ltp.regularizer()).backward()
    assert all(t.grad.device.type == "cuda" for t in ltp.thresholds.values())
    assert ltp.soft_l0().device.type == "cuda"
    ltp.finalize()
    assert model(x).device.type == "cuda"


def _ltp_cnn(seed=0):
    torch.manual_seed(seed)
    model = small_cnn()
    ltp = LTP(model, lambda_=1.0)
    _set_thresholds(ltp, 1e-3)
    return model, ltp


def _three_big_layers(seed=0):
    # every layer above kernels.fused.SMALL_LAYER weights: the one compiled graph the probe builds
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 32, 5), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 160))


def test_compiled_masks_layer_by_layer_equal_the_eager_masks():
    # The one seam: each ThresholdMask calls its soft_prune (compiled or eager, chosen at
    # construction) once per forward, and the regularizer reuses that forward's soft-L0: same
    # values, same gradients either way.
    from ltp_core.core.mask import soft_prune_t0
    from ltp_core.kernels import fused

    if not fused.fused_kernels_work("cpu"):
        pytest.skip("the compiled mask kernels do not build here")
    compiled, eager = _three_big_layers(), _three_big_layers()
    pruners = [LTP(compiled, lambda_=1.0, fused=True), LTP(eager, lambda_=1.0, fused=False)]
    assert all(m.compiled and m.soft_prune is fused.soft_prune for m in pruners[0].masks.values())
    assert not any(m.compiled for m in pruners[1].masks.values())
    assert all(m.soft_prune is soft_prune_t0 for m in pruners[1].masks.values())
    calls = []
    for ltp in pruners:
        _set_thresholds(ltp, 2e-3)
        for mask in ltp.masks.values():  # count the calls through the seam
            mask.soft_prune = (lambda f: lambda *a: calls.append(f) or f(*a))(mask.soft_prune)
    x, y = torch.randn(4, 8, 12, 12), torch.randint(160, (4,))
    outputs = []
    for net, ltp in zip((compiled, eager), pruners):
        calls.clear()
        out = net(x)
        loss = nn.functional.cross_entropy(out, y) + ltp.regularizer()
        assert len(calls) == len(ltp.layers)  # one mask computation per layer, not two
        loss.backward()
        outputs.append((out, ltp.soft_l0()))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled.parameters(), eager.parameters()):
        # a threshold's gradient (0-d) sums terms of either sign: another summation order moves it
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3 if a.dim() == 0 else 1e-4, atol=1e-6)


def test_the_last_forwards_l0_is_reused_only_for_the_weights_and_threshold_it_came_from():
    model, ltp = _ltp_cnn()
    x = torch.randn(2, 1, 16, 16)
    for _ in range(2):  # a second forward gets a fresh graph: backward through both works
        (model(x).sum() + ltp.regularizer()).backward()
    name, mask = next(iter(ltp.masks.items()))
    w = ltp.weights()[name]

    def fresh():
        with torch.no_grad():
            return soft_mask(w, mask.threshold, mask.temperature(w)).sum()

    model(x)
    kept = mask.l0
    assert kept is not None and mask.soft_l0(w) is kept  # nothing changed: reused
    torch.testing.assert_close(kept.detach(), fresh(), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        w.mul_(2)  # an optimizer step on the weight
    assert mask.soft_l0(w) is not kept
    torch.testing.assert_close(mask.soft_l0(w).detach(), fresh(), rtol=1e-5, atol=1e-4)
    model(x)
    kept = mask.l0
    with torch.no_grad():
        mask.threshold.add_(1e-3)  # a step on the threshold
    assert mask.soft_l0(w) is not kept
    torch.testing.assert_close(mask.soft_l0(w).detach(), fresh(), rtol=1e-5, atol=1e-4)
    model(x)
    kept = mask.l0
    with torch.no_grad():  # computed with grad, asked for without (and the other way): afresh
        assert mask.soft_l0(w) is not kept
        model(x)
    assert mask.soft_l0(w) is not mask.l0 and mask.soft_l0(w).requires_grad
    model(x)
    kept = mask.l0
    with ltp.hard_masks():
        model(x)  # the deployed forward keeps no soft-L0: the soft one still stands
    assert mask.l0 is kept and mask.soft_l0(w) is kept
    # a layer whose weight changed between the forward and the regularizer: the regularizer
    # counts the current weights
    model(x)
    with torch.no_grad():
        w.mul_(0.5)
    expected = sum(fresh_l0 for fresh_l0 in (
        soft_mask(v, m.threshold, m.temperature(v)).sum() for v, m in zip(ltp.weights().values(), ltp.masks.values())))
    torch.testing.assert_close(ltp.soft_l0().detach() * ltp.num_prunable, expected.detach(), rtol=1e-5, atol=1e-3)


def test_deepcopy_and_finalize_leave_copies_working():
    model, ltp = _ltp_cnn()
    x = torch.randn(2, 1, 16, 16)
    (model(x).sum() + ltp.regularizer()).backward()  # the masks hold a soft-L0 with a graph
    twin = copy.deepcopy(model)
    twin_masks = [m for m in twin.modules() if isinstance(m, ThresholdMask)]
    assert len(twin_masks) == len(ltp.layers) and all(m.l0 is None and m.l0_of is None for m in twin_masks)
    assert not any(a is b for a in twin_masks for b in ltp.masks.values())  # the copy's own masks
    assert [m.soft_prune for m in twin_masks] == [m.soft_prune for m in ltp.masks.values()]
    torch.testing.assert_close(twin(x), model(x))
    ltp.finalize()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(isinstance(m, ThresholdMask) for m in model.modules())
    model(x).sum().backward()  # a plain model now
    twin.zero_grad()
    twin(x).sum().backward()  # the copy still prunes, with its own masks and thresholds
    assert all(parametrize.is_parametrized(twin.get_submodule(n), "weight") for n in ltp.layers)
    assert all(m.threshold.grad is not None for m in twin_masks)
    copy_of_copy = copy.deepcopy(twin)  # copying the copy after the original was finalized
    torch.testing.assert_close(copy_of_copy(x), twin(x))
