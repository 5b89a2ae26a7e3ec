"""The pieces of an `ltp-train` run, built from its TrainConfig: loaders, model, method, optimizer, schedule.

Each builder turns a bad setting into a one-line `UsageError` before anything is written
(`output_dir_problem` and `check_input_sizes` look before any data are read); the engine
(`ltp_core.engine.train`) puts the pieces together and runs them.
"""
from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from ..core.ltp import LTP
from ..data import DataError, ImageDatasets, build_datasets, carve_validation, image_sizes
from ..io import nearest_existing
from ..models import PROJECT_MODELS, check_input_size, get_model, min_input_size, model_options
from .config import TrainConfig, UsageError, method_options
from .distributed import Procs
from .weights import first_line, load_pretrained

__all__ = ["Loaders", "output_dir_problem", "check_input_sizes", "load_data", "build_model", "build_method",
           "build_optimizer", "build_scheduler", "run_learning_rates", "wrap_model"]


@dataclass
class Loaders:
    """The training loader (its sampler, reshuffled every epoch, and the generator that seeds its
    augmentation) and this process's shard of the validation set (and of the test set, with
    --val-fraction)."""
    train: DataLoader
    sampler: DistributedSampler
    rng: torch.Generator
    val: DataLoader
    test: DataLoader | None = None


def output_dir_problem(folder: Path) -> str | None:
    """Why the output folder `folder` cannot be used or created, found without creating it
    (a failed start leaves nothing behind): a file where it or a parent should be, or an
    unwritable parent. None when it looks fine."""
    parent = nearest_existing(folder)
    if parent is None:
        return None
    if parent == folder:
        return None if folder.is_dir() else f"--output-dir {folder} is a file, not a folder"
    if not parent.is_dir():
        return f"--output-dir {folder}: cannot create it, {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--output-dir {folder}: cannot create it, {parent} is not writable"
    return None


def check_input_sizes(cfg: TrainConfig) -> None:
    """A crop smaller than the model takes (Inception v3, AlexNet, VGG, ...) fails deep inside
    the first forward; say so (UsageError) before any data are read or files written."""
    model = cfg.model
    aux = cfg.model_opt.get("aux_logits", True)
    train_size, val_size = image_sizes(cfg.dataset, train_crop_size=cfg.train_crop_size,
                                       val_crop_size=cfg.val_crop_size)
    flags = {"imagenet": ("--train-crop-size", "--val-crop-size"),
             "synthetic": ("--train-crop-size", "--train-crop-size")}.get(cfg.dataset)
    checks = [(val_size, False, flags and flags[1])]
    if not cfg.test_only:  # --test-only runs the model in eval mode only
        checks.insert(0, (train_size, True, flags and flags[0]))
    for size, train, flag in checks:
        try:
            check_input_size(model, size, train=train, image_size=val_size, aux_logits=aux)
        except ValueError as e:
            given = f"{flag} {size}" if flag else f"--dataset {cfg.dataset} has {size}x{size} images"
            hint = ""
            if size < min_input_size(model, train=train, aux_logits=aux):
                hint = f"; raise {flag}" if flag else "; choose another --model"
                if train and size >= min_input_size(model):
                    hint += " or pass --model-opt aux_logits=false"
            raise UsageError(f"{given}: {e}{hint}") from None


def load_data(cfg: TrainConfig, procs: Procs) -> tuple[ImageDatasets, Loaders, list[str]]:
    """(the datasets, their loaders, notes for the user). The training set is split over the
    processes by a DistributedSampler; evaluation shards the validation set without padding
    (exact counts), rank r taking images r, r + world, ...: the counts are summed afterwards."""
    channels = 1 if cfg.model in PROJECT_MODELS else 3  # digits: grey for the project's models
    try:
        data = build_datasets(
            cfg.dataset, cfg.data_path, train_crop_size=cfg.train_crop_size, val_resize_size=cfg.val_resize_size,
            val_crop_size=cfg.val_crop_size, interpolation=cfg.interpolation, channels=channels,
            synthetic_size=cfg.synthetic_size, synthetic_classes=cfg.synthetic_classes, seed=cfg.seed)
    except DataError as e:
        raise UsageError(str(e)) from None
    notes = list(data.notes)
    if cfg.val_fraction > 0:
        try:
            data = carve_validation(data, cfg.val_fraction, cfg.seed)
        except ValueError as e:
            raise UsageError(f"--val-fraction: {e}") from None
        notes.append(f"--val-fraction {cfg.val_fraction:g}: {len(data.val)} training images held out for "
                     f"validation (the trail's accuracies); the dataset's {len(data.test)} held-out images are "
                     "the test split (soft_test_*, hard_test_*: reported, not for choosing)")
    per_process = math.ceil(len(data.train) / procs.world)
    if per_process < cfg.batch_size and not cfg.test_only:
        raise UsageError(f"-b/--batch-size {cfg.batch_size} is larger than the {per_process} training images "
                         f"each of the {procs.world} process(es) gets; lower it")
    pin = procs.device.type == "cuda"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cfg.workers, cpus)
    if workers < cfg.workers:
        notes.append(f"--workers {cfg.workers} lowered to {workers}, the CPUs this process may use")
    sampler = DistributedSampler(data.train, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=cfg.seed)
    rng = torch.Generator()
    train = DataLoader(data.train, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                       drop_last=True, generator=rng)

    def evaluation(dataset):
        shard = range(procs.rank, len(dataset), procs.world)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=shard, num_workers=workers, pin_memory=pin)

    test = None if data.test is None else evaluation(data.test)
    return data, Loaders(train, sampler, rng, evaluation(data.val), test), notes


