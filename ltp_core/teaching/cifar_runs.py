"""The CIFAR ResNet runs of notebook 05: a validation folder, an in-process `ltp-train` run, stage sparsity.

    from ltp_core.teaching.cifar_runs import holdout_cifar10, run_logged, stage_sparsity, dataset_top1

- `holdout_cifar10(src, dst, fraction, seed)`: a copy of a CIFAR-10 folder whose `test_batch`
  is a stratified share of the *training* batches and whose training batches are the rest. The
  engine scores its trail on `test_batch`, so a run on this copy is scored on a validation
  split: the place to choose settings or a trail record without looking at the test split.
- `run_logged(folder, settings)`: one `ltp-train` run in this process, with the equivalent
  command line printed (and checked to parse back to the same settings).
- `resnet_stage(layer)`, `stage_sparsity(...)`: where in a CIFAR ResNet the sparsity went.
- `dataset_top1(model, dataset, batch_size)`: top-1 over a dataset in the engine's batches.
"""
from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.trail import Trail
from ..engine.config import make_config
from ..engine.train import run
from ..io import atomic_write_bytes
from .runs import command_config, display_path, format_command, prepare_run_dir, train_command

__all__ = ["holdout_cifar10", "run_logged", "resnet_stage", "stage_sparsity", "dataset_top1"]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def holdout_cifar10(source: str | os.PathLike, dest: str | os.PathLike, fraction: float = 0.2,
                    seed: int = 0) -> Path:
    """Write `<dest>/cifar-10-batches-py/` from `<source>/cifar-10-batches-py/`: a stratified
    `fraction` of the training images becomes `test_batch`, the rest the five `data_batch_*`
    files; the source's own `test_batch` is left out. Returns `dest`.

    Why: `ltp-train --dataset cifar10` evaluates on `test_batch`. Settings (a learning rate,
    lambda, a trail record) chosen on those numbers are chosen on the test split, and the
    test accuracy of the choice is then optimistic. Trained on this copy, the engine's
    evaluations are on held-out *training* images, so a choice made on them leaves the test
    split untouched; the chosen settings are then rerun on the full folder and reported on
    its test split once. On the digits of `write_digits_cifar10(src, seed=s)`, fraction 0.2 and
    seed s hold out the same 270 images as `load_digits(val_fraction=0.2, seed=s)`, in its order.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    src = Path(source).expanduser() / "cifar-10-batches-py"
    batches = [pickle.loads((src / name).read_bytes(), encoding="latin1") for name in TRAIN_BATCHES]
    data = np.concatenate([b["data"] for b in batches])
    labels = np.concatenate([np.asarray(b["labels"]) for b in batches])
    files = [f for b in batches for f in b.get("filenames", [f"image_{i}.png" for i in range(len(b["labels"]))])]
    # Split order kept: on write_digits_cifar10(seed) this holds out exactly load_digits(val_fraction, seed)'s images.
    keep, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels)
    out = Path(dest).expanduser() / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, label: str, rows: np.ndarray) -> None:
        batch = {"batch_label": label, "labels": [int(v) for v in labels[rows]], "data": data[rows],
                 "filenames": [files[i] for i in rows]}
        atomic_write_bytes(out / name, pickle.dumps(batch))

    for i, part in enumerate(np.array_split(keep, len(TRAIN_BATCHES)), start=1):
        write(f"data_batch_{i}", f"training batch {i} of 5", part)
    write("test_batch", "validation batch (held out from the training batches)", held)
    atomic_write_bytes(out / "batches.meta", (src / "batches.meta").read_bytes())
    return Path(dest).expanduser()


def run_logged(folder: str | os.PathLike, settings: Mapping[str, Any],
               existing_runs: str = "overwrite") -> tuple[Trail, bool, float]:
    """Run `ltp_core.engine.train` with `settings` (TrainConfig fields) in `folder`, in this
    process, after printing the equivalent `ltp-train` command (paths relative to the
    repository root, where it runs as printed).

    `existing_runs` ("overwrite" or "resume") says what to do with a run already in `folder`
    (`prepare_run_dir`): a finished identical run is reused, an unfinished one continued.
    Returns (the run's trail, whether the printed command parses back to the settings run,
    seconds taken).
    """
    folder = Path(folder)
    settings = {**settings, "output_dir": str(folder), "progress": False}
    state = prepare_run_dir(folder, make_config(**settings), existing_runs)
    settings["resume"] = "auto" if state == "resume" else None
    shown = {k: display_path(v) if k in ("data_path", "pretrained", "output_dir") and v else v
             for k, v in settings.items()}
    command = train_command(shown)
    print(format_command(command))
    same = command_config(command) == make_config(**shown)
    start = time.perf_counter()
    if state == "done":
        print(f"(reusing the finished run in {display_path(folder)})")
    else:
        run(make_config(**settings))
    return Trail.load(folder), same, time.perf_counter() - start


def resnet_stage(layer: str) -> str:
    """The part of a CIFAR ResNet (He et al. 2016) a prunable layer belongs to: "stem" (the
    first conv), "stage 1".."stage 3" (16, 32, 64 channels: `layerK.*`), "head" (the linear `fc`)."""
    if layer in ("conv1", "fc"):
        return {"conv1": "stem", "fc": "head"}[layer]
    if layer.startswith("layer"):
        return "stage " + layer[len("layer"):].split(".")[0]
    raise ValueError(f"{layer!r} is not a layer of a CIFAR ResNet (conv1, layerK.*, fc)")


def stage_sparsity(layer_sparsity: Mapping[str, float], sizes: Mapping[str, int],
                   stage_of: Callable[[str], str] = resnet_stage) -> dict[str, float]:
    """The sparsity of each group of layers, {group: pruned weights / weights}, in order of
    first appearance: each layer's sparsity weighted by its weight count, so a stage's number
    is the fraction of *its* weights that are zero (not the mean of its layers' fractions)."""
    pruned: dict[str, float] = {}
    total: dict[str, int] = {}
    for name, sparsity in layer_sparsity.items():
        group = stage_of(name)
        pruned[group] = pruned.get(group, 0.0) + sparsity * sizes[name]
        total[group] = total.get(group, 0) + sizes[name]
    return {group: pruned[group] / total[group] for group in total}


@torch.no_grad()
def dataset_top1(model: nn.Module, dataset: Any, batch_size: int, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of `model` (put in eval mode) over `dataset` ((image, label) pairs), in
    batches of `batch_size` in the dataset's order, as the engine evaluates: with deterministic
    CPU kernels the same batches give bit-identical logits, hence exactly the engine's number."""
    model.eval().to(device)
    hits = total = 0
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        hits += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return hits / max(1, total)
