"""A latency predictor for channel pruning: an MLP fitted to the measured CPU latency of networks
pruned to sampled widths, differentiable in the channel gates.

    predictor = fit_latency_predictor(method)       # method: any StructuredMethod
    print(predictor.fit)                            # R² and relative error on held-out networks
    predictor.relative(gates)                       # predicted latency / the dense network's

How it is fitted (`fit_latency_predictor`):

* Samples: keep counts per channel group. The first sample is the dense network; each other one
  draws a level u in [min_fraction, 1] and keeps round((u + spread * U(-1, 1)) * C) of each
  group's C channels (clipped to [min_fraction, 1], at least one), so the samples cover the
  whole range of sizes and vary group by group around it.
* Each sample becomes a real network: a copy of the model with the channels removed by the
  structured surgery (`pruned_copy`: what `finalize()` gives for those keep counts; its FLOPs
  are `method.predicted_flops(keep)`), on the CPU. Its latency is `timer(network, batch)`: by
  default `measure_latency`, the median of `repeats` timed forwards of a fixed batch of `batch`
  random inputs shaped like the example input, under `torch.inference_mode`, on one thread,
  after `warmup` untimed ones. The networks are timed in `rounds` interleaved passes and each
  keeps the median of its rounds, so a slow spell of a shared machine does not fall on a few
  networks only. On a busy machine `statistic="min"` (the shortest time, of the forwards and
  of the rounds) is far more repeatable than the median: the least disturbed run.
* The predictor maps the kept fraction of each group (a vector x of G numbers in (0, 1]) to
  seconds: log y = a + s (b2 + softplus(V) tanh(softplus(W) x + b1)), with a and s the mean
  and standard deviation of the fitted log latencies. Non-negative weights and increasing
  activations make it monotone by construction: keeping more channels never predicts a lower
  latency, and the gates' gradient is never negative (a cost term can only push them down).
  Fitted by full-batch Adam on the log latencies (so a small network's relative error counts
  as much as a large one's).
* A random `test_fraction` of the samples (never the dense one) is held out; `predictor.fit`
  (a `LatencyFit`) reports R², the median and largest relative error |predicted - measured| /
  measured on them, and the held-out latencies themselves. Timings on a busy machine are noisy:
  read the fit before trusting a budget in predicted latency.

`predictor.fractions(gates)` turns {group: (C,) gates} into the G kept fractions (the gates'
mean: differentiable, so a straight-through gate gets a gradient), `predictor(fractions)` the
seconds, `predictor.relative(gates)` their ratio to the dense network's predicted latency.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_fraction, check_number, check_steps
from .surgery import remove_channels_

if TYPE_CHECKING:  # pragma: no cover
    from .structured import StructuredMethod

__all__ = ["LatencyFit", "LatencyPredictor", "fit_latency_predictor", "measure_latency", "pruned_copy",
           "sample_keeps", "Timer"]

Timer = Callable[[nn.Module, Tensor], float]  # (a network on the CPU, a batch) -> its latency in seconds


STATISTICS = {"median": statistics.median, "min": min}


@torch.inference_mode()
def measure_latency(model: nn.Module, x: Tensor, *, repeats: int = 5, warmup: int = 1,
                    statistic: str = "median") -> float:
    """The median (or, with statistic="min", the shortest) wall time in seconds of `repeats`
    forwards of `x` through `model` (in eval mode), after `warmup` untimed ones, under
    torch.inference_mode on one CPU thread (the caller's thread count is restored)."""
    reduce = STATISTICS[check_choice("statistic", statistic, tuple(STATISTICS))]
    repeats = check_steps("repeats", repeats, positive=True, optional=False)
    warmup = check_steps("warmup", warmup, optional=False)
    threads = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(1)
    model.eval()
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return reduce(times)


@torch.no_grad()
def pruned_copy(method: StructuredMethod, keep: Mapping[str, Tensor | int]) -> nn.Module:
    """A copy of `method`'s network on the CPU, in eval mode, with the channels `keep`
    ({group: kept indices or a count, the first ones}; groups not named keep all) removed by the
    structured surgery, without the method's gates: the network `finalize()` gives for those
    widths. The model is untouched."""
    return remove_channels_(method.ungated_copy(), method.plan, dict(keep)).cpu().eval()


def sample_keeps(groups: Mapping[str, int], samples: int, *, min_fraction: float = 0.1, spread: float = 0.25,
                 seed: int = 0) -> list[dict[str, int]]:
    """`samples` keep-count dicts for groups {name: channels}: the dense network first, then
    random widths (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    out = [{n: c for n, c in groups.items()}]
    for _ in range(samples - 1):
        level = min_fraction + (1.0 - min_fraction) * float(torch.rand((), generator=g))
        keep = {}
        for n, c in groups.items():
            f = level + spread * (2.0 * float(torch.rand((), generator=g)) - 1.0)
            f = min(1.0, max(min_fraction, f))
            keep[n] = max(1, min(c, round(f * c)))
        out.append(keep)
    return out


@dataclass(frozen=True)
class LatencyFit:
    """How well a `LatencyPredictor` predicts networks it was not fitted on.

    r2: 1 - sum (predicted - measured)² / sum (measured - their mean)², over the held-out
        networks; median_relative_error, max_relative_error: of |predicted - measured| / measured
        there; train_samples, test_samples: how many networks each side had; dense_latency: the
        dense network's measured latency (s); held_out: the held-out networks' places among the
        samples (`sample_keeps`' order, 0 = the dense network: never held out); measured,
        predicted: their latencies (s).
    """
    r2: float
    median_relative_error: float
    max_relative_error: float
    train_samples: int
    test_samples: int
    dense_latency: float
    held_out: tuple[int, ...]
    measured: tuple[float, ...]
    predicted: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("held_out", "measured", "predicted"):
            d[key] = list(d[key])
        return d

    def __str__(self) -> str:
        return (f"latency predictor on {self.test_samples} held-out networks ({self.train_samples} fitted): "
                f"R² {self.r2:.3f}, median relative error {100 * self.median_relative_error:.1f}% "
                f"(max {100 * self.max_relative_error:.1f}%); dense network {1e3 * self.dense_latency:.2f} ms")


class LatencyPredictor(nn.Module):
    """Kept channel fractions per group -> latency in seconds, monotone non-decreasing in each
    fraction (see the module docstring). Its parameters do not require gradients once fitted;
    the gradient flows to the fractions (and so to the gates).

    Args:
        groups: {group name: channels}, in the order of the input vector.
        hidden: hidden units (>= 1).
        seed: the initialization's seed.
    """

    def __init__(self, groups: Mapping[str, int], hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        if not groups:
            raise ValueError("LatencyPredictor needs at least one channel group")
        self.groups = {str(n): int(c) for n, c in groups.items()}
        self.hidden = check_steps("hidden", hidden, positive=True, optional=False)
        g = torch.Generator().manual_seed(seed)
        n = len(self.groups)
        self.w1 = nn.Parameter(torch.randn(self.hidden, n, generator=g) * 0.5 - 1.0)
        self.b1 = nn.Parameter(torch.randn(self.hidden, generator=g) * 0.5)
        self.w2 = nn.Parameter(torch.randn(1, self.hidden, generator=g) * 0.5 - 1.0)
        self.b2 = nn.Parameter(torch.zeros(1))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.fit: LatencyFit | None = None

    def forward(self, fractions: Tensor) -> Tensor:
        """(..., G) kept fractions -> (...) predicted seconds."""
        h = torch.tanh(F.linear(fractions.to(self.w1.dtype), F.softplus(self.w1), self.b1))
        z = F.linear(h, F.softplus(self.w2), self.b2).squeeze(-1)
        return torch.exp(self.y_mean + self.y_std * z)

    def fractions(self, gates: Mapping[str, Tensor]) -> Tensor:
        """(G,) the kept fraction of each group: the mean of its gates (1 for a group not
        given); differentiable in the gates."""
        unknown = sorted(set(gates) - set(self.groups))
        if unknown:
            raise ValueError(f"{unknown} are not groups of this latency predictor; it knows {list(self.groups)}")
        ref = self.w1
        parts = []
        for name, c in self.groups.items():
            if name in gates:
                v = gates[name]
                if v.numel() != c:
                    raise ValueError(f"group {name!r} has {c} channels in the latency predictor, got {v.numel()} gates")
                parts.append(v.to(device=ref.device, dtype=ref.dtype).mean())
            else:
                parts.append(ref.new_ones(()))
        return torch.stack(parts)

    def keep_fractions(self, keep: Mapping[str, Tensor | int]) -> Tensor:
        """(G,) kept fractions of a keep dict ({group: indices or a count})."""
        ref = self.w1
        out = []
        for name, c in self.groups.items():
            k = keep.get(name, c)
            count = k if isinstance(k, int) else int(torch.as_tensor(k).numel())
            out.append(count / c)
        return torch.tensor(out, dtype=ref.dtype, device=ref.device)

    def latency(self, gates: Mapping[str, Tensor]) -> Tensor:
        """Predicted seconds of the network the gates keep (0-d, differentiable in them)."""
        return self(self.fractions(gates))

    def relative(self, gates: Mapping[str, Tensor]) -> Tensor:
        """Predicted latency of the gated network / that of the dense one (0-d)."""
        dense = self(torch.ones(len(self.groups), dtype=self.w1.dtype, device=self.w1.device))
        return self.latency(gates) / dense

    def check_groups(self, groups: Mapping[str, int], who: str = "this method") -> None:
        """Refuse a predictor fitted on other channel groups than {name: channels}."""
        mine = {n: int(c) for n, c in groups.items()}
        if mine != self.groups:
            raise ValueError(f"the latency predictor was fitted on groups {self.groups}, but {who} has {mine}")

    def extra_repr(self) -> str:
        return f"{len(self.groups)} groups -> {self.hidden} hidden -> latency (s), monotone"

    # -- plain state for checkpoints ------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (a checkpoint loads it with weights_only=True)."""
        return {"groups": dict(self.groups), "hidden": self.hidden,
                "params": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
                "fit": None if self.fit is None else self.fit.as_dict()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LatencyPredictor:
        out = cls(state["groups"], state["hidden"])
        out.load_state_dict(state["params"])
        out.requires_grad_(False)
        fit = state.get("fit")
        if fit is not None:
            out.fit = LatencyFit(**{**fit, **{k: tuple(fit[k]) for k in ("held_out", "measured", "predicted")}})
        return out


def _train(predictor: LatencyPredictor, x: Tensor, y: Tensor, steps: int, lr: float) -> None:
    y = y.log()
    predictor.y_mean.fill_(float(y.mean()))
    predictor.y_std.fill_(max(float(y.std()), 1e-12) if len(y) > 1 else max(float(y.abs().mean()), 1e-12))
    target = (y - predictor.y_mean) / predictor.y_std
    opt = torch.optim.Adam(predictor.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            h = torch.tanh(F.linear(x, F.softplus(predictor.w1), predictor.b1))
            z = F.linear(h, F.softplus(predictor.w2), predictor.b2).squeeze(-1)
            loss = (z - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    predictor.requires_grad_(False)


def _broadcast(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Under torch.distributed, every process gets process 0's fitted predictor."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return state
    box = [state]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fit_latency_predictor(method: StructuredMethod, *, samples: int = 32, test_fraction: float = 0.25,
                          batch: int = 4, repeats: int = 5, warmup: int = 1, rounds: int = 3,
                          statistic: str = "median", timer: Timer | None = None,
                          hidden: int = 16, min_fraction: float = 0.1, spread: float = 0.25, steps: int = 2000,
                          lr: float = 0.02, seed: int = 0) -> LatencyPredictor:
    """Measure the latency of `samples` networks pruned from `method`'s model to random widths,
    fit a `LatencyPredictor` on most of them and report its fit on the rest (module docstring).

    Args:
        method: a StructuredMethod built with an example_input (the batch's shape comes from it).
        samples: networks measured (>= 4, the dense one among them); test_fraction of them in
            (0, 1) are held out for the fit report (at least one).
        batch: the timed batch size; repeats, warmup: forwards timed (the median is kept) and
            run before timing, per network (`measure_latency`); rounds: passes over all the
            networks, interleaved; statistic: "median" (the typical latency) or "min" (the
            least disturbed one: more repeatable on a busy machine), of a network's timed
            forwards and then of its rounds.
        timer: (network on the CPU, batch) -> seconds, in place of `measure_latency`.
        hidden, steps, lr, seed: the MLP, its Adam steps and learning rate, the seed (samples,
            split, inputs and initialization).
        min_fraction, spread: the smallest kept fraction sampled, and how far a group's fraction
            strays from the sample's level (module docstring).
    Under torch.distributed, process 0 measures and fits and the others receive its predictor.
    """
    samples = check_steps("samples", samples, positive=True, optional=False)
    if samples < 4:
        raise ValueError(f"samples must be >= 4 (some to fit, some to test), got {samples}")
    test_fraction = check_fraction("test_fraction", test_fraction, allow_zero=False)
    batch = check_steps("batch", batch, positive=True, optional=False)
    rounds = check_steps("rounds", rounds, positive=True, optional=False)
    reduce = STATISTICS[check_choice("statistic", statistic, tuple(STATISTICS))]
    min_fraction = check_fraction("min_fraction", min_fraction, allow_zero=False)
    spread = check_number("spread", spread)
    steps = check_steps("steps", steps, positive=True, optional=False)
    lr = check_number("lr", lr, positive=True)
    if method.example_input is None:
        raise ValueError(f"fit_latency_predictor needs a {type(method).__name__} built with an example_input")
    if timer is None:
        def timer(net: nn.Module, x: Tensor) -> float:
            return measure_latency(net, x, repeats=repeats, warmup=warmup, statistic=statistic)
    groups = {n: g.channels for n, g in method.groups.items()}
    predictor = LatencyPredictor(groups, hidden, seed)

    import torch.distributed as dist
    leader = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    state = None
    if leader:
        keeps = sample_keeps(groups, samples, min_fraction=min_fraction, spread=spread, seed=seed)
        shape = tuple(method.example_input.shape[1:])
        x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))
        rounds_seen: list[list[float]] = [[] for _ in keeps]
        for _ in range(rounds):  # interleaved: a slow spell of the machine hits every network alike
            for seen, keep in zip(rounds_seen, keeps):
                net = pruned_copy(method, keep)
                seen.append(float(timer(net, x)))
                del net
        latencies = [reduce(seen) for seen in rounds_seen]
        bad = [t for t in latencies if not (math.isfinite(t) and t > 0)]
        if bad:
            raise ValueError(f"the timer must return latencies > 0 in seconds, got {bad[:3]}")
        xs = torch.stack([predictor.keep_fractions(k) for k in keeps])
        ys = torch.tensor(latencies, dtype=torch.float64)
        n_test = max(1, min(samples - 2, round(test_fraction * samples)))
        order = 1 + torch.randperm(samples - 1, generator=torch.Generator().manual_seed(seed + 1))
        test = order[:n_test]
        train = torch.cat([torch.zeros(1, dtype=torch.long), order[n_test:]])  # the dense one is fitted
        _train(predictor, xs[train], ys[train].to(xs.dtype), steps, lr)
        with torch.no_grad():
            predicted = predictor(xs[test]).double()
        measured = ys[test]
        residual = float((predicted - measured).pow(2).sum())
        total = float((measured - measured.mean()).pow(2).sum())
        relative = ((predicted - measured).abs() / measured).tolist()
        predictor.fit = LatencyFit(
            r2=1.0 - residual / total if total > 0 else float("nan"),
            median_relative_error=float(statistics.median(relative)), max_relative_error=float(max(relative)),
            train_samples=int(train.numel()), test_samples=int(test.numel()), dense_latency=latencies[0],
            held_out=tuple(test.tolist()), measured=tuple(measured.tolist()), predicted=tuple(predicted.tolist()))
        state = predictor.to_state()
    state = _broadcast(state)
    return predictor if leader else LatencyPredictor.from_state(state)