def build_model(cfg: TrainConfig, data: ImageDatasets, procs: Procs, *,
                pretrained: bool = True) -> tuple[nn.Module, list[str]]:
    """(the model with a head of the dataset's class count, on this process's device; notes).
    `pretrained`: load `cfg.pretrained` (a resumed run takes its weights from the checkpoint)."""
    c, h, _ = data.sample_shape
    try:
        model = get_model(cfg.model, data.num_classes, in_channels=c, **{"image_size": h, **cfg.model_opt})
    except (ValueError, TypeError) as e:
        valid = model_options(cfg.model) if "unexpected keyword argument" in str(e) else None
        hint = f"; valid --model-opt names: {', '.join(valid) or '(none)'}" if valid is not None else ""
        raise UsageError(f"--model {cfg.model}: {first_line(e)}{hint}") from None
    notes = []
    if cfg.pretrained and pretrained:
        notes.append("pretrained: " + load_pretrained(model, cfg.pretrained, data.num_classes))
    if cfg.sync_bn and procs.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(procs.device), notes


def build_method(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, example: Tensor) -> Any:
    """The pruning method `cfg` names, attached to `model` (None for dense training). A method
    whose schedule needs the run's length gets `total_steps`, one that needs an example input
    `example_input`, one that follows the learning rate `lr_schedule` (`run_learning_rates`),
    when it names them."""
    if cfg.method == "none":
        return None
    from .. import methods

    options = method_options(cfg)
    try:
        params = inspect.signature(methods.METHODS[cfg.method]).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (("total_steps", cfg.epochs * steps_per_epoch), ("example_input", example)):
        if key in params and key not in options:
            options[key] = value
    if "lr_schedule" in params and "lr_schedule" not in options:
        options["lr_schedule"] = run_learning_rates(cfg, steps_per_epoch)
    try:
        return methods.build(cfg.method, model, **options)
    except (ValueError, TypeError) as e:
        hint = ""
        if "unexpected keyword argument" in str(e):
            # LTP's options pass through `methods`' wrapper as **options
            takes = inspect.signature(LTP if cfg.method == "ltp" else methods.METHODS[cfg.method]).parameters
            valid = [n for n, p in takes.items() if n not in ("model", "total_steps", "example_input")
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            hint = f"; valid --method-opt names: {', '.join(valid)}"
        raise UsageError(f"--method {cfg.method}: {first_line(e)}{hint}") from None


def run_learning_rates(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> the learning rate of the run's optimizer step `step` (counted from 0): the
    schedule `build_scheduler` makes (stepped once per epoch, warm-up included), replayed on a
    stand-in optimizer; a step past the run continues it. LATS takes it as its lr_schedule."""
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = build_scheduler(cfg, stand_in)
    per_epoch: list[float] = []

    def lr(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        while len(per_epoch) <= epoch:
            per_epoch.append(float(stand_in.param_groups[0]["lr"]))
            stand_in.step()  # no gradient: changes nothing; keeps the scheduler's order check quiet
            scheduler.step()
        return per_epoch[epoch]

    return lr


def build_optimizer(cfg: TrainConfig, model: nn.Module, method: Any) -> torch.optim.Optimizer:
    """The optimizer over the method's `param_groups` (its own parameters, e.g. LTP's
    thresholds, in a group without weight decay), or over the model's for dense training."""
    if method is not None:
        extra = {"threshold_lr": cfg.ltp_threshold_lr} if cfg.ltp_threshold_lr is not None else {}
        groups = method.param_groups(weight_decay=cfg.weight_decay, **extra)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    if cfg.opt in ("sgd", "sgd_nesterov"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.opt == "sgd_nesterov" and cfg.momentum > 0)
    if cfg.opt == "rmsprop":  # torchvision's reference settings
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=0.0316, alpha=0.9)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.opt]
    return cls(groups, lr=cfg.lr)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The learning-rate schedule, stepped once per epoch, after the warm-up if any."""
    S, warm = torch.optim.lr_scheduler, cfg.lr_warmup_epochs
    main = {
        "steplr": lambda: S.StepLR(optimizer, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma),
        "cosineannealinglr": lambda: S.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs - warm),
                                                         eta_min=cfg.lr_min),
        "exponentiallr": lambda: S.ExponentialLR(optimizer, gamma=cfg.lr_gamma),
        "constant": lambda: S.ConstantLR(optimizer, factor=1.0, total_iters=0),
    }[cfg.lr_scheduler]()
    if warm == 0:
        return main
    warmup = (S.LinearLR(optimizer, start_factor=cfg.lr_warmup_decay, total_iters=warm)
              if cfg.lr_warmup_method == "linear"
              else S.ConstantLR(optimizer, factor=cfg.lr_warmup_decay, total_iters=warm))
    return S.SequentialLR(optimizer, [warmup, main], milestones=[warm])


def wrap_model(model: nn.Module, procs: Procs) -> nn.Module:
    """DistributedDataParallel across the processes (it broadcasts rank 0's parameters, the
    thresholds included, and averages every gradient); the model itself on one process."""
    if not procs.distributed:
        return model
    ids = [procs.device] if procs.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
