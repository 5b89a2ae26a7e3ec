"""Target sparsity: `LTP(model, target_sparsity=s)` reaches s and holds it within +-2 points.

The runs prune a pretrained digits MLP (the suite's recipe: Adam, T0 = 0.05) over several
seeds and targets, with other optimizers and learning rates, and from above; the unit tests
check the projection, the dual ascent on lambda_, the checkpoint state, bad input, and
`ltp-train --target-sparsity`.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from ltp_core import LTP
from ltp_core.core.trail import Trail
from ltp_core.data import load_digits
from ltp_core.engine import train
from ltp_core.engine.config import UsageError, method_options, parse_args
from ltp_core.engine.fit import accuracy, fit
from ltp_core.models import get_model, mlp, small_cnn

TOLERANCE = 0.02  # +-2 points of sparsity


@pytest.fixture(scope="module")
def dense_models():
    """{seed: (pretrained digits MLP, its data, its test accuracy)}: 10 epochs of Adam."""
    out = {}
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        data = load_digits(seed=seed)
        model = mlp()
        fit(model, data, torch.optim.Adam(model.parameters(), 1e-3), epochs=10, seed=seed, progress=False)
        out[seed] = (model, data, accuracy(model, data.x_test, data.y_test))
    return out


class _Recorder:
    """The method protocol around an LTP, recording the hard sparsity after every step."""

    def __init__(self, ltp: LTP) -> None:
        self.ltp, self.trace = ltp, []

    def regularizer(self):
        return self.ltp.regularizer()

    def after_step(self, step: int) -> None:
        self.ltp.after_step(step)
        self.trace.append(self.ltp.sparsity()["total"])


def _prune(dense_models, seed, target, *, epochs=12, optimizer="adam", threshold_lr=3e-4, **options):
    model, data, dense_acc = dense_models[seed]
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    ltp = LTP(model, temperature=0.05, target_sparsity=target, **options)
    if optimizer == "adam":
        opt = torch.optim.Adam(ltp.param_groups(threshold_lr=threshold_lr), lr=1e-3)
    else:
        opt = torch.optim.SGD(ltp.param_groups(threshold_lr=threshold_lr), lr=1e-2, momentum=0.9)
    rec = _Recorder(ltp)
    fit(model, data, opt, epochs=epochs, method=rec, seed=seed, progress=False)
    with ltp.hard_masks():
        hard_acc = accuracy(model, data.x_test, data.y_test)
    return ltp, rec.trace, hard_acc, dense_acc


def _steps_to_reach(start: float, target: float, pace: float) -> int:
    """Steps after which the pace alone has brought the required sparsity within TOLERANCE."""
    gap = abs(target - start)
    return 0 if gap <= TOLERANCE else math.ceil(math.log(TOLERANCE / gap) / math.log(1 - pace))


def _check_reaches_and_holds(trace, target, start=0.0, pace=0.02):
    inside = [abs(s - target) <= TOLERANCE for s in trace]
    assert any(inside), f"never within {TOLERANCE} of {target}: last {trace[-5:]}"
    first = inside.index(True)
    assert first + 1 <= _steps_to_reach(start, target, pace) + 1, (first, target)
    assert all(inside[first:]), f"left the +-{TOLERANCE} band after step {first}: {min(trace[first:])}, " \
                                f"{max(trace[first:])}"
    assert abs(trace[-1] - target) <= 0.005  # at the end the projection holds it to the count


@pytest.mark.parametrize("seed,target", [(0, 0.5), (1, 0.7), (2, 0.9), (0, 0.95)])
def test_reaches_and_holds_the_target(dense_models, seed, target):
    ltp, trace, hard_acc, dense_acc = _prune(dense_models, seed, target)
    _check_reaches_and_holds(trace, target)
    assert hard_acc >= dense_acc - 0.03, (hard_acc, dense_acc)
    assert 0.0 <= ltp.lambda_ < 50 and math.isfinite(ltp.lambda_)
    # The projection imposes the total only: the layers' shares stay learned, not uniform.
    layers = {k: v for k, v in ltp.sparsity().items() if k != "total"}
    if target >= 0.8:
        assert max(layers.values()) - min(layers.values()) > 0.05, layers


@pytest.mark.parametrize("optimizer,threshold_lr", [("sgd", 1e-5), ("adam", 3e-3)])
def test_independent_of_the_optimizer_and_its_learning_rate(dense_models, optimizer, threshold_lr):
    _, trace, hard_acc, dense_acc = _prune(dense_models, 0, 0.9, optimizer=optimizer, threshold_lr=threshold_lr)
    _check_reaches_and_holds(trace, 0.9)
    assert hard_acc >= dense_acc - 0.03


def test_comes_down_from_above_and_lambda_falls(dense_models):
    model = dense_models[1][0]
    start = LTP(copy.deepcopy(model), init_threshold=0.05).sparsity()["total"]
    assert start > 0.9
    ltp, trace, _, _ = _prune(dense_models, 1, 0.6, init_threshold=0.05, lambda_=2.0, target_pace=0.05)
    _check_reaches_and_holds(trace, 0.6, start=start, pace=0.05)
    assert ltp.lambda_ < 2.0  # the optimizer pruned too much on its own: the multiplier shrank


def test_lambda_grows_while_the_optimizer_lags():
    """With frozen thresholds (lr 0) only the projection prunes; lambda_ rises by
    target_lambda_lr times the (clipped) sparsity it had to add."""
    torch.manual_seed(0)
    model = mlp(hidden=(32,))
    ltp = LTP(model, lambda_=0.5, target_sparsity=0.8, target_pace=0.5, target_lambda_lr=2.0)
    before = {n: float(t.detach()) for n, t in ltp.thresholds.items()}
    ltp.after_step(1)
    required = 0.5 * 0.8
    assert ltp.sparsity()["total"] == pytest.approx(required, abs=2 / ltp.num_prunable)
    assert ltp.lambda_ == pytest.approx(0.5 + 2.0 * 0.05)  # the step error is clipped to 0.05
    assert all(float(ltp.thresholds[n].detach()) > before[n] for n in before)
    for _ in range(30):
        ltp.after_step()
    assert ltp.sparsity()["total"] == pytest.approx(0.8, abs=2 / ltp.num_prunable)


def test_projection_keeps_the_layers_proportions():
    torch.manual_seed(0)
    model = small_cnn(channels=(8, 16))  # Conv2d layers and a Linear head
    ltp = LTP(model, target_sparsity=0.9, target_pace=1.0)
    counts = {n: m.parametrizations.weight.original.numel() for n, m in ltp.layers.items()}
    # From dense, every layer keeps the same fraction: uniform sparsity.
    ltp.after_step()
    layer = ltp.sparsity()
    assert layer["total"] == pytest.approx(0.9, abs=len(counts) / ltp.num_prunable)
    for n in counts:
        assert layer[n] == pytest.approx(0.9, abs=1.0 / counts[n] + 1e-9)
    # From an uneven state: to prune more, every layer keeps the same share of its survivors.
    with torch.no_grad():
        for i, t in enumerate(ltp.thresholds.values()):
            w = ltp.weights()[list(ltp.thresholds)[i]]
            t.copy_((w.detach() ** 2).flatten().quantile(0.3 + 0.2 * i))
    kept_before = {n: (1 - s) * counts[n] for n, s in ltp.sparsity().items() if n != "total"}
    total_before = ltp.sparsity()["total"]
    ltp.target_sparsity = 0.85
    ltp.after_step()
    kept_after = {n: (1 - s) * counts[n] for n, s in ltp.sparsity().items() if n != "total"}
    ratio = (1 - 0.85) / (1 - total_before)
    for n in counts:
        assert kept_after[n] == pytest.approx(kept_before[n] * ratio, abs=1.0)
    # To prune less, every layer restores the same share of its pruned weights.
    pruned_before = {n: counts[n] - k for n, k in kept_after.items()}
    ltp.target_sparsity = 0.5
    ltp.after_step()
    pruned_after = {n: s * counts[n] for n, s in ltp.sparsity().items() if n != "total"}
    ratio = 0.5 / 0.85
    for n in counts:
        assert pruned_after[n] == pytest.approx(pruned_before[n] * ratio, abs=1.0)
    assert ltp.sparsity()["total"] == pytest.approx(0.5, abs=len(counts) / ltp.num_prunable)


def test_thresholds_sit_between_weights():
    """The projection puts tau midway between the largest pruned and the smallest kept w**2,
    so the hard mask does not flip on rounding."""
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    ltp = LTP(nn.Sequential(layer), target_sparsity=0.75, target_pace=1.0)
    ltp.after_step()
    w2 = (ltp.weights()["0"].detach() ** 2).flatten().sort().values
    tau = float(ltp.thresholds["0"].detach())
    k = int(0.75 * w2.numel())
    assert float(w2[k - 1]) < tau < float(w2[k])
    assert tau == pytest.approx(float(w2[k - 1] + w2[k]) / 2, rel=1e-6)


def test_without_a_target_after_step_changes_nothing():
    torch.manual_seed(0)
    ltp = LTP(mlp(hidden=(16,)), lambda_=3.0)
    with torch.no_grad():
        for t in ltp.thresholds.values():
            t.fill_(1e-3)
    before = {n: float(t.detach()) for n, t in ltp.thresholds.items()}
    ltp.after_step(1)
    assert {n: float(t.detach()) for n, t in ltp.thresholds.items()} == before and ltp.lambda_ == 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(LTP._WARN_AFTER + 1):
            ltp.regularizer()  # no target: no warning


def test_warns_when_after_step_is_never_called():
    ltp = LTP(mlp(hidden=(16,)), target_sparsity=0.5)
    with pytest.warns(RuntimeWarning, match="after_step"):
        for _ in range(LTP._WARN_AFTER):
            ltp.regularizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ltp.after_step()
        ltp.regularizer()  # the count starts again
        with torch.no_grad():
            for _ in range(2 * LTP._WARN_AFTER):
                ltp.regularizer()  # evaluation calls (no grad) do not count


def test_state_dict_resumes_the_control_exactly():
    torch.manual_seed(0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

    def make():
        torch.manual_seed(1)
        model = mlp(hidden=(32,))
        ltp = LTP(model, temperature=0.05, target_sparsity=0.8, target_pace=0.1)
        return model, ltp, torch.optim.Adam(ltp.param_groups(threshold_lr=1e-3), lr=1e-3)

    def steps(model, ltp, opt, n):
        for _ in range(n):
            loss = nn.functional.cross_entropy(model(x), y) + ltp.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ltp.after_step()

    model, ltp, opt = make()
    steps(model, ltp, opt, 20)
    half_model, half_ltp, half_opt = make()
    steps(half_model, half_ltp, half_opt, 10)
    saved = copy.deepcopy((half_model.state_dict(), half_opt.state_dict(), half_ltp.state_dict()))
    assert set(saved[2]) == {"lambda_", "required_sparsity"}
    resumed_model, resumed_ltp, resumed_opt = make()
    resumed_model.load_state_dict(saved[0])
    resumed_opt.load_state_dict(saved[1])
    resumed_ltp.load_state_dict(saved[2])
    steps(resumed_model, resumed_ltp, resumed_opt, 10)
    assert resumed_ltp.lambda_ == ltp.lambda_
    for n in ltp.thresholds:
        assert torch.equal(resumed_ltp.thresholds[n], ltp.thresholds[n])
    with pytest.raises(ValueError, match="lacks"):
        resumed_ltp.load_state_dict({"lambda_": 1.0})


@pytest.mark.parametrize("kwargs,match", [
    ({"target_sparsity": 1.0}, r"target_sparsity must be a number in \[0, 1\)"),
    ({"target_sparsity": -0.1}, r"target_sparsity must be a number in \[0, 1\)"),
    ({"target_sparsity": "0.5"}, r"target_sparsity must be a number in \[0, 1\)"),
    ({"target_sparsity": 0.5, "target_pace": 0.0}, r"target_pace must be a number in \(0, 1\]"),
    ({"target_sparsity": 0.5, "target_pace": 1.5}, r"target_pace must be a number in \(0, 1\]"),
    ({"target_sparsity": 0.5, "target_lambda_lr": -1.0}, "target_lambda_lr must be a finite number >= 0"),
])
def test_bad_target_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LTP(mlp(hidden=(8,)), **kwargs)


def test_the_target_can_be_set_mid_run():
    torch.manual_seed(0)
    ltp = LTP(mlp(hidden=(16,)), target_pace=1.0)
    assert ltp.target_sparsity is None and ltp.target is None
    ltp.target_sparsity = 0.5  # a controller from here, with the options given at construction
    assert ltp.target.target == 0.5 and ltp.target.pace == 1.0
    ltp.after_step()
    assert ltp.sparsity()["total"] == pytest.approx(0.5, abs=2 / ltp.num_prunable)
    with pytest.raises(ValueError, match=r"target_sparsity must be a number in \[0, 1\)"):
        ltp.target_sparsity = 1.0
    assert ltp.target_sparsity == 0.5
    ltp.target_sparsity = None  # lambda_ stays fixed from here
    before = {n: float(t.detach()) for n, t in ltp.thresholds.items()}
    ltp.after_step()
    assert ltp.target is None and {n: float(t.detach()) for n, t in ltp.thresholds.items()} == before


def test_after_step_refuses_a_finalized_pruner():
    ltp = LTP(mlp(hidden=(8,)), target_sparsity=0.5)
    ltp.finalize()
    with pytest.raises(RuntimeError, match="finalized"):
        ltp.after_step()


# -- ltp-train --target-sparsity ----------------------------------------------------------------

def test_cli_flag_maps_to_ltp_and_is_checked():
    cfg = parse_args(["--dataset", "digits", "--target-sparsity", "0.8", "--ltp-lambda", "2"])
    assert method_options(cfg) == {"target_sparsity": 0.8, "lambda_": 2.0}
    assert method_options(parse_args(["--dataset", "digits"])) == {}
    with pytest.raises(UsageError, match=r"--target-sparsity \(target_sparsity\): must be in \[0, 1\)"):
        parse_args(["--dataset", "digits", "--target-sparsity", "1.5"])
    with pytest.raises(UsageError, match="--target-sparsity: options of --method ltp"):
        parse_args(["--dataset", "digits", "--method", "gmp", "--target-sparsity", "0.5"])
    with pytest.raises(UsageError, match="given both"):
        method_options(parse_args(["--dataset", "digits", "--target-sparsity", "0.5",
                                   "--method-opt", "target_sparsity=0.6"]))


def test_ltp_train_reaches_the_target(tmp_path):
    out = tmp_path / "run"
    flags = ["--dataset", "digits", "--model", "mlp", "-b", "64", "-j", "0", "--device", "cpu", "--no-progress",
             "--opt", "adam", "--lr", "1e-3", "--wd", "0", "--lr-scheduler", "constant", "--epochs", "6",
             "--ltp-t0", "0.05", "--ltp-threshold-lr", "3e-4", "--target-sparsity", "0.85",
             "--method-opt", "target_pace=0.1", "--output-dir", str(out)]
    result = train.run(parse_args(flags))
    trail = Trail.load(out)
    assert abs(trail[-1]["sparsity"] - 0.85) <= 0.005
    assert all(abs(r["sparsity"] - 0.85) <= TOLERANCE for r in trail.records[2:])
    assert result.method.target_sparsity == 0.85
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert set(ckpt["method"]) == {"lambda_", "required_sparsity"}  # --resume continues the control
    plain = get_model("mlp", 10, in_channels=1, image_size=8)
    plain.load_state_dict(trail.load_checkpoint(trail[-1]))  # strict
