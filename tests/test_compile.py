"""torch.compile of a whole LTP model on CPU: one graph, and the same training as eager."""
import pytest
import torch
import torch.nn.functional as F

from ltp_core import LTP
from ltp_core.models import small_cnn


def _pruned_model():
    torch.manual_seed(0)
    model = small_cnn(channels=(4, 8))
    ltp = LTP(model, lambda_=1.0)
    with torch.no_grad():
        for t in ltp.thresholds.values():
            t.fill_(1e-3)
    return model, ltp


def test_parametrization_causes_no_graph_break():
    model, _ = _pruned_model()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 1, 8, 8))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_training_matches_eager():
    eager, ltp_eager = _pruned_model()
    model, ltp = _pruned_model()
    compiled = torch.compile(model)
    optimizers = [torch.optim.SGD(l.param_groups(threshold_lr=1e-5), lr=0.1) for l in (ltp_eager, ltp)]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(10, (8,), generator=g)
        for net, pruner, opt in zip((eager, compiled), (ltp_eager, ltp), optimizers):
            loss = F.cross_entropy(net(x), y) + pruner.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(eager.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(ltp.thresholds[n].item() > 1e-3 for n in ltp.thresholds)  # the L0 term moved them


def test_fused_kernels_match_the_eager_mask():
    import copy

    torch.manual_seed(0)
    for exact in (False, True):
        eager = small_cnn(channels=(4, 8))
        fused = copy.deepcopy(eager)
        pruners = [LTP(eager, exact_weight_grad=exact), LTP(fused, exact_weight_grad=exact, fused=True)]
        x, y = torch.randn(4, 1, 8, 8), torch.randint(10, (4,))
        _assert_same_step((eager, fused), pruners, x, y, threshold=2e-3, atol=1e-5)


def _assert_same_step(nets, pruners, x, y, threshold, atol):
    """One loss + regularizer backward through each net (thresholds at `threshold`): the same
    soft-L0 and the same gradients."""
    for p in pruners:
        with torch.no_grad():
            for t in p.thresholds.values():
                t.fill_(threshold)
    for net, p in zip(nets, pruners):
        (F.cross_entropy(net(x), y) + p.regularizer()).backward()
    torch.testing.assert_close(pruners[0].soft_l0(), pruners[1].soft_l0())
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        # A threshold's gradient (0-d) sums a term of either sign per weight: float32 sums in
        # another order (the kernel's threads, a GPU's blocks) move it by ~1e-4 of itself.
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3 if a.dim() == 0 else 1e-4, atol=atol)


# -- the compiled mask kernels (kernels.fused.soft_prune) as LTP's default for big layers --------

def _fused(w, tau, t0=0.1, exact=False):
    from ltp_core.kernels.fused import soft_prune

    return soft_prune(w, tau, t0, exact)


def _needs_compiler():
    from ltp_core.kernels.fused import fused_kernels_work

    if not fused_kernels_work("cpu"):
        pytest.skip("the compiled mask kernels do not build here (no C++ compiler?)")


def _two_layer_mlp():
    torch.manual_seed(0)
    # 256 x 256 = 65536 weights: just big enough for the compiled kernels; 256 x 10 is not.
    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def test_default_compiles_every_layer_of_a_big_model_only_and_matches_eager():
    import copy

    from ltp_core.kernels.fused import FUSED_MIN_WEIGHTS

    _needs_compiler()
    small = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    LTP(small)
    assert not any(small[i].parametrizations.weight[0].compiled
                   for i in (0, 2))  # no layer worth compiling: everything eager
    auto = _two_layer_mlp()
    eager = copy.deepcopy(auto)
    pruners = [LTP(auto, lambda_=1.0), LTP(eager, lambda_=1.0, fused=False)]
    masks = [auto[i].parametrizations.weight[0] for i in (0, 2)]
    # one layer big enough; the small one (2560 weights, up to fused.SMALL_LAYER) stays eager
    assert [m.compiled for m in masks] == [True, False]
    assert auto[0].weight.numel() == FUSED_MIN_WEIGHTS
    _assert_same_step((auto, eager), pruners, torch.randn(16, 256), torch.randint(10, (16,)),
                      threshold=1e-3, atol=1e-6)


