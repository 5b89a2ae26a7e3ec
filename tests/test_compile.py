"""torch.compile of a whole LTP model on CPU: one graph, and the same training as eager."""
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
        for p in pruners:
            with torch.no_grad():
                for t in p.thresholds.values():
                    t.fill_(2e-3)
        x, y = torch.randn(4, 1, 8, 8), torch.randint(10, (4,))
        for net, p in zip((eager, fused), pruners):
            (F.cross_entropy(net(x), y) + p.regularizer()).backward()
        torch.testing.assert_close(pruners[0].soft_l0(), pruners[1].soft_l0())
        for a, b in zip(eager.parameters(), fused.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
