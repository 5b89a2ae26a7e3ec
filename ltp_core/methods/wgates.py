"""W-Gates: weight-dependent gates for filter pruning (Li, Liu, Wu, Yao, Zhang, Zhang, Yin,
arXiv 2007.02066), under a FLOPs budget or a predicted-latency budget.

What the paper's abstract fixes: the filters of each layer are switched on or off by binary
gates that a small fully connected network computes from the filters' own weights; the gates
are trained with the network; a cost term (the paper's: latency, from a predictor trained on
measured latencies) enters the loss; the filters whose gate is 0 are removed. The paper's full
text and code are not public, so the rest is this module's choice, each stated here:

* One gate module per prunable channel group (`ltp_core.methods.structured`: the output
  channels of a layer together with every layer that must lose them with it; in a chain, one
  layer's filters; in a ResNet stage, the channels a residual add joins). Channel c's filters in
  every layer that holds them (the group's producers and depthwise convs) are flattened and
  concatenated into one row x_c (C rows of K features), divided by the root-mean-square of all
  the rows (detached), so the MLP sees every layer's filters at one scale and so compares a
  filter with its group's others. A shared MLP, Linear(K, hidden) - ReLU - Linear(hidden, 1)
  (`hidden=0`: one Linear), maps each row to a score s_c. Its last bias starts at `init_score`
  (> 0: every gate starts open) and its last weight at small random values.
* Binary gate with a straight-through gradient: g_c = step(s_c) (1 if s_c > 0, else 0) in the
  forward, dg_c / ds_c := 1 in the backward (the identity straight-through estimator). The
  gradient reaches the MLP and, through it, the filter weights (the gate is a function of
  them). g_c multiplies channel c where the network reads it (the input of every layer that
  reads the group, after its BatchNorm and activation; `StructuredMethod.attach_gates`): with
  g_c in {0, 1} this is exactly the network with the channel removed (a gate before the
  BatchNorm would leave its shift beta).
* Cost (`cost="flops"`, the default): the FLOPs of the network finalize() gives, computed
  exactly from the gates: a Conv/Linear costs its dense FLOPs x (out channels kept / out) x
  (in channels kept / in) (a depthwise conv: one factor), each count being the sum of the gates
  of its channels, which is `predicted_flops` and what `ltp_core.core.flops.layer_flops`
  measures on the finalized network (tested). The loss term is cost_weight * max(0, F(g) /
  F_dense - budget): it pushes the gates down, each in proportion to the FLOPs its channel
  costs, until the budget is met, and below the budget the task loss alone moves them.
* Cost `cost="latency"` (the paper's kind): the predicted CPU latency of the network the gates
  keep, relative to the dense network's, from a `ltp_core.methods.latency.LatencyPredictor`:
  a small monotone MLP from each group's kept fraction (the mean of its gates) to seconds,
  fitted to the measured latencies of networks pruned by the same surgery to random widths
  (`fit_latency_predictor`, run once at construction with `latency_options`, or `latency=` a
  predictor fitted before, e.g. once for several runs). Its fit on held-out networks (R²,
  relative error) is `latency_fit`. The budget is then a fraction of the dense network's
  predicted latency, the loss term cost_weight * max(0, L(g) / L_dense - budget), and the
  freeze below meets it in predicted latency (the predictor is monotone, so closing channels
  never raises it). The predictor is only as good as its fit: on a busy machine timings are
  noisy. The fitted predictor is kept in the method's state_dict (a resumed run uses it).
* Freezing: after `freeze_fraction` of `total_steps` the gates are fixed at their values then
  and the rest of the run fine-tunes the kept filters (otherwise the weights' training would
  keep flipping gates). The gates are brought to the budget by their scores first: above it,
  the lowest-scoring open channels close until the cost meets it (a group keeps one); below
  it (`fill_budget`, default), the highest-scoring closed channels reopen while the cost stays
  within it, so a run ends just under the budget (the next channel in score order would exceed
  it) and methods compare at one budget (the hinge stops pushing at the budget, but the gates of
  a group move together and may overshoot it). Without `total_steps` the gates stay live (`freeze()` fixes them).
* finalize() (the structured base) removes every channel whose gate is 0 from all the layers of
  its group and returns the plain smaller network; it computes what the gated network computed.
  A group whose gates are all 0 keeps its highest-scoring channel, with its gate 0 folded in.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..checks import check_choice, check_flag, check_fraction, check_number, check_steps
from ..core.method import split_groups
from .latency import LatencyFit, LatencyPredictor, fit_latency_predictor
from .structured import StructuredMethod
from .surgery import IN_ROLES, ChannelGroup

__all__ = ["FilterGate", "WGates", "step_through"]

FILTER_ROLES = ("producer", "depthwise")  # the layers whose weights hold a group channel's filters
COSTS = ("flops", "latency")


def step_through(scores: Tensor) -> Tensor:
    """step(scores) (1 where > 0, else 0) in the forward, the identity in the backward."""
    hard = (scores > 0).to(scores.dtype)
    return hard + (scores - scores.detach())


def _raw_weight(layer: nn.Module) -> Tensor:
    """A layer's own trainable weight (under a parametrization: the original)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


