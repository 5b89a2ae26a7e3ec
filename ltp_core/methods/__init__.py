"""The pruning methods, picked by name: LTP and the methods it is compared with.

    method = build("gmp", model, sparsity=0.9, total_steps=1000)

    unstructured (masks / reparametrizations via torch.nn.utils.parametrize):
      ltp         Learned Threshold Pruning (Azarian et al. 2020)            ltp_core.core.ltp
      magnitude   one-shot magnitude pruning (Han et al. 2015)               magnitude.py
      gmp         gradual magnitude pruning, cubic schedule (Zhu & Gupta)    magnitude.py
      str         soft threshold reparameterization (Kusupati et al. 2020)   str_reparam.py
      lats        scheduled soft thresholding: LATS, S-LATS, PGH, constant   lats.py
    structured (channel groups removed for real, any torchvision-style CNN: surgery.py):
      greg        growing regularization, GReg-1 / GReg-2 (Wang et al.)      greg.py
      gdp         GDP-style: clipped, polarized gates shared across skip
                  connections, cut to a FLOPs budget (after Guo et al.)      gdp.py
      l1_filter   L1-norm filter pruning (Li et al. 2017)                    l1_filter.py
      dsa         DSA-style (projection): keep ratios projected onto a
                  FLOPs budget, not DSA's ADMM (after Ning et al.)           dsa.py
      wgates      weight-dependent binary gates under a FLOPs budget
                  (after Li et al. 2020)                                     wgates.py

Every method has one shape, `ltp_core.core.method.PruningMethod`. Every entry accepts
`total_steps=` (the run's optimizer steps; schedules need it) and `example_input=` (a batch,
e.g. one sample, for FLOPs; DSA needs it), ignoring them when unused, so an engine can always
pass both. Build the method before the optimizer (from `param_groups`) and before wrapping the
model (DDP, torch.compile): the structured methods trace the plain model's channel groups and
L1-filter changes it at construction.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..core.ltp import LTP
from ..core.method import PruningMethod, ReparamMethod
from .channels import Link, channel_links, remove_channels
from .dsa import DSA
from .gdp import GDP
from .greg import GReg
from .l1_filter import L1Filter
from .lats import LATS, lats_schedule
from .magnitude import GMP, KeepMask, Magnitude, gmp_sparsity, magnitude_masks
from .str_reparam import STR
from .structured import StructuredMethod
from .surgery import SUPPORTED, ChannelGroup, channel_plan, load_pruned, load_pruned_state_dict, save_pruned
from .wgates import WGates

__all__ = ["METHODS", "build", "method_names", "PruningMethod", "ReparamMethod", "StructuredMethod", "SUPPORTED",
           "Link", "channel_links", "remove_channels", "magnitude_masks", "gmp_sparsity", "lats_schedule", "KeepMask",
           "LTP", "Magnitude", "GMP", "STR", "LATS", "GReg", "GDP", "L1Filter", "DSA", "ChannelGroup", "channel_plan",
           "save_pruned", "load_pruned", "load_pruned_state_dict"]


def _ltp(model: nn.Module, *, total_steps: int | None = None, example_input: Tensor | None = None,
         **options: Any) -> LTP:
    """LTP(model, **options); total_steps / example_input are accepted and unused."""
    return LTP(model, **options)


METHODS: dict[str, Callable[..., Any]] = {
    "ltp": _ltp,
    "magnitude": Magnitude,
    "gmp": GMP,
    "str": STR,
    "lats": LATS,
    "greg": GReg,
    "gdp": GDP,
    "l1_filter": L1Filter,
    "dsa": DSA,
    "wgates": WGates,
}


def method_names() -> list[str]:
    return sorted(METHODS)


def build(name: str, model: nn.Module, **options: Any) -> Any:
    """Attach the method `name` to `model` with `options`; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid methods: {method_names()}")
    return METHODS[name](model, **options)
