"""fit / evaluate for small in-memory datasets: the loop the teaching notebooks use.

One readable loop (nanoGPT-style): minibatches, task loss plus whatever the pruning method
adds, backward, optimizer step, the method's per-step hook, and an evaluation every
`eval_every` epochs that can feed a `Trail`. The DataLoader/DDP engine for CIFAR and
ImageNet is `ltp_core.engine.train`; this one keeps the notebooks short.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..core.layers import own_class, select_layers
from ..core.method import PruningMethod
from ..core.trail import Trail
from ..data import TensorSplit, loader
from ..kernels.denormals import flush_denormals
from ..methods.magnitude import KeepMask

__all__ = ["accuracy", "fit", "fit_with_trail", "fit_fixed_mask"]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of `model` on (x, y) in eval mode, a fraction in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(x))


def fit(model: nn.Module, data: TensorSplit, optimizer: torch.optim.Optimizer, *, epochs: int,
        batch_size: int = 64, method: PruningMethod | None = None, seed: int = 0, eval_every: int = 1,
        on_eval: Callable[[int, int], dict[str, Any] | None] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy, progress: bool = True,
        desc: str = "train") -> list[dict[str, Any]]:
    """Train `model` on `data.x_train` for `epochs` epochs; returns the evaluation history.

    Every `eval_every` epochs (and after the last) it records {"epoch", "step", "loss",
    "test_accuracy"} plus whatever `on_eval(epoch, step)` returns (e.g. sparsity, or a
    `Trail.record`). `method` (LTP or a baseline) contributes `regularizer()` to the loss and
    `after_step(step)` after each optimizer step. A NaN/inf loss raises FloatingPointError.
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not (isinstance(eval_every, int) and eval_every > 0):
        raise ValueError(f"eval_every must be an int > 0, got {eval_every!r}")
    # Soft-pruned weights w * sigmoid(very negative) are often denormal floats, which make
    # CPU arithmetic several times slower (4x measured on digits); flush them to zero, in
    # torch's worker threads too.
    flush_denormals()
    batches = loader(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed)
    history: list[dict[str, Any]] = []
    step = 0
    model.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        total = 0.0
        for x, y in batches:
            loss = loss_fn(model(x), y)
            if method is not None:
                loss = loss + method.regularizer()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if method is not None:
                method.after_step(step)
            total += loss.item()
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            entry = {"epoch": epoch + 1, "step": step, "loss": total / max(1, len(batches)),
                     "test_accuracy": accuracy(model, data.x_test, data.y_test)}
            if on_eval is not None:
                entry.update(on_eval(epoch + 1, step) or {})
            history.append(entry)
            bar.set_postfix(acc=f"{entry['test_accuracy']:.3f}")
    return history


def fit_with_trail(model: nn.Module, data: TensorSplit, optimizer: torch.optim.Optimizer, trail: Trail, *,
                   method: PruningMethod, epochs: int, splits: Sequence[str] = ("val",), eval_every: int = 1,
                   example_input: Tensor | None = None, extra: Callable[[], dict[str, Any]] | None = None,
                   **options: Any) -> list[dict[str, Any]]:
    """`fit` with a pruning `method`, recording the run in `trail`: once before the first step
    (the network the run starts from, epoch 0) and every `eval_every` epochs (and after the last).

    Each record is `Trail.record_pruner`'s: sparsity, FLOPs of `example_input` and, for every
    split s of `splits` ("train", "val", "test"), the top-1 accuracy with the soft masks and
    with the hard ones, as `soft_<s>_accuracy` and `hard_<s>_accuracy`, plus whatever `extra()`
    returns (e.g. LTP's thresholds). Record on the validation split what a network will be
    chosen by (`Trail.pick(accuracy_key="hard_val_accuracy")`); the test split only reports.
    A trail with a directory also keeps each record's hard-pruned checkpoint. `options` go to
    `fit`; returns its history.
    """
    for split in splits:
        data.split(split)  # an unknown split, or "val" without one: ValueError before any training

    def evaluate() -> dict[str, float]:
        return {f"{s}_accuracy": accuracy(model, *data.split(s)) for s in splits}

    def on_eval(epoch: int, step: int) -> dict[str, Any]:
        entry = trail.record_pruner(method, evaluate, step=step, epoch=epoch, example_input=example_input,
                                    **(extra() if extra is not None else {}))
        return {k: v for k, v in entry.items() if k == "sparsity" or k.endswith("_accuracy")}

    on_eval(0, 0)
    return fit(model, data, optimizer, epochs=epochs, method=method, eval_every=eval_every, on_eval=on_eval,
               **options)


def fit_fixed_mask(model: nn.Module, data: TensorSplit, optimizer: torch.optim.Optimizer, *, epochs: int,
                   **options: Any) -> list[dict[str, Any]]:
    """Fine-tune a pruned plain `model` with its mask fixed: `fit`, with every Conv/Linear
    weight that is exactly 0 now held at 0. Returns `fit`'s history (`options` go to `fit`).

    Each layer's weight w is trained through w * m, m = (w != 0) taken at the call (a
    `KeepMask` parametrization): a pruned weight is 0 in every forward and gets no gradient,
    whatever the optimizer does with it. Afterwards the masks are baked in (w * m) and
    removed, so the model is plain again, with the same zeros. The parameters stay the same
    objects, so `optimizer` may be built before the call. A model that still carries a
    pruning method's parametrization (finalize it first) is refused with a ValueError.
    """
    layers = [module for _, module in select_layers(model)]
    for module in layers:
        parametrize.register_parametrization(module, "weight", KeepMask(module.weight != 0))
    try:
        return fit(model, data, optimizer, epochs=epochs, **options)
    finally:
        for module in layers:
            own_class(module)  # deep copies of the model keep working
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
