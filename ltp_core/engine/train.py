"""The training engine: train (and prune) an image classifier on one process or many.

    python -m ltp_core.engine.train --dataset cifar10 --data-path data/cifar10 --model resnet20 --epochs 30
    torchrun --nproc_per_node 8 -m ltp_core.engine.train --dataset imagenet --data-path /data/imagenet \\
        --model resnet50 --pretrained resnet50.pth --lr 0.01 --ltp-lambda 1 --ltp-t0 0.01

The settings are `ltp_core.cli.TrainConfig` (flags, `--config FILE.yaml`, or `make_config` in
Python). One run:

1. processes: under `torchrun` (WORLD_SIZE > 1) a process group (gloo on CPU, nccl on GPU),
   one process per device, the model wrapped in DistributedDataParallel, so the learned
   thresholds (ordinary parameters) are broadcast at the start and their gradients averaged
   like every other; only rank 0 writes files or prints.
2. data (`ltp_core.data.build_datasets`), the model (`ltp_core.models.get_model`) with a head
   of the dataset's class count, `--pretrained` weights (the head replaced when the class
   count differs), the pruning method (`ltp_core.methods.build`), the optimizer from the
   method's `param_groups` (thresholds: own group, no weight decay) and the schedule.
3. epochs of: task loss (+ the method's `regularizer()`), backward, step, `after_step`; a NaN
   or inf loss (on any process) stops the run and keeps the last good checkpoint.
4. every evaluation (at the start, then every `--eval-every` epochs) measures top-1/top-5 of
   the network as trained (soft) and deployed (inside `method.hard_masks()`), per-layer and
   total sparsity, compression and effective FLOPs, and appends them to the trail
   (`trail.json`, plus a hard-pruned checkpoint `trail/step_*.pt`).
5. after every epoch `checkpoint.pth` (model, optimizer, scheduler, scaler, epoch, step, args,
   every process's RNG state, the trail) is written to a temporary file and renamed; `--resume`
   restores all of it, so the continued run is the run that was interrupted: the settings not
   given take the checkpoint's values (`ltp_core.cli.parse_args`), and a given one that changes
   what those states carry (optimizer, learning rate and schedule, method options, seed;
   `--epochs` too where a schedule is built for the run's length), which the checkpoint would
   otherwise override without a word, is refused, as is writing into a folder holding another
   run. Resumed into another folder, the trail's records keep naming the old run's hard-pruned
   checkpoints (by absolute path). Another
   --batch-size or number of processes (so another number of steps per epoch) is allowed: the
   learning rate steps per epoch and the methods' schedules continue at the epoch reached
   (`_Run.schedule_step`), unless a method option counts optimizer steps (then it is refused).

Exit status: 0 done, 1 the loss diverged or a process failed, 2 a usage error (one line on
stderr; LTP_TRACEBACK=1 shows the traceback), 130 interrupted.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .resume import (CHECKPOINT, CHECKPOINT_KEYS, check_settings, checkpoint_path, inherited_records,
                         read_checkpoint, step_scale_note)
from .config import PROG, TrainConfig, UsageError, config_to_dict, method_options, output_folder, parse_args
from ..data import DataError, ImageDatasets, build_datasets, image_sizes
from ..kernels.denormals import flush_denormals
from ..core.flops import count_flops
from ..models import PROJECT_MODELS, check_input_size, get_model, min_input_size, model_options
from .weights import first_line, load_pretrained
from .distributed import PeerFailed, Procs, agree, all_reduce, init_processes, rng_state, seed_all, set_rng_state
from ..core.ltp import LTP, prunable_layers
from ..core.trail import Trail, format_compression
from ..io import atomic_save, atomic_write_bytes, nearest_existing

__all__ = ["main", "run", "RunResult", "TrainingDiverged", "load_pretrained", "CHECKPOINT_KEYS"]

AUX_LOSS_WEIGHT = 0.4  # GoogLeNet / Inception v3 auxiliary heads, as in their papers


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message says where and which checkpoint is kept."""


