"""GDP-style channel gates (after Guo et al., GDP, ICCV 2021): clipped gates with polarization,
a FLOPs budget, folded away at the end.

Gate form: this is *not* GDP's smoothed-L0 gate x^2 / (x^2 + eps) with an annealed eps. The
gates here are plain numbers g_c clipped to [0, 1] after every optimizer step, pushed apart by
the polarization regularizer (Zhuang et al. 2020) that GDP's analysis builds on; hence the
name "GDP-style (clipped, polarized gates)" wherever the method is listed.

One gate per channel of a channel group (`ltp_core.methods.surgery`), shared by everything the
group couples, as GDP's paper does for ResNets: where a skip connection joins the outputs of
several convolutions, all of them share the gates of their channels. The gate multiplies the
channel where it is read (the input of every layer that reads the group), which is the same
function as removing the channel when the gate is 0. The regularizer is

    R = lambda * sum_g w_g * sum_c (t * g_c - |g_c - mean_g(g)|),    t > 0

which pushes gates below their group's mean down and (for t < 1) those above it up; after each
optimizer step the gates are projected onto [0, 1], so the ones driven down sit at exactly 0.
w_g is the FLOPs one channel of group g costs (normalized to mean 1 over the gates) when an
`example_input` is given, else 1: GDP's FLOPs-aware weighting. So lambda is the force on one
gate (d R / d g_c = lambda w_g (t -+ 1)), whatever the size of the network.

The FLOPs budget (GDP's constraint; default: half the dense FLOPs): polarization runs for the
first `cut_fraction` of the run; at that step the gates are cut in ascending order (the ones
polarization drove down go first), each cut priced with a `budget.FlopsModel`, until the network's
FLOPs are at most `budget` of the dense FLOPs; a cut that would undershoot the budget by more
than `tolerance` is skipped in favour of cheaper channels (and if none lands within it, the lowest
gates left are cut until the budget is met). The cut gates are held at exactly 0,
polarization is switched off (lambda_ = 0) and the rest of the run fine-tunes. GDP's own
alternating solver of the budget-constrained problem is replaced by this cut. With
budget=None, the gates polarization drives to exactly 0 (<= zero_tol) are the ones removed, and
how many die depends on lambda_.

At `finalize()` the kept gates are folded into the readers (W'[:, c] = g_c W[:, c]) and the cut
channels are removed from every member of their group: the function is unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..checks import check_fraction, check_number
from ..core.method import split_groups
from .budget import FlopsModel
from .structured import StructuredMethod

__all__ = ["ChannelGate", "GDP"]


class ChannelGate(nn.Module):
    """A group's gates: `gate` (C,) Parameter, initialized to 1; forward() returns it."""

    def __init__(self, channels: int, device=None) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(channels, device=device))

    def forward(self) -> Tensor:
        return self.gate