class FilterGate(nn.Module):
    """The gates of one channel group: `forward()` -> (C,) gates in {0, 1}, computed from the
    filters of `layers` by a shared MLP (see the module docstring).

    Args:
        layers: the layers holding the group's filters (plain references, not submodules).
        rows: for each layer, the weight row of group channel c at rows[i][c].
        hidden: the MLP's hidden units (0: one Linear); init_score: the starting score.
    `freeze(gates)` fixes the output at `gates` (buffers `fixed`, `frozen`: in the state_dict).
    """

    def __init__(self, layers: Iterable[nn.Module], rows: Iterable[Tensor], hidden: int = 16,
                 init_score: float = 1.0) -> None:
        super().__init__()
        layers, rows = tuple(layers), [torch.as_tensor(r, dtype=torch.long) for r in rows]
        if not layers or len(layers) != len(rows) or len({r.numel() for r in rows}) != 1:
            raise ValueError("FilterGate needs one row index per group channel for each of its layers")
        object.__setattr__(self, "layers", layers)  # the model's layers, not children of the gate
        weight = _raw_weight(layers[0])
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.channels = rows[0].numel()
        for i, r in enumerate(rows):
            self.register_buffer(f"rows{i}", r.to(weight.device), persistent=False)
        features = sum(_raw_weight(layer)[0].numel() for layer in layers)
        last = nn.Linear(hidden or features, 1, **factory)
        self.net = nn.Sequential(nn.Linear(features, hidden, **factory), nn.ReLU(), last) if hidden else last
        with torch.no_grad():
            last.weight.normal_(0.0, 0.01)
            last.bias.fill_(init_score)
        self.register_buffer("fixed", torch.ones(self.channels, **factory))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool, device=factory["device"]))
        self.is_frozen = False  # `frozen` as a Python bool: read every forward without a device sync
        self.register_load_state_dict_post_hook(_sync_frozen)

    def inputs(self) -> Tensor:
        """(C, K): each group channel's filters in every layer, flattened, at the group's RMS scale."""
        parts = [_raw_weight(layer).flatten(1).index_select(0, getattr(self, f"rows{i}"))
                 for i, layer in enumerate(self.layers)]
        x = torch.cat(parts, dim=1)
        return x / x.detach().pow(2).mean().sqrt().clamp_min(1e-12)

    def scores(self) -> Tensor:
        """(C,) real scores; a channel is kept where its score is > 0."""
        return self.net(self.inputs()).squeeze(1)

    def forward(self) -> Tensor:
        if not self.is_frozen:
            return step_through(self.scores())
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.net.parameters()):
            # the fixed gates, with the MLP still in the graph at zero weight: every parameter
            # gets a (zero) gradient each step, as DistributedDataParallel requires
            return self.fixed + 0.0 * self.scores()
        return self.fixed

    @torch.no_grad()
    def freeze(self, gates: Tensor | None = None) -> None:
        """Fix the gates at `gates` (default: the current ones)."""
        self.fixed.copy_(self.forward() if gates is None else gates)
        self.frozen.fill_(True)
        self.is_frozen = True


def _sync_frozen(module: FilterGate, incompatible_keys) -> None:
    module.is_frozen = bool(module.frozen)


def _filter_rows(group: ChannelGroup) -> tuple[list[str], list[Tensor]]:
    """The group's filter-holding layers and, for each, the weight row of every group channel."""
    names, rows = [], []
    for m in group.members:
        if m.role in FILTER_ROLES:
            r = torch.empty(group.channels, dtype=torch.long)
            r[m.roots] = m.positions
            names.append(m.module)
            rows.append(r)
    return names, rows


