"""The method comparison: every pruning method from one dense start, on one training budget.

    data = load_split("digits", seed=0, val_fraction=0.2)
    model = cifar_resnet(8, num_classes=10, in_channels=1)
    start, reference = train_dense(model, data, epochs=20, extra_epochs=20, lr=2e-3)
    setup = Budget(start, data, epochs=20, lr=1e-3, flops_model=FlopsModel(start, data.x_train[:1]))
    best, tried = run_method(setup, {"method": "gmp", "family": "unstructured",
                                     "options": {"sparsity": 0.9}}, target=0.9, tolerance=0.01)
    best, tried = run_method(setup, {"method": "wgates", "family": "structured",
                                     "options": {"budget": 0.5}}, target=0.5, tolerance=0.03)

Any network `ltp_core.methods` can prune works, residual ones included: the structured methods
find the channels a skip connection couples through the methods' channel plan
(`ltp_core.methods.surgery`).

The rules these functions keep (notebook 06 teaches them):

1. one dense start: every run prunes a deep copy of the same trained network;
2. one budget: every run trains `epochs` epochs after that start, with Adam at the same weight
   learning rate and the same minibatches; a method's own parameters (thresholds, gates) get a
   group of their own;
3. one target: every method is brought to the same sparsity (unstructured) or the same FLOPs
   (structured), within a stated tolerance; a method whose knob only influences the target is
   calibrated by full-length runs that read the sparsity, never an accuracy;
4. deployed networks are measured: accuracy, sparsity, FLOPs and parameters are those of the
   finalized network;
5. anything chosen by accuracy (the ranking) reads the validation split, carved from the training
   data; the test split is only reported.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.flops import count_flops, layer_flops
from ..core.layers import prunable_layers
from ..data import ImageDatasets, TensorSplit, cifar10_folder, load_digits
from ..engine.fit import accuracy, fit
from ..methods import METHODS
from ..methods.budget import FlopsModel

__all__ = ["SCALES", "Budget", "in_memory", "load_split", "train_dense", "finalized_sparsity",
           "prune_run", "calibrate", "run_method", "merge_settings", "rank"]

# Scales in which a calibrated knob's effect on the sparsity is roughly linear:
# name -> (knob -> u, u -> knob, first step in u).
SCALES: dict[str, tuple[Callable[[float], float], Callable[[float], float], float]] = {
    "log": (math.log, math.exp, 1.0),  # a strength (lambda, a weight decay): its order of magnitude
    "quantile": (lambda q: -math.log1p(-q), lambda u: min(0.9995, -math.expm1(-u)), 0.5),  # -log(1 - q)
}


def in_memory(datasets: ImageDatasets, val_fraction: float = 0.0, seed: int = 0) -> TensorSplit:
    """An `ImageDatasets` (train and held-out Datasets, e.g. CIFAR-10's) held in memory as a
    TensorSplit. The held-out split is the test split; with `val_fraction` > 0 a random share
    (seeded) of the training images becomes the validation split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def stack(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.as_tensor(ys)

    (x_tr, y_tr), (x_te, y_te) = stack(datasets.train), stack(datasets.val)
    n_val = round(val_fraction * len(x_tr))
    if n_val == 0:
        return TensorSplit(x_tr, y_tr, x_te, y_te, datasets.num_classes)
    order = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return TensorSplit(x_tr[train], y_tr[train], x_te, y_te, datasets.num_classes, x_tr[val], y_tr[val])


def load_split(dataset: str, *, seed: int = 0, val_fraction: float = 0.2, data_path: str | None = None) -> TensorSplit:
    """The comparison's data in memory, with a validation split carved from the training share:
    "digits" (scikit-learn's, 8x8 images, nothing to download) or "cifar10" (the folder
    `data_path` holding cifar-10-batches-py/, no augmentation)."""
    if dataset == "digits":
        return load_digits(seed=seed, images=True, val_fraction=val_fraction)
    if dataset == "cifar10":
        if not data_path:
            raise ValueError("dataset 'cifar10' needs data_path, the folder holding cifar-10-batches-py/")
        return in_memory(cifar10_folder(data_path, augment=False), val_fraction, seed)
    raise ValueError(f"unknown dataset {dataset!r}; valid: 'digits', 'cifar10'")


def train_dense(model: nn.Module, data: TensorSplit, *, epochs: int, extra_epochs: int, lr: float,
                batch_size: int = 64, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(start, reference). `model` is trained `epochs` epochs (Adam, `lr`): a deep copy of it is
    the start every method prunes. Training then goes on, same optimizer, for `extra_epochs`
    more, on the minibatches the pruning runs see (loader seed + 1): the reference, a dense
    network trained as many epochs in total as a pruned one. `model` itself becomes it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    fit(model, data, optimizer, epochs=epochs, batch_size=batch_size, seed=seed, progress=False, desc="dense")
    start = copy.deepcopy(model)
    fit(model, data, optimizer, epochs=extra_epochs, batch_size=batch_size, seed=seed + 1, progress=False,
        desc="dense reference")
    return start, model


def finalized_sparsity(model: nn.Module, dense_numel: int) -> float:
    """Fraction of the dense network's `dense_numel` prunable weights that are zero or gone in
    `model` (a finalized network: masked weights are exact zeros, removed channels are gone)."""
    left = sum(int((m.weight != 0).sum()) for _, m in prunable_layers(model))
    return 1.0 - left / dense_numel


@dataclass
class Budget:
    """What every run of a comparison shares: the dense start, the data, the training after it.
    `flops_model` (structured methods only) prices channel counts for their trajectories and
    names the channel groups whose kept fraction a structured run reports."""
    dense: nn.Module
    data: TensorSplit
    epochs: int
    lr: float
    batch_size: int = 64
    seed: int = 0
    eval_every: int = 1
    flops_model: FlopsModel | None = None
    example_input: torch.Tensor = field(init=False)  # one image: FLOPs are per image

    def __post_init__(self) -> None:
        self.example_input = self.data.x_train[:1]
        self.total_steps = self.epochs * math.ceil(len(self.data.x_train) / self.batch_size)
        self.dense_flops = layer_flops(self.dense, self.example_input)["total"]
        self.num_weights = sum(m.weight.numel() for _, m in prunable_layers(self.dense))
        self.num_parameters = sum(int((p != 0).sum()) for p in self.dense.parameters())


def _progress(pruner: Any, family: str, flops_model: FlopsModel | None) -> dict[str, float]:
    # one point of a trajectory: the sparsity, or the FLOPs fraction of the channels kept now
    if family == "unstructured":
        return {"sparsity": pruner.sparsity()["total"]}
    return {"flops": flops_model.fraction(pruner.kept_channels())} if flops_model is not None else {}


@torch.no_grad()
def _measure(setup: Budget, pruner: Any, family: str) -> dict[str, Any]:
    # finalize, and measure the deployed network against the hard-masked one it came from
    model, data = pruner.model, setup.data
    model.eval()
    with pruner.hard_masks():
        hard_logits = model(data.x_test)
    sparsity = pruner.sparsity()["total"]
    pruner.finalize()
    model.eval()
    logits = model(data.x_test)
    out = {"sparsity": sparsity, "finalized_sparsity": finalized_sparsity(model, setup.num_weights),
           "accuracy": accuracy(model, data.x_test, data.y_test),
           "val_accuracy": accuracy(model, data.x_val, data.y_val) if data.x_val is not None else None,
           "logit_gap": float((logits - hard_logits).abs().max() / hard_logits.abs().max().clamp_min(1e-12)),
           "parameters": sum(int((p != 0).sum()) for p in model.parameters())}
    out["parameters_kept"] = out["parameters"] / setup.num_parameters
    if family == "unstructured":
        densities = {n: float((m.weight != 0).float().mean()) for n, m in prunable_layers(model)}
        out["flops"] = count_flops(model, setup.example_input, densities) / setup.dense_flops
    else:
        out["flops"] = layer_flops(model, setup.example_input)["total"] / setup.dense_flops
        if setup.flops_model is not None:  # a group's kept channels: its root layer's output channels now
            channels = {g: model.get_submodule(g).weight.shape[0] for g in setup.flops_model.channels}
            out["model_flops"] = setup.flops_model.fraction(channels)
            out["channels_kept"] = {g: k / setup.flops_model.channels[g] for g, k in channels.items()}
    return out


def prune_run(setup: Budget, method: str, *, family: str, options: dict | None = None,
              groups: dict | None = None) -> dict[str, Any]:
    """One method on the budget: a deep copy of the dense start, `METHODS[method](model,
    **options)`, Adam(lr) over the method's `param_groups(**groups)`, `epochs` of
    `ltp_core.engine.fit.fit`, then `finalize()`. Returns the finalized network's measurements
    (test `accuracy`, `val_accuracy`, `sparsity` as the method reports it, `finalized_sparsity`
    counted on the deployed weights, `flops` as a fraction of dense (effective for unstructured,
    measured on the smaller layers for structured), `parameters` (nonzero, every parameter) and
    `parameters_kept` (a fraction of the dense start's), `logit_gap`: max |finalized - hard-masked
    logits| / max |logit|; for structured runs with a `flops_model`, `model_flops` (its price of
    the finalized channel counts) and `channels_kept` ({group: fraction of its channels kept})),
    the `trajectory` (sparsity or FLOPs, and test accuracy, every `eval_every` epochs) and the
    CPU seconds."""
    if family not in ("unstructured", "structured"):
        raise ValueError(f"family must be 'unstructured' or 'structured', got {family!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {sorted(METHODS)}")
    options, groups = dict(options or {}), dict(groups or {})
    torch.manual_seed(setup.seed)
    model = copy.deepcopy(setup.dense)
    cpu = time.process_time()
    pruner = METHODS[method](model, total_steps=setup.total_steps, example_input=setup.example_input, **options)
    optimizer = torch.optim.Adam(pruner.param_groups(**groups), lr=setup.lr)
    start = {"epoch": 0, "accuracy": accuracy(setup.dense, setup.data.x_test, setup.data.y_test),
             **_progress(pruner, family, setup.flops_model)}
    history = fit(model, setup.data, optimizer, epochs=setup.epochs, batch_size=setup.batch_size, method=pruner,
                  seed=setup.seed + 1, eval_every=setup.eval_every, progress=False, desc=method,
                  on_eval=lambda epoch, step: _progress(pruner, family, setup.flops_model))
    trajectory = [start] + [{k: v for k, v in h.items() if k not in ("step", "loss", "test_accuracy")}
                            | {"accuracy": h["test_accuracy"]} for h in history]
    return {"method": method, "family": family, "options": options, **_measure(setup, pruner, family),
            "trajectory": trajectory, "gates_at_cut": getattr(pruner, "gates_at_cut", None),
            "cpu_s": time.process_time() - cpu}


def calibrate(run: Callable[[float], dict], guess: float, scale: str, *, target: float, tolerance: float,
              max_runs: int = 8, measure: str = "sparsity") -> tuple[dict, list[dict]]:
    """Search a knob until a full run lands within `tolerance` of `target`: `run(value)` returns
    a result whose `measure` grows with the knob. The search steps in `SCALES[scale]` (where the
    response is roughly linear) from `guess`, a larger step each time, until the target is
    bracketed, then interpolates inside the bracket (never closer than 15% to its ends). It
    reads only `result[measure]`. Returns (the run closest to the target, every run), each with
    its `knob_value`."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid: {sorted(SCALES)}")
    if not (isinstance(max_runs, int) and max_runs >= 1):
        raise ValueError(f"max_runs must be an int >= 1, got {max_runs!r}")
    forward, backward, step = SCALES[scale]
    below = above = None  # (u, measured) on each side of the target
    u, tried = forward(guess), []
    for _ in range(max_runs):
        result = run(backward(u))
        result["knob_value"] = backward(u)
        tried.append(result)
        value = result[measure]
        if abs(value - target) <= tolerance:
            break
        if value < target:
            below = (u, value)
        else:
            above = (u, value)
        if below and above:
            t = (target - below[1]) / (above[1] - below[1])
            u = below[0] + min(0.85, max(0.15, t)) * (above[0] - below[0])
        else:
            u += step if above is None else -step
            step *= 1.5
    return min(tried, key=lambda r: abs(r[measure] - target)), tried


def run_method(setup: Budget, spec: dict, *, target: float, tolerance: float,
               max_runs: int = 8) -> tuple[dict, list[dict]]:
    """One row of a comparison. `spec`: {"method", "family", "options", "groups"} and, for a knob
    that only influences the target, "search": {"knob", "guess", "scale"}, calibrated to `target`
    (the sparsity for unstructured, the FLOPs fraction for structured methods). Returns (the
    reported run, every run it took)."""
    family = spec["family"]

    def run(value: float | None = None) -> dict:
        options = dict(spec.get("options", {}))
        if value is not None:
            options[spec["search"]["knob"]] = value
        return prune_run(setup, spec["method"], family=family, options=options, groups=spec.get("groups"))

    if "search" not in spec:
        result = run()
        return result, [result]
    s = spec["search"]
    best, tried = calibrate(run, s["guess"], s["scale"], target=target, tolerance=tolerance, max_runs=max_runs,
                            measure="sparsity" if family == "unstructured" else "flops")
    for r in tried:
        r["knob"] = s["knob"]
    return best, tried


def merge_settings(settings: dict[str, dict], overrides: dict[str, dict] | None) -> dict[str, dict]:
    """`settings` with `overrides` merged in, nested dicts key by key (e.g. {"str": {"groups":
    {"threshold_lr": 0.03}}} changes one value). Naming a row that does not exist is an error."""
    unknown = sorted(set(overrides or {}) - set(settings))
    if unknown:
        raise ValueError(f"settings overrides name {unknown}; valid rows: {sorted(settings)}")

    def merge(base: Any, new: Any) -> Any:
        if isinstance(base, dict) and isinstance(new, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in new.items()}}
        return new

    return {name: merge(spec, (overrides or {}).get(name, {})) for name, spec in settings.items()}


def rank(results: dict[str, dict], key: str = "val_accuracy") -> list[str]:
    """The result names by `key`, best first: by default the validation accuracy, since a
    ranking is a choice and the test split is only reported. Ties keep the given order."""
    return sorted(results, key=lambda name: -results[name][key])