class GDP(StructuredMethod):
    """GDP-style channel gates (clipped, polarized), one per channel of a group, cut to a FLOPs budget.

    Args:
        model: the network (`surgery.SUPPORTED`); gates are attached in place.
        lambda_: >= 0, weight of the polarization regularizer (per gate; see above).
        t: > 0, the regularizer's L1 share (Zhuang et al.'s t; t < 1 lets high gates rise to 1).
        zero_tol: gates <= zero_tol count as zero (removed) before a cut; 0 keeps the fold exact.
        budget: FLOPs of the pruned network / dense FLOPs, in (0, 1], reached by a cut at
            `cut_fraction` of the run (needs total_steps and example_input); None: no cut.
        tolerance: >= 0, how far below the budget a cut may land; when no cut lands within it, the
            lowest gates left are cut until the budget is met (so the FLOPs are at most the budget).
        cut_fraction: in (0, 1], the fraction of `total_steps` after which the cut happens.
        exclude: groups whose channels get no gate (a group's name or any layer of it).
        example_input: a batch on which the channel dependencies are traced (required unless the
            model is an nn.Sequential chain), FLOPs measured and the gates weighted.
        total_steps: the run's optimizer steps (the cut's step).
        check: see `StructuredMethod`.
    """

    STEP_OPTIONS = ("total_steps",)

    def __init__(self, model: nn.Module, *, lambda_: float = 1e-2, t: float = 1.0, zero_tol: float = 0.0,
                 budget: float | None = 0.5, tolerance: float = 0.01, cut_fraction: float = 0.5,
                 exclude: Iterable[str] | str = (), example_input: Tensor | None = None,
                 total_steps: int | None = None, check: bool = True) -> None:
        self.lambda_ = check_number("lambda_", lambda_)
        self.t = check_number("t", t, positive=True)
        self.zero_tol = check_number("zero_tol", zero_tol)
        self.budget = None if budget is None else check_fraction("budget", budget, allow_one=True, allow_zero=False)
        self.tolerance = check_number("tolerance", tolerance)
        cut_fraction = check_fraction("cut_fraction", cut_fraction, allow_one=True, allow_zero=False)
        super().__init__(model, exclude, example_input, check)
        if self.budget is not None and (total_steps is None or example_input is None):
            raise ValueError(f"{type(self).__name__}'s FLOPs budget needs total_steps (when to cut) and example_input "
                             "(the FLOPs model); pass budget=None for polarization alone")
        self.flops_model = FlopsModel(model, example_input, self.plan, list(self.groups)) \
            if example_input is not None else None
        self.cut_step = None if self.budget is None else max(1, round(cut_fraction * total_steps))
        self.cut: dict[str, Tensor] | None = None  # {group: bool (C,), True = removed}
        self.gates_at_cut: dict[str, Tensor] | None = None
        device = next((p.device for p in model.parameters()), None)
        self.attach_gates({g: ChannelGate(grp.channels, device) for g, grp in self.groups.items()})
        self.num_gates = sum(grp.channels for grp in self.groups.values())
        self.gate_weights = self._flops_weights()

    def _flops_weights(self) -> dict[str, float]:
        """{group: FLOPs one of its channels costs}, normalized to mean 1 over the gates."""
        if self.flops_model is None:
            return {g: 1.0 for g in self.groups}
        cost = self.flops_model.channel_cost()
        mean = sum(cost[g] * grp.channels for g, grp in self.groups.items()) / self.num_gates
        return {g: cost[g] / mean if mean > 0 else 1.0 for g in self.groups}

    @property
    def gates(self) -> dict[str, nn.Parameter]:
        """{group: its channels' gates (C,), in [0, 1]}."""
        self._check_live()
        return {g: m.gate for g, m in self._gates.items()}

    def regularizer(self) -> Tensor:
        """lambda * sum_g w_g sum_c (t g_c - |g_c - mean_g g|), a 0-d tensor."""
        total = super().regularizer()
        if self.lambda_ == 0:
            return total
        for g, gate in self.gates.items():
            total = total + self.gate_weights[g] * (self.t * gate.sum() - (gate - gate.mean()).abs().sum())
        return self.lambda_ * total

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Project the gates onto [0, 1]; cut at `cut_step`; from then on hold the cut gates at 0."""
        self._check_live()
        for gate in self.gates.values():
            gate.clamp_(0.0, 1.0)
        if self.budget is not None and self.cut is None and step >= self.cut_step:
            self.cut_to_budget()
        if self.cut is not None:
            for g, gate in self.gates.items():
                gate[self.cut[g]] = 0.0

    @torch.no_grad()
    def cut_to_budget(self) -> dict[str, Tensor]:
        """Choose the removed channels: the closed gates (<= zero_tol), then the lowest open ones
        until the FLOPs meet the budget (a group keeps at least one channel). Sets `cut`,
        `gates_at_cut`, lambda_ = 0."""
        if self.flops_model is None or self.budget is None:
            raise ValueError("cut_to_budget() needs a budget and the example_input's FLOPs model")
        gates = {g: v.detach().cpu().clone() for g, v in self.gates.items()}
        kept = {g: v.numel() for g, v in gates.items()}
        removed = {g: torch.zeros(v.numel(), dtype=torch.bool) for g, v in gates.items()}
        fraction = self.flops_model.fraction
        for v, g, i in sorted((float(v), g, i) for g, gate in gates.items() for i, v in enumerate(gate.tolist())):
            if kept[g] == 1:
                continue
            if v <= self.zero_tol:  # closed already: removed whatever the budget
                kept[g] -= 1
                removed[g][i] = True
                continue
            if fraction(kept) <= self.budget:
                break
            kept[g] -= 1
            if fraction(kept) < self.budget - self.tolerance:
                kept[g] += 1  # too costly a channel to cut now: try cheaper ones
                continue
            removed[g][i] = True
        # no cut landed within the tolerance: the lowest gates left go until the budget is met
        for _, g, i in sorted((float(v), g, i) for g, gate in gates.items() for i, v in enumerate(gate.tolist())):
            if fraction(kept) <= self.budget:
                break
            if kept[g] > 1 and not removed[g][i]:
                kept[g] -= 1
                removed[g][i] = True
        self.cut = {g: r.to(self.gates[g].device) for g, r in removed.items()}
        self.gates_at_cut = gates
        self.lambda_ = 0.0
        return self.cut

    def param_groups(self, weight_decay: float = 0.0, gate_lr: float | None = None, **options) -> list[dict]:
        """[every other parameter with `weight_decay`], [the gates: no weight decay, lr `gate_lr`]."""
        own = {"weight_decay": 0.0} | ({"lr": check_number("gate_lr", gate_lr)} if gate_lr is not None else {})
        return split_groups(self.model, list(self.gates.values()), weight_decay, own, **options)

    def keep_indices(self) -> dict[str, Tensor]:
        """After the cut, every channel not cut; before it, those whose gate is > zero_tol (the
        largest one if none is)."""
        if self.cut is not None:
            return {g: (~r).nonzero().flatten().cpu() for g, r in self.cut.items()}
        out = {}
        for g, gate in self.gates.items():
            idx = (gate.detach() > self.zero_tol).nonzero().flatten()
            out[g] = (idx if idx.numel() else gate.detach().argmax().reshape(1)).cpu()
        return out

    def state_dict(self) -> dict:
        """The cut (None before it) and lambda_, for checkpoints (the gates are in the model's)."""
        return {"lambda_": float(self.lambda_),
                "cut": None if self.cut is None else {g: r.cpu().tolist() for g, r in self.cut.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = {"lambda_", "cut"} - set(state)
        if missing:
            raise ValueError(f"GDP state lacks {sorted(missing)}; expected the dict GDP.state_dict() returns")
        self.lambda_ = float(state["lambda_"])
        cut = state["cut"]
        if cut is not None and set(cut) != set(self.groups):
            raise ValueError(f"GDP state cuts channel groups {sorted(cut)}, this model gates {sorted(self.groups)}")
        self.cut = None if cut is None else {g: torch.tensor(r, dtype=torch.bool, device=self.gates[g].device)
                                             for g, r in cut.items()}