def test_flop_count_of_a_compiled_model():
    # FlopCounterMode is a TorchDispatchMode, under which compiled code cannot run: the masks
    # go eager while it counts, and the network runs compiled again afterwards.
    _needs_compiler()
    model = _two_layer_mlp()
    ltp = LTP(model, init_threshold=1e-4)
    x = torch.randn(1, 256)
    flops = ltp.flops(x)
    kept = 1 - ltp.sparsity()["0"]
    assert 0 < kept < 1 and flops == round(2 * 256 * 256 * kept) + round(2 * 256 * 10 * (1 - ltp.sparsity()["2"]))
    with ltp.hard_masks():
        assert ltp.flops(x) == flops
    assert model[0].parametrizations.weight[0].compiled


def test_compiled_kernels_keep_the_weight_layout_and_never_recompile():
    from ltp_core.core.mask import SoftPrune, layer_temperature

    _needs_compiler()  # compiles both directions once, for dynamic sizes
    _fused(torch.randn(8, 4, requires_grad=True), torch.tensor(2e-3))[0].sum().backward()  # small layers' graph
    torch.manual_seed(0)
    shapes = [(64, 32, 3, 3), (512, 128, 1, 1), (300, 250), (70000,), (64, 3, 7, 7), (10, 512), (8, 4)]
    with torch._dynamo.config.patch(error_on_recompile=True):  # a new shape or layout must not recompile
        for shape in shapes:
            for channels_last in ((False, True) if len(shape) == 4 else (False,)):
                w = torch.randn(shape) * 0.05
                if channels_last:
                    w = w.to(memory_format=torch.channels_last)
                w.requires_grad_()
                tau = torch.tensor(2e-3, requires_grad=True)
                v, l0 = _fused(w, tau)
                assert v.stride() == w.stride()  # channels_last in, channels_last out: no copy
                g = torch.randn(shape)
                grads = torch.autograd.grad((v * g).sum() + 0.5 * l0, (w, tau))
                assert grads[0].stride() == w.stride()
                w2, tau2 = w.detach().clone().requires_grad_(), tau.detach().clone().requires_grad_()
                v2, l02 = SoftPrune.apply(w2, tau2, layer_temperature(w2, 0.1), False)
                expected = torch.autograd.grad((v2 * g).sum() + 0.5 * l02, (w2, tau2))
                torch.testing.assert_close(v, v2)
                torch.testing.assert_close(l0, l02, rtol=1e-5, atol=1e-3)
                for a, b in zip(grads, expected):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("exact", [False, True])
