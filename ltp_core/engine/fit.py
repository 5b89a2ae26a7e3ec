"""fit / evaluate for small in-memory datasets: the loop the teaching notebooks use.

One readable loop (nanoGPT-style): minibatches, task loss plus whatever the pruning method
adds, backward, optimizer step, the method's per-step hook, and an evaluation every
`eval_every` epochs that can feed a `Trail`. The DataLoader/DDP engine for CIFAR and
ImageNet is `ltp_core.engine.train`; this one keeps the notebooks short.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.method import PruningMethod
from ..data import TensorSplit, loader
from ..kernels.denormals import flush_denormals

__all__ = ["accuracy", "fit"]


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
