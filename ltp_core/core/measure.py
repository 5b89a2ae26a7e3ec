"""One measurement of a pruned model: sparsity, soft and hard accuracy, effective FLOPs.

The trail, the training engine and the notebooks all measure through `measure`, so a record
has the same fields, under the same names, whoever made it:

    sparsity, layer_sparsity    fraction of the pruned layers' weights that is zero when deployed
    soft_<metric>, hard_<metric> each metric of `evaluate()`, of the network as trained and as
                                deployed (inside `method.hard_masks()`); `evaluate` returning a
                                number gives soft_accuracy / hard_accuracy
    flops                       effective FLOPs of one forward of `example_input` (deployed)
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .flops import count_flops
from .layers import prunable_layers, zero_fractions

__all__ = ["measure"]

Metrics = float | dict[str, float]


def measure(model: nn.Module, method: Any | None, evaluate: Callable[[], Metrics],
            example_input: Tensor | None = None) -> dict[str, Any]:
    """Measure `model` with its pruning `method` attached (None: a plain network, whose exact
    zeros are counted). `evaluate()` returns an accuracy, or a dict of metrics (e.g. {"accuracy",
    "top5", "loss"}); it is called once as is and once inside `method.hard_masks()` (once in all
    for a plain network or a method whose trained network is the deployed one)."""
    if method is None:
        layer_sparsity = zero_fractions(dict(prunable_layers(model)))
        hard_masks = contextlib.nullcontext
    else:
        layer_sparsity = dict(method.sparsity())
        hard_masks = method.hard_masks
    total = float(layer_sparsity.pop("total"))
    soft = _named(evaluate())
    with hard_masks():
        hard = _named(evaluate()) if method is not None else soft
        flops = None
        if example_input is not None and hasattr(method, "predicted_flops"):
            # channel-removing methods know their deployed network exactly (some, like L1-filter,
            # shrink the model at construction, so scaling its layers by density would count twice)
            with contextlib.suppress(ValueError):  # built without an example input: count below
                flops = int(method.flops())
        if example_input is not None and flops is None:
            with contextlib.suppress(Exception):  # informative: a model the counter cannot trace has none
                flops = count_flops(model, example_input, {n: 1.0 - s for n, s in layer_sparsity.items()})
    return {"sparsity": min(1.0, max(0.0, total)), "layer_sparsity": layer_sparsity,
            **{f"soft_{k}": v for k, v in soft.items()}, **{f"hard_{k}": v for k, v in hard.items()},
            "flops": flops}


def _named(metrics: Metrics) -> dict[str, float]:
    return {"accuracy": float(metrics)} if isinstance(metrics, (int, float)) else dict(metrics)