def test_compiled_layer_by_layer_matches_eager_and_serves_any_mix_without_recompiling(exact):
    # 19 layers of every kind, one compiled call each: both size classes, equal sizes in
    # several patterns, row-major and channels_last, one frozen weight.
    from ltp_core.core.mask import SoftPrune, layer_temperature
    from ltp_core.kernels.fused import SMALL_LAYER, soft_prune

    def fused_soft_prune(weights, taus, t0s, exacts):  # the layers of a model, one by one
        vs, l0s = zip(*(soft_prune(w, tau, t0, e) for w, tau, t0, e in zip(weights, taus, t0s, exacts)))
        return list(vs), list(l0s)

    _needs_compiler()
    torch.manual_seed(0)
    shapes = [(64, 64, 3, 3), (64, 64, 3, 3), (8, 4), (128, 64, 3, 3), (64, 64, 3, 3), (128, 64, 1, 1),
              (300, 250), (70000,), (16, 3, 3, 3), (128, 128, 3, 3), (64, 64, 3, 3), (10, 512), (9, 9),
              (256, 128, 1, 1), (128, 128, 3, 3), (4097,), (4096,), (64, 3, 7, 7), (10, 512)]
    weights = []
    for i, shape in enumerate(shapes):
        w = torch.randn(shape) * 0.05
        if len(shape) == 4 and i % 2:
            w = w.to(memory_format=torch.channels_last)
        weights.append(w.requires_grad_(i != 3))
    taus = [torch.tensor(float(w.detach().pow(2).median()), requires_grad=True) for w in weights]
    t0s = [0.1 + 0.01 * i for i in range(len(shapes))]
    small = sum(w.numel() <= SMALL_LAYER for w in weights)
    assert small >= 2 and len(shapes) - small > 8  # both size classes, many big layers
    vs, l0s = fused_soft_prune(weights, taus, t0s, [exact] * len(shapes))  # compiles what it needs
    torch.autograd.grad(sum(v.sum() + l0 for v, l0 in zip(vs, l0s)), taus)
    with torch._dynamo.config.patch(error_on_recompile=True):  # then serves any other mix
        vs, l0s = fused_soft_prune(weights, taus, t0s, [exact] * len(shapes))
        gs = [torch.randn(s) for s in shapes]
        loss = sum((v * g).sum() + 0.5 * l0 for v, g, l0 in zip(vs, gs, l0s))
        inputs = [w for w in weights if w.requires_grad] + taus
        grads = torch.autograd.grad(loss, inputs)
        vs2, l0s2 = fused_soft_prune(weights[5:12][::-1], taus[5:12][::-1], t0s[5:12][::-1], [exact] * 7)
    for i, (w, tau, v, l0) in enumerate(zip(weights, taus, vs, l0s)):
        assert v.shape == w.shape and v.stride() == w.stride()
        w2 = w.detach().clone().requires_grad_()
        v_ref, l0_ref = SoftPrune.apply(w2, tau, layer_temperature(w2, t0s[i]), exact)
        torch.testing.assert_close(v, v_ref)
        torch.testing.assert_close(l0, l0_ref, rtol=1e-5, atol=1e-3)
        if 5 <= i < 12:
            torch.testing.assert_close(vs2[11 - i], v)
    ref_loss = 0
    refs = []
    for w, tau, t0, g in zip(weights, taus, t0s, gs):
        w2, tau2 = w.detach().clone().requires_grad_(w.requires_grad), tau.detach().clone().requires_grad_()
        v_ref, l0_ref = SoftPrune.apply(w2, tau2, layer_temperature(w2, t0), exact)
        ref_loss = ref_loss + (v_ref * g).sum() + 0.5 * l0_ref
        refs.append((w2, tau2))
    expected = torch.autograd.grad(ref_loss, [w for w, _ in refs if w.requires_grad] + [t for _, t in refs])
    for a, b, x in zip(grads, expected, inputs):
        # z = (w**2 - tau) / T reaches ~100 here: the two ways of rounding it move m by ~1e-6
        # (the exact gradient's 2w/T factor, ~1e3, scales that up with the gradient itself)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * max(1.0, b.abs().max().item()))
        assert a.stride() == x.stride()  # a channels_last weight gets a channels_last gradient


def test_without_a_working_compiler_the_default_falls_back_to_eager(monkeypatch):
    from ltp_core.kernels import fused

    def broken(name):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nsecond line")

    monkeypatch.setattr(fused, "_compiled", broken)
    fused.fused_kernels_work.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"do not build on 'cpu' \(RuntimeError: InvalidCxxCompiler"):
            assert not fused.fused_kernels_work("cpu")
        net = _two_layer_mlp()
        ltp = LTP(net)
        assert not net[0].parametrizations.weight[0].compiled
        (net(torch.randn(4, 256)).sum() + ltp.regularizer()).backward()  # eager, no error
        with pytest.raises(RuntimeError, match="InvalidCxxCompiler"):  # asked for explicitly: it surfaces
            LTP(_two_layer_mlp(), fused=True)
    finally:
        fused.fused_kernels_work.cache_clear()  # the next test probes the real compiler again


def test_fused_option_is_checked():
    with pytest.raises(ValueError, match="fused must be None"):
        LTP(_two_layer_mlp(), fused="auto")