class WGates(StructuredMethod):
    """Weight-dependent binary filter gates trained under a FLOPs or latency budget (module docstring).

    Args:
        model: the network; a gate module is attached to each prunable channel group, in place.
        budget: cost of the pruned network / the dense network's, in (0, 1].
        cost: "flops" (exact FLOPs from the gates) or "latency" (a fitted latency predictor's).
        latency: with cost="latency", a fitted `LatencyPredictor` for this network's channel
            groups; None: one is fitted at construction (`fit_latency_predictor(self,
            **latency_options)`, which times pruned copies of the model on the CPU).
        latency_options: keyword options of `fit_latency_predictor` (samples, batch, repeats,
            rounds, timer, ...).
        cost_weight: >= 0, the weight of the cost term max(0, cost / dense cost - budget).
        hidden: hidden units of each gate's MLP (0: a single Linear).
        init_score: the gates' starting score (> 0: open).
        freeze_fraction: in (0, 1]; the gates are fixed after this fraction of `total_steps`.
        fill_budget: at the freeze, reopen the highest-scoring closed channels that fit in the
            budget (True), or keep the gates as they are when below it (False).
        total_steps: the run's optimizer steps (None: the gates never freeze by themselves).
        example_input: a batch (e.g. one sample): the channel groups are traced and the FLOPs
            counted on it; required.
        exclude: groups left ungated (a group's root layer or any layer whose channels it holds).
    """

    STEP_OPTIONS = ("total_steps",)

    def __init__(self, model: nn.Module, *, budget: float = 0.5, cost: str = "flops",
                 latency: LatencyPredictor | None = None, latency_options: Mapping[str, Any] | None = None,
                 cost_weight: float = 2.0, hidden: int = 16,
                 init_score: float = 1.0, freeze_fraction: float = 0.75, fill_budget: bool = True,
                 total_steps: int | None = None, example_input: Tensor | None = None,
                 exclude: Iterable[str] | str = ()) -> None:
        self.budget = check_fraction("budget", budget, allow_one=True, allow_zero=False)
        self.cost = check_choice("cost", cost, COSTS)
        if cost == "flops" and (latency is not None or latency_options):
            raise ValueError("latency= and latency_options= are for cost='latency'; this run's cost is 'flops'")
        if latency is not None and not isinstance(latency, LatencyPredictor):
            raise ValueError(f"latency must be a fitted LatencyPredictor or None, got {type(latency).__name__}")
        if latency_options is not None and not isinstance(latency_options, Mapping):
            raise ValueError(f"latency_options must be a mapping of fit_latency_predictor options, "
                             f"got {latency_options!r}")
        self.cost_weight = check_number("cost_weight", cost_weight)
        self.hidden = check_steps("hidden", hidden, optional=False)
        self.init_score = check_number("init_score", init_score, positive=True)
        freeze_fraction = check_fraction("freeze_fraction", freeze_fraction, allow_one=True, allow_zero=False)
        self.fill_budget = check_flag("fill_budget", fill_budget)
        total_steps = check_steps("total_steps", total_steps, positive=True)
        if example_input is None:
            raise ValueError("WGates needs example_input (a batch, e.g. one sample): its cost term and budget "
                             "are FLOPs counted on it")
        super().__init__(model, exclude, example_input)
        self.freeze_step = None if total_steps is None else max(1, round(freeze_fraction * total_steps))
        self.latency_predictor: LatencyPredictor | None = None
        if cost == "latency":  # fitted on the model before any gate is attached
            if latency is None:
                latency = fit_latency_predictor(self, **dict(latency_options or {}))
            latency.check_groups({n: g.channels for n, g in self.groups.items()}, "WGates")
            self.latency_predictor = latency.requires_grad_(False)
        gates = {}
        for name, group in self.groups.items():
            layers, rows = _filter_rows(group)
            gates[name] = FilterGate([self.module(n) for n in layers], rows, self.hidden, self.init_score)
        self.attach_gates(gates)
        self.gate_modules: dict[str, FilterGate] = gates
        self._cost_terms = self._flops_terms()

    def _flops_terms(self) -> list[tuple[float, int, int, bool, list, list]]:
        """Per Conv/Linear with FLOPs: (dense FLOPs, out, in, depthwise, [(group, count per
        group channel of its output positions)], [(group, the same for its input positions)])."""
        parts: dict[tuple[str, str], list[tuple[str, Tensor]]] = {}
        for name, group in self.groups.items():
            for m in group.members:
                side = "in" if m.role in IN_ROLES else "out"
                counts = torch.bincount(m.roots, minlength=group.channels).double()
                parts.setdefault((m.module, side), []).append((name, counts))
        terms = []
        for layer, f in self._plan_flops.items():
            if layer == "total" or layer not in self.plan.layers:
                continue
            o, i, depthwise = self.plan.layers[layer]
            terms.append((float(f), o, i, depthwise, parts.get((layer, "out"), []), parts.get((layer, "in"), [])))
        return terms

    # -- gates and cost -------------------------------------------------------------------
    def gates(self) -> dict[str, Tensor]:
        """{group: (C,) gates in {0, 1}} (with the straight-through gradient while live)."""
        self._check_live()
        return {g: m() for g, m in self.gate_modules.items()}

    @torch.no_grad()
    def scores(self) -> dict[str, Tensor]:
        """{group: (C,) the gate MLP's scores} (kept where > 0)."""
        self._check_live()
        return {g: m.scores() for g, m in self.gate_modules.items()}

    def flops_of(self, gates: dict[str, Tensor]) -> Tensor:
        """FLOPs of the network finalize() gives when group g's channels are kept by gates[g]
        ((C,) in [0, 1]; a group missing keeps all): a float64 0-d tensor, differentiable in the
        gates, equal to `predicted_flops` for 0/1 gates."""
        removed = {g: 1.0 - v.double() for g, v in gates.items()}
        device = next(iter(removed.values())).device if removed else torch.device("cpu")
        counts = self._counts_on(device)
        total = torch.tensor(float(self._plan_flops["total"]), dtype=torch.float64, device=device)
        for (f, o, i, depthwise, out_parts, in_parts), (out_counts, in_counts) in zip(self._cost_terms, counts):
            o2 = o - sum((removed[g] * c).sum() for (g, _), c in zip(out_parts, out_counts) if g in removed)
            share = o2 / o
            if not depthwise:
                i2 = i - sum((removed[g] * c).sum() for (g, _), c in zip(in_parts, in_counts) if g in removed)
                share = share * i2 / i
            total = total + f * (share - 1.0)
        return total

    def _counts_on(self, device: torch.device) -> list[tuple[list[Tensor], list[Tensor]]]:
        """The cost terms' per-channel counts on `device` (copied once per device)."""
        cache = self.__dict__.setdefault("_count_cache", {})
        if device not in cache:
            cache[device] = [([c.to(device) for _, c in out_parts], [c.to(device) for _, c in in_parts])
                             for _, _, _, _, out_parts, in_parts in self._cost_terms]
        return cache[device]

    def gate_flops_fraction(self) -> Tensor:
        """F(g) / F_dense for the current gates (0-d float64, differentiable while they are live)."""
        return self.flops_of(self.gates()) / float(self.dense_flops["total"])

    @property
    def latency_fit(self) -> LatencyFit | None:
        """The latency predictor's fit on held-out networks (cost="latency"), else None."""
        return None if self.latency_predictor is None else self.latency_predictor.fit

    def _predictor_on(self, device: torch.device) -> LatencyPredictor:
        """The latency predictor on `device` (copied once per device)."""
        cache = self.__dict__.setdefault("_latency_cache", {})
        if device not in cache:
            cache[device] = copy.deepcopy(self.latency_predictor).to(device)
        return cache[device]

    def latency_of(self, gates: dict[str, Tensor]) -> Tensor:
        """Predicted latency of the network the gates keep / the dense network's (0-d,
        differentiable in the gates; cost="latency" only)."""
        if self.latency_predictor is None:
            raise ValueError("latency_of() needs cost='latency' (a latency predictor)")
        device = next(iter(gates.values())).device if gates else torch.device("cpu")
        return self._predictor_on(device).relative(gates)

    def predicted_latency_fraction(self, keep: dict | None = None) -> float:
        """The predicted latency of the network finalize() gives for `keep` ({group: indices
        or a count}; default keep_indices()) / the dense network's (cost="latency" only)."""
        if self.latency_predictor is None:
            raise ValueError("predicted_latency_fraction() needs cost='latency' (a latency predictor)")
        keep = self.keep_indices() if keep is None else keep
        p = self.latency_predictor
        with torch.no_grad():
            dense = p(torch.ones(len(p.groups), dtype=p.w1.dtype))
            return float(p(p.keep_fractions(keep)) / dense)

    def cost_of(self, gates: dict[str, Tensor]) -> Tensor:
        """The cost of the network the gates keep / the dense network's: FLOPs or predicted
        latency (`cost`); 0-d, differentiable in the gates."""
        if self.cost == "latency":
            return self.latency_of(gates)
        return self.flops_of(gates) / float(self.dense_flops["total"])

    def gate_cost_fraction(self) -> Tensor:
        """cost_of(the current gates) (differentiable while they are live)."""
        return self.cost_of(self.gates())

    def _within(self, gates: dict[str, Tensor]) -> bool:
        """Whether the network the 0/1 gates keep meets the budget."""
        if self.cost == "latency":
            return float(self.latency_of(gates)) <= self.budget
        return float(self.flops_of(gates)) <= self.budget * self.dense_flops["total"]

    def regularizer(self) -> Tensor:
        """cost_weight * max(0, cost(g) / dense cost - budget); 0 once the gates are frozen."""
        if self.cost_weight == 0 or self.frozen:
            return super().regularizer()
        excess = (self.gate_cost_fraction() - self.budget).clamp_min(0.0)
        return (self.cost_weight * excess).float()

    # -- schedule -------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        """Whether every gate is fixed."""
        return all(m.is_frozen for m in self.gate_modules.values())

    def after_step(self, step: int | None = None) -> None:
        """Freeze the gates at `freeze_step`, meeting the budget."""
        if self.freeze_step is not None and step is not None and step >= self.freeze_step and not self.frozen:
            self.freeze()

    @torch.no_grad()
    def freeze(self) -> dict[str, Tensor]:
        """Fix every gate at its current value, brought to the budget by the scores: above it, the
        lowest-scoring open channels close until the cost meets it (a group keeps at least one);
        below it (with fill_budget), the highest-scoring closed channels reopen while the cost
        stays within it. Returns the gates."""
        self._check_live()
        scores = {g: m.scores().double().cpu() for g, m in self.gate_modules.items()}
        gates = {g: (s > 0).double() for g, s in scores.items()}
        for g, s in scores.items():
            if not bool(gates[g].any()):
                gates[g][int(s.argmax())] = 1.0
        if not self._within(gates):
            open_ = sorted((float(s[i]), g, i) for g, s in scores.items() for i in range(s.numel()) if gates[g][i])

            def close(k: int) -> dict[str, Tensor]:  # the k lowest-scoring open channels closed
                out = {g: v.clone() for g, v in gates.items()}
                left = {g: int(v.sum()) for g, v in out.items()}
                for _, g, i in open_[:k]:
                    if left[g] > 1:
                        out[g][i], left[g] = 0.0, left[g] - 1
                return out

            lo, hi = 1, len(open_)  # the fewest closed that meet the budget (the cost falls with k)
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if self._within(close(mid)) else (mid + 1, hi)
            gates = close(lo)
        elif self.fill_budget:
            closed = sorted(((-float(s[i]), g, i) for g, s in scores.items() for i in range(s.numel())
                             if not gates[g][i]))

            def reopen(k: int) -> dict[str, Tensor]:  # the k highest-scoring closed channels opened
                out = {g: v.clone() for g, v in gates.items()}
                for _, g, i in closed[:k]:
                    out[g][i] = 1.0
                return out

            lo, hi = 0, len(closed)  # the most reopened within the budget (the cost grows with k)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if self._within(reopen(mid)) else (lo, mid - 1)
            gates = reopen(lo)
        for g, m in self.gate_modules.items():
            m.freeze(gates[g].to(m.fixed))
        return {g: m.fixed.clone() for g, m in self.gate_modules.items()}

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The fitted latency predictor (cost="latency"), so a resumed run keeps it; the gates
        themselves are in the model's state_dict."""
        return {} if self.latency_predictor is None else {"latency": self.latency_predictor.to_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "latency" in state and self.cost == "latency":
            predictor = LatencyPredictor.from_state(state["latency"])
            predictor.check_groups({n: g.channels for n, g in self.groups.items()}, "WGates")
            self.latency_predictor = predictor
            self.__dict__.pop("_latency_cache", None)

    # -- the optimizer and the structured base ---------------------------------------------
    def param_groups(self, weight_decay: float = 0.0, gate_lr: float | None = None, **options) -> list[dict]:
        """[the network's parameters with `weight_decay`], [the gate MLPs: no weight decay, lr `gate_lr`]."""
        self._check_live()
        own = [p for m in self.gate_modules.values() for p in m.parameters()]
        extra = {"weight_decay": 0.0} | ({"lr": check_number("gate_lr", gate_lr)} if gate_lr is not None else {})
        return split_groups(self.model, own, weight_decay, extra, **options)

    @torch.no_grad()
    def keep_indices(self) -> dict[str, Tensor]:
        """{group: the channels whose gate is 1} (the highest-scoring one if none is: its gate
        stays 0, so it computes nothing, but the network keeps a channel there)."""
        out = {}
        for g, m in self.gate_modules.items():
            idx = (m() > 0).nonzero().flatten().cpu()
            out[g] = idx if idx.numel() else m.scores().argmax().reshape(1).cpu()
        return out
