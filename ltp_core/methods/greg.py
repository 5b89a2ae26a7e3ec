"""GReg: neural pruning via growing regularization (Wang et al., ICLR 2021), channel groups.

A penalized group is one channel of a channel group (`ltp_core.methods.surgery`): the filter
(weight row and bias) of every producer the channel comes out of (several where a residual add
joins layers), a depthwise conv's filter, PReLU slope and, with include_norm, the gamma/beta of
every BatchNorm on it. The channels are removed for real at the end, from every member of the
group, through the same surgery as every structured method.

GReg-1 (variant=1): the channels to remove are the smallest-L1 ones of each group (`ratio` of
them; a channel's L1 norm is summed over the group's producers), chosen at construction; they
get the L2 penalty (lambda / 2) * ||group||^2 with lambda += delta every `interval` steps up to
`ceiling`; after `stabilize_steps` more steps at the ceiling they are zeroed and held at zero,
and the layers reading them see them as zero (the rest of the run fine-tunes the network that
finalize() gives).

GReg-2 (variant=2): first every channel of a group gets the same growing penalty, up to
`pick_ceiling`; the weights then separate by their local curvature and the channels to remove
are picked by L1 magnitude at that point; the kept channels' penalty is dropped and the picked
ones' keeps growing to `ceiling`, as in GReg-1.

Where this differs from the authors' code (github.com/MingSun-Tse/Regularization-Pruning):
- the bias and the BatchNorm gamma/beta of a channel are penalized with its weights
  (include_norm=True; the authors penalize the conv weights only): pass include_norm=False for
  theirs;
- the number of channels removed is min(floor(ratio * C + 0.5), C - 1) (round half up,
  `num_removed`); the authors take min(ceil(ratio * C), C - 1), one more whenever the fraction
  of ratio * C lies in (0, 0.5): at ratio 0.52 of 10 channels, 5 here and 6 there;
- one schedule for all layers (the paper also stops a layer early once its magnitude ratio is
  large); `finalize()` removes the chosen channels whenever it is called;
- residual networks: every channel group is pruned, the groups a skip connection joins
  included (the authors' ResNet-56 runs prune only the first conv of each block: pass the
  joined groups in `exclude` for that setting).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..checks import check_fraction, check_number, check_steps
from .structured import FixedGate, StructuredMethod

__all__ = ["GReg", "filter_l1", "num_removed"]


def num_removed(ratio: float, channels: int) -> int:
    """Channels removed at `ratio` of `channels`: round half up, at most channels - 1."""
    return min(channels - 1, math.floor(ratio * channels + 0.5))


def filter_l1(layer: nn.Module) -> Tensor:
    """Sum |W| of each output channel of a Conv/Linear (Li et al.'s filter importance), (C,)."""
    return layer.weight.detach().abs().flatten(1).sum(1)


def layer_ratios(ratio: float | dict[str, float], producers: Iterable[str]) -> dict[str, float]:
    """{group: fraction of its channels removed} from one ratio or a {name: ratio} dict
    (missing names: 0)."""
    producers = list(producers)
    if isinstance(ratio, dict):
        unknown = sorted(set(ratio) - set(producers))
        if unknown:
            raise ValueError(f"ratio names {unknown} are not prunable channel groups; valid: {producers}")
        return {p: check_fraction(f"ratio[{p!r}]", ratio.get(p, 0.0)) for p in producers}
    ratio = check_fraction("ratio", ratio)
    return {p: ratio for p in producers}


class GReg(StructuredMethod):
    """Growing-regularization filter pruning.

    Args:
        model: the network (`surgery.SUPPORTED`); its channels are removed at finalize().
        ratio: fraction of each channel group's channels removed, in [0, 1), or {group: ratio}.
        variant: 1 (GReg-1) or 2 (GReg-2).
        delta: lambda increment per update (the paper: 1e-4). None: from total_steps, so that
            lambda reaches `ceiling` after `reg_fraction` of the run (1e-4 without total_steps).
        interval: optimizer steps between increments (the paper: 5-10).
        ceiling: the final lambda (the paper: 1.0); units of an L2 coefficient (grad += lambda w).
        pick_ceiling: GReg-2's uniform lambda at which the groups are picked (default ceiling / 10).
        stabilize_steps: steps held at the ceiling before the groups are zeroed.
        total_steps, reg_fraction: see delta.
        include_norm: also penalize the BatchNorm gamma/beta of a channel (the authors: False).
        exclude: groups whose channels are kept (a group's name or any layer of it).
        example_input: a batch on which the channel dependencies are traced (required unless
            the model is an nn.Sequential chain) and FLOPs measured.
    """

    # An explicit delta fixes the step at which lambda reaches the ceiling; the default one is
    # derived from total_steps, and `interval` then only sets the granularity.
    STEP_OPTIONS = ("total_steps", "delta", "stabilize_steps")

    def __init__(self, model: nn.Module, *, ratio: float | dict[str, float] = 0.5, variant: int = 1,
                 delta: float | None = None, interval: int = 10, ceiling: float = 1.0,
                 pick_ceiling: float | None = None, stabilize_steps: int = 0, total_steps: int | None = None,
                 reg_fraction: float = 0.5, include_norm: bool = True, exclude: Iterable[str] | str = (),
                 example_input: Tensor | None = None, check: bool = True) -> None:
        if variant not in (1, 2):
            raise ValueError(f"unknown GReg variant {variant!r}; allowed: [1, 2]")
        self.interval = check_steps("interval", interval, positive=True, optional=False)
        self.ceiling = check_number("ceiling", ceiling, positive=True)
        self.pick_ceiling = self.ceiling / 10 if pick_ceiling is None else check_number(
            "pick_ceiling", pick_ceiling, positive=True)
        if self.pick_ceiling > self.ceiling:
            raise ValueError(f"pick_ceiling ({self.pick_ceiling}) must be <= ceiling ({self.ceiling})")
        self.stabilize_steps = check_steps("stabilize_steps", stabilize_steps, optional=False)
        total_steps = check_steps("total_steps", total_steps, positive=True)
        reg_fraction = check_fraction("reg_fraction", reg_fraction, allow_one=True, allow_zero=False)
        if delta is None:
            delta = 1e-4 if total_steps is None else self.ceiling * self.interval / max(1.0, reg_fraction * total_steps)
        self.delta = check_number("delta", delta, positive=True)
        super().__init__(model, exclude, example_input, check)
        self.variant = variant
        self.include_norm = bool(include_norm)
        self.ratios = layer_ratios(ratio, self.groups)
        # lambda per group and channel; the channels picked for removal (None: not yet picked)
        self.lambdas = {g: torch.zeros(grp.channels, device=self.module(g).weight.device)
                        for g, grp in self.groups.items()}
        self.picked: dict[str, Tensor] | None = self._smallest() if variant == 1 else None
        self.phase = "grow" if variant == 1 else "pick"
        self.ceiling_step: int | None = None
        self.pruned_step: int | None = None

    # -- groups ----------------------------------------------------------------------------
    def _smallest(self) -> dict[str, Tensor]:
        """{group: bool (C,), True for the smallest-L1 channels at the group's ratio}."""
        out = {}
        for g, grp in self.groups.items():
            scores = self.filter_l1(grp)
            chosen = torch.zeros(grp.channels, dtype=torch.bool, device=self.lambdas[g].device)
            chosen[torch.argsort(scores, stable=True)[:num_removed(self.ratios[g], grp.channels)]] = True
            out[g] = chosen
        return out

    def removed(self) -> dict[str, Tensor]:
        """{group: bool (C,), True for the channels finalize() removes now}."""
        return self.picked if self.picked is not None else self._smallest()

    def keep_indices(self) -> dict[str, Tensor]:
        return {g: (~r).nonzero().flatten().cpu() for g, r in self.removed().items()}

    # -- the penalty and its schedule ------------------------------------------------------
    def regularizer(self) -> Tensor:
        """sum over groups and channels of (lambda_c / 2) * ||channel c's parameters||^2 (0-d)."""
        self._check_live()
        total = super().regularizer()
        if self.phase == "pruned":
            return total
        for g, grp in self.groups.items():
            lam = self.lambdas[g]
            if not bool((lam > 0).any()):
                continue
            for t, pos, roots in self.channel_params(grp, self.include_norm):
                sq = t.index_select(0, pos).pow(2)
                sq = sq.flatten(1).sum(1) if sq.dim() > 1 else sq
                total = total + 0.5 * (lam.to(t.dtype)[roots] * sq).sum()
        return total

    @property
    def current_lambda(self) -> float:
        """The largest lambda now in force."""
        return max(float(lam.max()) for lam in self.lambdas.values())

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Grow lambda every `interval` steps; pick (GReg-2); zero the groups at the ceiling
        plus `stabilize_steps`, and keep them at zero afterwards."""
        self._check_live()
        if self.phase == "pruned":
            self._zero_groups()
            return
        if self.phase in ("pick", "grow") and step % self.interval == 0:
            for p in self.groups:
                if self.phase == "pick":  # every channel of a group that loses some
                    target = torch.full_like(self.lambdas[p], self.ratios[p] > 0, dtype=torch.bool)
                else:
                    target = self.picked[p]
                self.lambdas[p][target] = torch.clamp(self.lambdas[p][target] + self.delta,
                                                      max=self.pick_ceiling if self.phase == "pick" else self.ceiling)
            if self.phase == "pick" and self.current_lambda >= self.pick_ceiling:
                self.picked = self._smallest()
                for p in self.groups:
                    self.lambdas[p][~self.picked[p]] = 0.0
                self.phase = "grow"
            elif self.phase == "grow" and self.current_lambda >= self.ceiling:
                self.phase, self.ceiling_step = "stabilize", step
        if self.phase == "stabilize" and step - self.ceiling_step >= self.stabilize_steps:
            self.phase, self.pruned_step = "pruned", step
            self._zero_groups()
            self._mask_pruned()

    def _mask_pruned(self) -> None:
        """From the pruning on, every reader sees the picked channels as 0: the rest of the run
        fine-tunes the network finalize() gives (zeroed parameters alone would not be that where
        a channel has a parameter-free source, e.g. an option-A shortcut's identity)."""
        if not self._gates:
            self.attach_gates({g: FixedGate((~self.picked[g]).float()) for g in self.groups})

    def state_dict(self) -> dict:
        """The schedule's state, for checkpoints (the weights are in the model's state_dict):
        lambda per channel, the groups picked, the phase and the steps it changed at."""
        return {"lambdas": {p: lam.detach().cpu().clone() for p, lam in self.lambdas.items()},
                "picked": None if self.picked is None else {p: t.cpu().clone() for p, t in self.picked.items()},
                "phase": self.phase, "ceiling_step": self.ceiling_step, "pruned_step": self.pruned_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned, so a resumed run continues the schedule
        (without it lambda would start again from 0 and pruned groups would train again)."""
        missing = {"lambdas", "picked", "phase", "ceiling_step", "pruned_step"} - set(state)
        if missing:
            raise ValueError(f"GReg state lacks {sorted(missing)}; expected the dict GReg.state_dict() returns")
        if set(state["lambdas"]) != set(self.groups):
            raise ValueError(f"GReg state is for channel groups {sorted(state['lambdas'])}, this model prunes "
                             f"{sorted(self.groups)}")
        if state["phase"] not in ("pick", "grow", "stabilize", "pruned"):
            raise ValueError(f"GReg state has an unknown phase {state['phase']!r}")
        for p, lam in state["lambdas"].items():
            if lam.shape != self.lambdas[p].shape:
                raise ValueError(f"GReg state: group {p!r} has {lam.numel()} channels there, "
                                 f"{self.lambdas[p].numel()} here")
            self.lambdas[p].copy_(lam)
        device = self.lambdas[next(iter(self.lambdas))].device if self.lambdas else None
        self.picked = None if state["picked"] is None else {
            p: t.to(device=device, dtype=torch.bool) for p, t in state["picked"].items()}
        self.phase, self.ceiling_step, self.pruned_step = state["phase"], state["ceiling_step"], state["pruned_step"]
        if self.phase == "pruned":
            self._mask_pruned()

    def _zero_groups(self) -> None:
        """Zero every parameter of the picked channels (with BN gamma and beta: the channel outputs 0)."""
        for g, grp in self.groups.items():
            chosen = self.picked[g]
            for t, pos, roots in self.channel_params(grp, norms=True):
                hit = chosen.to(roots.device)[roots]
                t[pos[hit]] = 0

    def param_groups(self, weight_decay: float = 0.0, **options) -> list[dict]:
        """One group with every parameter (the penalty is a loss term, not weight decay)."""
        return super().param_groups(weight_decay, **options)