@pytest.mark.parametrize("fused", [None, True])
def test_whole_model_compile_with_a_big_layer_matches_eager(fused):
    # Under an outer torch.compile the mask's eager ops are traced (and fused) with the model,
    # whatever `fused` says.
    import copy

    eager = _two_layer_mlp()
    model = copy.deepcopy(eager)
    pruners = [LTP(eager, fused=False), LTP(model, fused=fused)]
    compiled = torch.compile(model)
    x, y = torch.randn(16, 256), torch.randint(10, (16,))
    for net, p in zip((eager, compiled), pruners):
        with torch.no_grad():
            for t in p.thresholds.values():
                t.fill_(1e-3)
        (F.cross_entropy(net(x), y) + p.regularizer()).backward()
    for a, b in zip(eager.parameters(), model.parameters()):
        # traced, the kernels' math (1/T folded first) rounds differently from the core's: a
        # threshold's gradient (0-d, terms of either sign) moves by ~1e-4 of itself, as in
        # _assert_same_step
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3 if a.dim() == 0 else 1e-4, atol=1e-6)


def test_compiled_kernels_under_autocast_stay_float32_and_never_recompile():
    _needs_compiler()
    torch.manual_seed(0)
    w = (torch.randn(300, 250) * 0.05).requires_grad_()
    tau = torch.tensor(2e-3, requires_grad=True)
    plain = _fused(w, tau)[0]
    with torch._dynamo.config.patch(error_on_recompile=True), torch.autocast("cpu", dtype=torch.bfloat16):
        v, l0 = _fused(w, tau)
        (v.sum() + l0).backward()
    assert v.dtype == torch.float32 and torch.equal(v, plain)
    assert w.grad.dtype == torch.float32 and tau.grad is not None


def test_float64_weights_keep_float64_math():
    from ltp_core.core.mask import SoftPrune, layer_temperature

    _needs_compiler()
    net = torch.nn.Linear(256, 256).double()
    LTP(net)
    assert not net.parametrizations.weight[0].compiled  # automatic: eager
    torch.manual_seed(0)
    w = (torch.randn(300, 250, dtype=torch.float64) * 0.05).requires_grad_()
    tau = torch.tensor(2e-3, dtype=torch.float64, requires_grad=True)
    v, l0 = _fused(w, tau)  # asked for: float64 kernels
    v2, l02 = SoftPrune.apply(w, tau, layer_temperature(w, 0.1), False)
    assert v.dtype == l0.dtype == torch.float64
    torch.testing.assert_close(v, v2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(l0, l02, rtol=1e-12, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_big_model_runs_the_compiled_kernels_and_matches_eager():
    # The GPU benchmark's path: a model with a big layer gets every mask as Triton kernels. In
    # float32 (TF32 off) they give the eager mask's loss and gradients, channels_last weights
    # stay channels_last, and a step under bf16 autocast keeps the mask's math in float32.
    import copy

    from torch.utils._triton import has_triton

    from ltp_core.kernels.fused import fused_kernels_work

    if not has_triton():
        pytest.skip("no Triton: on this GPU LTP runs the eager mask")
    assert fused_kernels_work("cuda")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 256, 3), torch.nn.ReLU(),  # 73728 weights: big enough
                              torch.nn.Conv2d(256, 64, 1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    net = net.cuda().to(memory_format=torch.channels_last)
    eager = copy.deepcopy(net)
    pruners = [LTP(net, lambda_=1.0), LTP(eager, lambda_=1.0, fused=False)]
    # the two big layers as compiled kernels; the small ones (864 and 640) eager
    assert [m.compiled for m in pruners[0].masks.values()] == [False, True, True, False]
    x = torch.randn(8, 3, 16, 16, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(10, (8,), device="cuda")
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        _assert_same_step((net, eager), pruners, x, y, threshold=1e-3, atol=1e-5)
    assert net[2].weight.stride() == net[2].parametrizations.weight.original.stride()  # channels_last kept

    net.zero_grad(set_to_none=True)  # the thresholds too: they are parameters of the net
    with torch._dynamo.config.patch(error_on_recompile=True), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x), y) + pruners[0].regularizer()
        assert net[2].weight.dtype == torch.float32  # the mask itself runs in float32
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in net.parameters())