@dataclass
class RunResult:
    """What `run` returns: the trained model (the bare module, not the DDP wrapper, with the
    method still attached), the method (None for dense), the trail, the last evaluation."""
    model: nn.Module
    method: Any
    trail: Trail
    config: TrainConfig
    output_dir: Path | None
    last: dict[str, Any] = field(default_factory=dict)


def _logits(out: Any) -> tuple[Tensor, list[Tensor]]:
    """(main logits, auxiliary logits) of a model's output: GoogLeNet and Inception v3 return
    named tuples with auxiliary heads in training mode."""
    if isinstance(out, (tuple, list)):
        return out[0], [o for o in out[1:] if o is not None]
    return out, []


def _output_dir_problem(folder: Path) -> str | None:
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


# -- the run -------------------------------------------------------------------------------

class _Run:
    """One training run; `run()` drives it. Attributes are the run's state."""

    def __init__(self, cfg: TrainConfig, procs: Procs) -> None:
        self.cfg, self.procs, self.device = cfg, procs, procs.device
        self.out: Path | None = None
        self.epoch, self.step = 0, 0
        self.checkpoint_epoch: int | None = None
        self.notes: list[str] = []

    def say(self, text: str) -> None:
        if self.procs.main:
            tqdm.write(text, file=sys.stdout)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, procs = self.cfg, self.procs
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
            if cfg.amp and cfg.amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
                raise UsageError("--amp-dtype bf16: this GPU does not support bfloat16; use --amp-dtype fp16")
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
        self.out = output_folder(cfg.output_dir, cfg.dataset, cfg.model, cfg.method)
        problem = _output_dir_problem(self.out)
        if problem:
            raise UsageError(problem)
        if cfg.sync_bn and procs.distributed and self.device.type != "cuda":
            raise UsageError(f"--sync-bn needs CUDA (SyncBatchNorm runs on GPUs only); this run's device is "
                             f"{self.device.type}: drop --sync-bn")
        resume_path = self._resume_path()
        held = [f for f in (CHECKPOINT, "trail.json") if (self.out / f).exists()]
        own = self.out / CHECKPOINT
        if not cfg.test_only and held and (resume_path is None or resume_path.resolve() != own.resolve()):
            if resume_path is not None:
                raise UsageError(f"{self.out} already holds a run ({held[0]}); resuming {resume_path} there "
                                 "would overwrite it: choose another --output-dir")
            if not own.exists():
                raise UsageError(f"{self.out} holds a run that stopped before its first checkpoint (trail.json, "
                                 "no checkpoint.pth): nothing there to resume; delete the folder or choose "
                                 "another --output-dir")
            raise UsageError(f"{self.out} already holds a run ({held[0]}); pass --resume to continue it or "
                             "choose another --output-dir")
        self._check_input_sizes()
        seed_all(cfg.seed)

        # data
        channels = 1 if cfg.model in PROJECT_MODELS else 3  # digits: grey for the project's models
        try:
            self.data: ImageDatasets = build_datasets(
                cfg.dataset, cfg.data_path, train_crop_size=cfg.train_crop_size, val_resize_size=cfg.val_resize_size,
                val_crop_size=cfg.val_crop_size, interpolation=cfg.interpolation,
                channels=channels, synthetic_size=cfg.synthetic_size,
                synthetic_classes=cfg.synthetic_classes, seed=cfg.seed)
        except DataError as e:
            raise UsageError(str(e)) from None
        self.notes += self.data.notes
        per_process = math.ceil(len(self.data.train) / procs.world)
        if per_process < cfg.batch_size and not cfg.test_only:
            raise UsageError(f"-b/--batch-size {cfg.batch_size} is larger than the {per_process} training images "
                             f"each of the {procs.world} process(es) gets; lower it")
        self._loaders()

        # model, pretrained weights, method, optimizer
        c, h, _ = self.data.sample_shape
        try:
            model = get_model(cfg.model, self.data.num_classes, in_channels=c, **{"image_size": h, **cfg.model_opt})
        except (ValueError, TypeError) as e:
            valid = model_options(cfg.model) if "unexpected keyword argument" in str(e) else None
            hint = f"; valid --model-opt names: {', '.join(valid) or '(none)'}" if valid is not None else ""
            raise UsageError(f"--model {cfg.model}: {first_line(e)}{hint}") from None
        if cfg.pretrained and resume_path is None:  # resumed: the checkpoint holds the weights
            self.notes.append("pretrained: " + load_pretrained(model, cfg.pretrained, self.data.num_classes))
        if cfg.sync_bn and procs.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        self.example = torch.zeros(1, *self.data.sample_shape, device=self.device)
        self.steps_per_epoch = len(self.train_loader)
        self.method = self._build_method(model)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp and self.amp_dtype == torch.float16)
        # records=[]: a resumed run's trail is the checkpoint's (trail.json may hold later records)
        self.trail = Trail(self.out if procs.main and not cfg.test_only else None, records=[])
        if resume_path is not None:
            self._load_checkpoint(resume_path)
        else:  # every process its own stream for augmentation and dropout (the init above was shared)
            seed_all(cfg.seed * 100_003 + procs.rank)
        if procs.main and not cfg.test_only:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # what _output_dir_problem cannot foresee (/proc, a full or read-only disk)
                raise UsageError(f"--output-dir {self.out}: cannot create it ({e.strerror or first_line(e)})") from None
            if resume_path is not None:
                self.trail.save()  # drop records written after the checkpoint (a crash in between)
            import yaml

            # The settings that made this run: `--config args.yaml` runs it again (a resumed run's
            # --resume is not kept: it would point a rerun elsewhere at this run's checkpoint).
            settings = {**config_to_dict(cfg), "output_dir": str(self.out), "resume": None}
            atomic_write_bytes(self.out / "args.yaml", yaml.safe_dump(settings, sort_keys=False).encode())

    def _check_input_sizes(self) -> None:
        """A crop smaller than the model takes (Inception v3, AlexNet, VGG, ...) fails deep
        inside the first forward; say so before any data are read or files written."""
        cfg, model = self.cfg, self.cfg.model
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

    def _loaders(self) -> None:
        cfg, procs = self.cfg, self.procs
        pin = self.device.type == "cuda"
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(cfg.workers, cpus)
        if workers < cfg.workers:
            self.notes.append(f"--workers {cfg.workers} lowered to {workers}, the CPUs this process may use")
        self.train_sampler = DistributedSampler(self.data.train, num_replicas=procs.world, rank=procs.rank,
                                                shuffle=True, seed=cfg.seed)
        self.loader_rng = torch.Generator()
        self.train_loader = DataLoader(self.data.train, batch_size=cfg.batch_size, sampler=self.train_sampler,
                                       num_workers=workers, pin_memory=pin, drop_last=True,
                                       generator=self.loader_rng)
        # Evaluation shards the validation set without padding (exact counts), rank r taking
        # images r, r + world, ...; the counts are summed across processes afterwards.
        shard = range(procs.rank, len(self.data.val), procs.world)
        self.val_loader = DataLoader(self.data.val, batch_size=cfg.batch_size, sampler=shard,
                                     num_workers=workers, pin_memory=pin)

    def _build_method(self, model: nn.Module) -> Any:
        cfg = self.cfg
        if cfg.method == "none":
            return None
        from .. import methods

        options = method_options(cfg)
        try:
            params = inspect.signature(methods.METHODS[cfg.method]).parameters
        except (TypeError, ValueError):
            params = {}
        # Schedules need the run's length, some methods an example input; pass them to the
        # methods that name them.
        for key, value in (("total_steps", cfg.epochs * self.steps_per_epoch), ("example_input", self.example)):
            if key in params and key not in options:
                options[key] = value
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

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if self.method is not None and hasattr(self.method, "param_groups"):
            extra = {"threshold_lr": cfg.ltp_threshold_lr} if cfg.ltp_threshold_lr is not None else {}
            groups = self.method.param_groups(weight_decay=cfg.weight_decay, **extra)
        else:
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                       "weight_decay": cfg.weight_decay}]
        if cfg.opt in ("sgd", "sgd_nesterov"):
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.opt == "sgd_nesterov"
                                   and cfg.momentum > 0)
        if cfg.opt == "rmsprop":  # torchvision's reference settings
            return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=0.0316, alpha=0.9)
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.opt]
        return cls(groups, lr=cfg.lr)

    def _scheduler(self):
        cfg, S = self.cfg, torch.optim.lr_scheduler
        opt, warm = self.optimizer, cfg.lr_warmup_epochs
        main = {
            "steplr": lambda: S.StepLR(opt, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma),
            "cosineannealinglr": lambda: S.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs - warm), eta_min=cfg.lr_min),
            "exponentiallr": lambda: S.ExponentialLR(opt, gamma=cfg.lr_gamma),
            "constant": lambda: S.ConstantLR(opt, factor=1.0, total_iters=0),
        }[cfg.lr_scheduler]()
        if warm == 0:
            return main
        warmup = (S.LinearLR(opt, start_factor=cfg.lr_warmup_decay, total_iters=warm)
                  if cfg.lr_warmup_method == "linear"
                  else S.ConstantLR(opt, factor=cfg.lr_warmup_decay, total_iters=warm))
        return S.SequentialLR(opt, [warmup, main], milestones=[warm])

    def wrap(self) -> None:
        """DistributedDataParallel across the processes (it broadcasts rank 0's parameters,
        the thresholds included, and averages every gradient)."""
        if self.procs.distributed:
            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp: nn.Module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model

    # -- checkpoints -----------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        return None if self.cfg.resume is None else checkpoint_path(self.cfg.resume, self.out)

    def _load_checkpoint(self, path: Path) -> None:
        cfg = self.cfg
        ckpt = read_checkpoint(path)
        check_settings(ckpt["args"], cfg, path)
        note = step_scale_note(ckpt, cfg, self.steps_per_epoch, self.procs.world, path)
        if note:
            self.notes.append(note)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["lr_scheduler"])
            if ckpt["scaler"]:
                self.scaler.load_state_dict(ckpt["scaler"])
            if "method" in ckpt and hasattr(self.method, "load_state_dict"):
                self.method.load_state_dict(ckpt["method"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"--resume: {path} does not fit this run ({first_line(e)})") from None
        self.epoch = int(ckpt["epoch"])
        # the checkpoint in this run's folder, if that is where it was read from (resumed into
        # another folder, this run has written none yet)
        self.checkpoint_epoch = self.epoch if path.resolve() == (self.out / CHECKPOINT).resolve() else None
        self.step = int(ckpt["step"])
        self.trail.records = inherited_records(ckpt["trail"], path.parent, self.out)
        lost = sum(bool(a.get("checkpoint")) and not b.get("checkpoint") for a, b in zip(ckpt["trail"], self.trail))
        if lost:
            self.notes.append(f"resume: {lost} trail record(s) name hard-pruned checkpoints that are not in "
                              f"{path.parent}; ltp-pick passes over them")
        rng = ckpt["rng"]
        if len(rng) == self.procs.world:
            set_rng_state(rng[self.procs.rank], self.device)
        else:
            seed_all(cfg.seed * 100_003 + self.procs.rank + 7919 * self.epoch)
            self.notes.append(f"resume: the checkpoint has RNG states of {len(rng)} processes, this run has "
                              f"{self.procs.world}: data order and augmentation differ from the original run")
        self.notes.append(f"resumed from {path} at epoch {self.epoch}, step {self.step}")

    def schedule_step(self, done_this_epoch: int) -> int:
        """The step the methods' schedules are at after `done_this_epoch` steps of this epoch:
        optimizer steps done had every epoch had this run's steps per epoch. It equals
        `self.step` unless the run was resumed with another (see `checkpoint.step_scale_note`)."""
        return self.epoch * self.steps_per_epoch + done_this_epoch

    def save_checkpoint(self) -> None:
        rng = rng_state(self.device)
        states: list[Any] = [rng]
        if self.procs.distributed:
            states = [None] * self.procs.world
            dist.all_gather_object(states, rng)
        if not self.procs.main:
            return
        ckpt = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "args": config_to_dict(self.cfg), "rng": states,
                "trail": self.trail.records, "classes": list(self.data.classes), "world_size": self.procs.world,
                "steps_per_epoch": self.steps_per_epoch}
        if hasattr(self.method, "state_dict"):
            ckpt["method"] = self.method.state_dict()
        atomic_save(ckpt, self.out / CHECKPOINT)
        self.checkpoint_epoch = self.epoch

    # -- training --------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.cfg.amp)

    def _batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        fmt = torch.channels_last if self.cfg.channels_last and x.dim() == 4 else torch.preserve_format
        return x.to(self.device, non_blocking=True, memory_format=fmt), y.to(self.device, non_blocking=True)

    def train_one_epoch(self) -> dict[str, float]:
        cfg, procs = self.cfg, self.procs
        self.ddp.train()
        self.train_sampler.set_epoch(self.epoch)
        self.loader_rng.manual_seed(cfg.seed * 100_003 + procs.rank + 7919 * (self.epoch + 1))
        regularizer = getattr(self.method, "regularizer", None)
        after_step = getattr(self.method, "after_step", None)
        images = self.steps_per_epoch * cfg.batch_size * procs.world
        bar = tqdm(total=images, unit="img", unit_scale=True, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not (procs.main and cfg.progress), leave=False, dynamic_ncols=True)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        lr = self.optimizer.param_groups[0]["lr"]  # the schedule steps per epoch: this epoch's learning rate
        start = time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            x, y = self._batch(x, y)
            with self._autocast():
                logits, aux = _logits(self.ddp(x))
                task = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                for a in aux:
                    task = task + AUX_LOSS_WEIGHT * F.cross_entropy(a.float(), y, label_smoothing=cfg.label_smoothing)
            loss = task + regularizer() if regularizer is not None else task
            # One all-reduce gives the mean loss for the log and, since a NaN or inf anywhere
            # makes the sum non-finite, lets every process stop at the same step.
            both = all_reduce(torch.stack([loss.detach(), task.detach()]).double(), procs) / procs.world
            if not bool(torch.isfinite(both[0])):
                raise TrainingDiverged(self._diverged_message(float(both[0])))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            if after_step is not None:
                after_step(self.schedule_step(i + 1))
            sums += both
            bar.update(cfg.batch_size * procs.world)
            bar.set_postfix(loss=f"{float(both[0]):.4f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        n = max(1, self.steps_per_epoch)
        return {"train_loss": float(sums[0]) / n, "task_loss": float(sums[1]) / n, "lr": lr,
                "img_per_s": images / max(seconds, 1e-9), "epoch_seconds": seconds}

    def _diverged_message(self, value: float) -> str:
        if self.checkpoint_epoch is not None and self.out is not None:
            kept = f"the last good checkpoint {self.out / CHECKPOINT} (epoch {self.checkpoint_epoch}) is kept"
        else:
            kept = "no checkpoint had been written yet"
        return (f"the loss became {value} at epoch {self.epoch + 1}, step {self.step + 1}; stopped, {kept}. "
                "Try a lower --lr (or --ltp-lambda), --clip-grad-norm, or --amp-dtype bf16")

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, desc: str) -> dict[str, float]:
        """top-1, top-5 and the loss on the whole validation set (shards summed over processes)."""
        model, procs = self.model, self.procs
        was_training = model.training
        model.eval()
        k = min(5, self.data.num_classes)
        stats = torch.zeros(4, dtype=torch.float64, device=self.device)  # top1, topk, loss sum, count
        for x, y in tqdm(self.val_loader, desc=desc, leave=False, disable=not (procs.main and self.cfg.progress)):
            x, y = self._batch(x, y)
            with self._autocast():
                logits, _ = _logits(model(x))
            logits = logits.float()
            hits = logits.topk(k, dim=1).indices.eq(y[:, None])
            stats += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), F.cross_entropy(logits, y, reduction="sum"),
                                  torch.tensor(len(y), device=self.device)]).double()
        model.train(was_training)
        stats = all_reduce(stats, procs)
        n = max(1.0, float(stats[3]))
        return {"top1": float(stats[0]) / n, "top5": float(stats[1]) / n, "val_loss": float(stats[2]) / n}

    def _sync_replicas(self) -> None:
        """Give every process rank 0's buffers (batch-norm statistics drift apart under DDP)
        and check that the parameters (thresholds included) are identical on every process."""
        if not self.procs.distributed:
            return
        for b in self.model.buffers():
            dist.broadcast(b, 0)
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        for p in self.model.parameters():
            total += p.detach().double().sum()
        spread = torch.cat([total, -total])
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        if float(spread[0] + spread[1]) > 1e-9 * max(1.0, abs(float(total))):
            raise RuntimeError("the model replicas differ across processes; a method or layer updates "
                               "parameters differently on each process")

    def measure(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the soft and the hard network, count sparsity and FLOPs; record the trail."""
        self._sync_replicas()
        method, model = self.method, self.model
        soft = self.evaluate("eval")
        hard_ctx = getattr(method, "hard_masks", None)
        if hard_ctx is not None:
            with hard_ctx():
                hard = self.evaluate("eval hard")
        else:
            hard = soft
        if method is not None:
            layer_sparsity = dict(method.sparsity())
        else:
            layer_sparsity = {}
            with torch.no_grad():
                for name, m in prunable_layers(model):
                    layer_sparsity[name] = float((m.weight == 0).float().mean())
            sizes = {name: m.weight.numel() for name, m in prunable_layers(model)}
            layer_sparsity["total"] = sum(layer_sparsity[n] * s for n, s in sizes.items()) / max(1, sum(sizes.values()))
        total = float(layer_sparsity.pop("total"))
        record = {"top1": soft["top1"], "top5": soft["top5"], "val_loss": soft["val_loss"],
                  "hard_top1": hard["top1"], "hard_top5": hard["top5"], "hard_val_loss": hard["val_loss"],
                  "lr": self.optimizer.param_groups[0]["lr"], **extra}
        if hasattr(method, "band_fraction"):
            record["band_fraction"] = float(method.band_fraction())
        thresholds = getattr(method, "thresholds", None)
        if isinstance(thresholds, dict):
            record["thresholds"] = {n: float(t.detach()) for n, t in thresholds.items()}
        flops = None
        with contextlib.suppress(Exception):  # FLOPs are informative; a model the counter cannot trace has none
            densities = {n: 1.0 - s for n, s in layer_sparsity.items()}
            with hard_ctx() if hard_ctx is not None else contextlib.nullcontext():
                flops = count_flops(model, self.example, densities)
        state = None
        if self.cfg.trail_checkpoints and self.trail.directory is not None:
            state = method.hard_state_dict() if hasattr(method, "hard_state_dict") else model.state_dict()
        entry = self.trail.record(step=self.step, epoch=self.epoch, sparsity=min(1.0, max(0.0, total)),
                                  layer_sparsity=layer_sparsity, soft_accuracy=soft["top1"],
                                  hard_accuracy=hard["top1"], flops=flops, state_dict=state, **record)
        return entry

    def summary(self, entry: dict[str, Any]) -> str:
        parts = [f"epoch {self.epoch}/{self.cfg.epochs}", f"step {self.step}"]
        if "train_loss" in entry:
            parts.append(f"loss {entry['train_loss']:.4f}")
        parts += [f"top1 {entry['top1']:.4f}", f"hard {entry['hard_top1']:.4f}", f"top5 {entry['top5']:.4f}"]
        if "sparsity" in entry:
            parts.append(f"sparsity {entry['sparsity']:.4f} ({format_compression(entry['compression'])})")
        if entry.get("img_per_s"):
            parts.append(f"{entry['img_per_s']:.0f} img/s")
        return "  ".join(parts)


def run(cfg: TrainConfig) -> RunResult:
    """Run the training `cfg` describes (see the module docstring) and return its result.
    Under torchrun every process calls this. Raises UsageError for bad input and
    TrainingDiverged when the loss becomes NaN or inf."""
    # Soft-pruned weights w * sigmoid(very negative) are often denormal floats, which make
    # CPU arithmetic several times slower; flushing them to zero (in torch's worker threads
    # too) changes nothing else.
    flush_denormals()
    procs = init_processes(cfg)
    try:
        r = _Run(cfg, procs)
        error = None
        try:
            r.setup()
        except Exception as e:  # every process must learn of it, or the others wait forever
            error = e
        agree(procs, error)
        r.wrap()
        for note in r.notes:
            r.say(f"note: {note}")
        d = r.data
        backend = dist.get_backend() if procs.distributed else "single process"
        r.say(f"{PROG}: {cfg.model} on {cfg.dataset} ({d.num_classes} classes, {len(d.train)} train / {len(d.val)} val "
              f"images), method {cfg.method}, {procs.world} process(es) ({backend}, {r.device})"
              + ("" if cfg.test_only else f", output {r.out}"))
        if cfg.test_only:
            last = r.measure({})
            r.say(json.dumps({k: last[k] for k in ("top1", "top5", "hard_top1", "hard_top5", "val_loss")
                              if k in last} | {"sparsity": last.get("sparsity")}))
            return RunResult(r.model, r.method, r.trail, cfg, None, last)
        last: dict[str, Any] = {}
        if not r.trail.records:  # the starting network is the trail's first record
            last = r.measure({})
            r.say(r.summary(last))
        while r.epoch < cfg.epochs:
            stats = r.train_one_epoch()
            r.scheduler.step()
            r.epoch += 1
            if r.epoch % cfg.eval_every == 0 or r.epoch == cfg.epochs:
                last = r.measure(stats)
                r.say(r.summary(last))
            r.save_checkpoint()
        if r.trail.records and not last:
            last = r.trail.records[-1]
        r.say(f"{PROG}: done; {len(r.trail)} evaluations in {r.out / 'trail.json'}"
              + (f", checkpoint {r.out / CHECKPOINT}" if r.checkpoint_epoch is not None else ""))
        return RunResult(r.model, r.method, r.trail, cfg, r.out, last)
    finally:
        if procs.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """`ltp-train` / `python -m ltp_core.engine.train`: returns the exit status (see the module docstring)."""
    rank = int(os.environ.get("RANK", "0"))
    show_traceback = os.environ.get("LTP_TRACEBACK", "") not in ("", "0")

    def fail(message: str, code: int) -> int:
        if rank == 0:
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return code

    try:
        cfg = parse_args(argv)
        run(cfg)
        return 0
    except UsageError as e:
        if show_traceback:
            raise
        return fail(str(e), 2)
    except DataError as e:  # a dataset file that cannot be read mid-run (the checkpoint stays as it was)
        if show_traceback:
            raise
        return fail(first_line(e), 2)
    except PeerFailed as e:
        return fail(str(e), 1)
    except TrainingDiverged as e:
        if show_traceback:
            raise
        return fail(str(e), 1)
    except KeyboardInterrupt:
        return fail("interrupted; --resume continues from the last checkpoint, if the run wrote one", 130)


if __name__ == "__main__":
    sys.exit(main())
