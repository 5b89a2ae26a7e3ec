"""The training loop of `ltp-train`: train (and prune) an image classifier on one process or many.

    python -m ltp_core.engine.train --dataset cifar10 --data-path data/cifar10 --model resnet20 --epochs 30
    torchrun --nproc_per_node 8 -m ltp_core.engine.train --dataset imagenet --data-path /data/imagenet \\
        --model resnet50 --pretrained resnet50.pth --lr 0.01 --ltp-lambda 1 --ltp-t0 0.01

The settings are `ltp_core.engine.config.TrainConfig` (flags, `--config FILE.yaml`, or
`make_config` in Python). The shape is torchvision's classification reference: `setup` builds
the run's pieces (`ltp_core.engine.build`), `run` loops over `train_one_epoch`, `evaluate` and
`save_checkpoint`, `main` is the command. One run:

1. processes: under `torchrun` (WORLD_SIZE > 1) a process group (gloo on CPU, nccl on GPU),
   one process per device, the model wrapped in DistributedDataParallel, so the learned
   thresholds (ordinary parameters) are broadcast at the start and their gradients averaged
   like every other; only rank 0 writes files or prints.
2. data, the model with a head of the dataset's class count, `--pretrained` weights (the head
   replaced when the class count differs), the pruning method (`ltp_core.methods.build`), the
   optimizer from the method's `param_groups` (thresholds: own group, no weight decay) and the
   schedule.
3. epochs of: task loss (+ the method's `regularizer()`), backward, step, `after_step`; a NaN
   or inf loss (on any process) stops the run and keeps the last good checkpoint.
4. every evaluation (at the start, then every `--eval-every` epochs) is one
   `ltp_core.core.measure.measure`: accuracy, top-5 and loss of the network as trained
   (soft_accuracy, soft_top5, soft_loss) and as deployed (inside `method.hard_masks()`:
   hard_accuracy, hard_top5, hard_loss), per-layer and total sparsity, compression and
   effective FLOPs, appended to the trail (`trail.json`, plus a hard-pruned checkpoint
   `trail/step_*.pt`).
5. after every epoch `checkpoint.pth` (model, optimizer, scheduler, scaler, epoch, step, args,
   every process's RNG state, the trail) is written to a temporary file and renamed; `--resume`
   restores all of it (`ltp_core.engine.resume`), so the continued run is the run that was
   interrupted: the settings not given take the checkpoint's values (`parse_args`), and a given
   one that changes what those states carry (optimizer, learning rate and schedule, method
   options, seed; `--epochs` too where a schedule is built for the run's length), which the
   checkpoint would otherwise override without a word, is refused, as is writing into a folder
   holding another run. Resumed into another folder, the trail's records keep naming the old
   run's hard-pruned checkpoints (by absolute path). Another --batch-size or number of
   processes (so another number of steps per epoch) is allowed: the learning rate steps per
   epoch and the methods' schedules continue at the epoch reached (`schedule_step`), unless a
   method option counts optimizer steps (then it is refused).

Exit status: 0 done, 1 the loss diverged or a process failed, 2 a usage error (one line on
stderr; LTP_TRACEBACK=1 shows the traceback), 130 interrupted.
"""
from __future__ import annotations

import json
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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core.measure import measure
from ..core.method import PruningMethod
from ..core.trail import Trail, format_compression
from ..data import DataError, ImageDatasets
from ..io import atomic_save, atomic_write_bytes
from ..kernels.denormals import flush_denormals
from .build import (
    Loaders,
    build_method,
    build_model,
    build_optimizer,
    build_scheduler,
    check_input_sizes,
    load_data,
    output_dir_problem,
    wrap_model,
)
from .config import PROG, TrainConfig, UsageError, config_to_dict, convert, given_settings, make_config, output_folder
from .distributed import PeerFailed, Procs, agree, all_reduce, init_processes, rng_state, seed_all
from .resume import CHECKPOINT, CHECKPOINT_KEYS, checkpoint_path, restore, settings_from_checkpoint
from .weights import first_line, load_pretrained

__all__ = ["main", "run", "parse_args", "setup", "train_one_epoch", "evaluate", "record_evaluation",
           "save_checkpoint", "Run", "RunResult", "TrainingDiverged", "load_pretrained", "CHECKPOINT_KEYS",
           "SUMMARY_KEYS"]

AUX_LOSS_WEIGHT = 0.4  # GoogLeNet / Inception v3 auxiliary heads, as in their papers
# What `--test-only` prints (as JSON), from the one evaluation it makes.
SUMMARY_KEYS = ("soft_accuracy", "hard_accuracy", "soft_top5", "hard_top5", "soft_loss", "hard_loss", "sparsity",
                "soft_test_accuracy", "hard_test_accuracy")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the message says where and which checkpoint is kept."""


@dataclass
class RunResult:
    """What `run` returns: the trained model (the bare module, not the DDP wrapper, with the
    method still attached), the method (None for dense), the trail, the last evaluation."""
    model: nn.Module
    method: PruningMethod | None
    trail: Trail
    config: TrainConfig
    output_dir: Path | None
    last: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """A run in progress: its settings, its processes, the pieces `setup` built, and where it
    stands (epochs and optimizer steps done, the epoch of the checkpoint in its folder)."""
    cfg: TrainConfig
    procs: Procs
    out: Path
    data: ImageDatasets
    loaders: Loaders
    model: nn.Module
    method: PruningMethod | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    trail: Trail
    example: Tensor  # one input of the validation shape, for FLOPs
    amp_dtype: torch.dtype
    ddp: nn.Module | None = None  # the model as trained: DistributedDataParallel under torchrun
    epoch: int = 0
    step: int = 0
    checkpoint_epoch: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def say(self, text: str) -> None:
        if self.procs.main:
            tqdm.write(text, file=sys.stdout)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """`ltp-train`'s flags (and --config YAML) -> a checked TrainConfig. With --resume, every
    setting neither gives is the resumed run's own, from its checkpoint
    (`resume.settings_from_checkpoint`), not the default. Raises UsageError."""
    given = given_settings(argv)
    if convert("resume", given.get("resume")) is not None:
        given = settings_from_checkpoint(given)
    return make_config(**given)


def _logits(out: Any) -> tuple[Tensor, list[Tensor]]:
    """(main logits, auxiliary logits) of a model's output: GoogLeNet and Inception v3 return
    named tuples with auxiliary heads in training mode."""
    if isinstance(out, (tuple, list)):
        return out[0], [o for o in out[1:] if o is not None]
    return out, []


# -- setup ---------------------------------------------------------------------------------

def _check_output_dir(cfg: TrainConfig, out: Path, resume_path: Path | None) -> None:
    """UsageError when `out` holds a run this one would overwrite."""
    held = [f for f in (CHECKPOINT, "trail.json") if (out / f).exists()]
    own = out / CHECKPOINT
    if cfg.test_only or not held or (resume_path is not None and resume_path.resolve() == own.resolve()):
        return
    if resume_path is not None:
        raise UsageError(f"{out} already holds a run ({held[0]}); resuming {resume_path} there "
                         "would overwrite it: choose another --output-dir")
    if not own.exists():
        raise UsageError(f"{out} holds a run that stopped before its first checkpoint (trail.json, "
                         "no checkpoint.pth): nothing there to resume; delete the folder or choose "
                         "another --output-dir")
    raise UsageError(f"{out} already holds a run ({held[0]}); pass --resume to continue it or "
                     "choose another --output-dir")


def setup(cfg: TrainConfig, procs: Procs) -> Run:
    """Check `cfg` against the machine and the output folder, build the run's pieces, restore
    a --resume checkpoint and (rank 0, unless --test-only) create the output folder with its
    args.yaml. Every refusal is a UsageError, raised before anything is written."""
    device = procs.device
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.amp and cfg.amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UsageError("--amp-dtype bf16: this GPU does not support bfloat16; use --amp-dtype fp16")
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    out = output_folder(cfg.output_dir, cfg.dataset, cfg.model, cfg.method)
    problem = output_dir_problem(out)
    if problem:
        raise UsageError(problem)
    if cfg.sync_bn and procs.distributed and device.type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA (SyncBatchNorm runs on GPUs only); this run's device is "
                         f"{device.type}: drop --sync-bn")
    resume_path = None if cfg.resume is None else checkpoint_path(cfg.resume, out)
    _check_output_dir(cfg, out, resume_path)
    check_input_sizes(cfg)
    seed_all(cfg.seed)

    data, loaders, notes = load_data(cfg, procs)
    model, model_notes = build_model(cfg, data, procs, pretrained=resume_path is None)
    example = torch.zeros(1, *data.sample_shape, device=device)
    method = build_method(cfg, model, len(loaders.train), example)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model, method)
    r = Run(cfg, procs, out, data, loaders, model, method, optimizer, build_scheduler(cfg, optimizer),
            torch.amp.GradScaler(device.type, enabled=cfg.amp and amp_dtype == torch.float16),
            # records=[]: a resumed run's trail is the checkpoint's (trail.json may hold later records)
            Trail(out if procs.main and not cfg.test_only else None, records=[]), example, amp_dtype,
            notes=notes + model_notes)
    if resume_path is not None:
        resumed = restore(resume_path, cfg, procs, out, r.steps_per_epoch, model=model, optimizer=optimizer,
                          scheduler=r.scheduler, scaler=r.scaler, method=method)
        r.epoch, r.step, r.checkpoint_epoch = resumed.epoch, resumed.step, resumed.checkpoint_epoch
        r.trail.records = resumed.records
        r.notes += resumed.notes
    else:  # every process its own stream for augmentation and dropout (the init above was shared)
        seed_all(cfg.seed * 100_003 + procs.rank)
    if procs.main and not cfg.test_only:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # what output_dir_problem cannot foresee (/proc, a full or read-only disk)
            raise UsageError(f"--output-dir {out}: cannot create it ({e.strerror or first_line(e)})") from None
        if resume_path is not None:
            r.trail.save()  # drop records written after the checkpoint (a crash in between)
        import yaml

        # The settings that made this run: `--config args.yaml` runs it again (a resumed run's
        # --resume is not kept: it would point a rerun elsewhere at this run's checkpoint).
        settings = {**config_to_dict(cfg), "output_dir": str(out), "resume": None}
        atomic_write_bytes(out / "args.yaml", yaml.safe_dump(settings, sort_keys=False).encode())
    return r


# -- training ------------------------------------------------------------------------------

def _autocast(r: Run):
    return torch.autocast(r.procs.device.type, dtype=r.amp_dtype, enabled=r.cfg.amp)


def _to_device(r: Run, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    fmt = torch.channels_last if r.cfg.channels_last and x.dim() == 4 else torch.preserve_format
    device = r.procs.device
    return x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)


def schedule_step(r: Run, done_this_epoch: int) -> int:
    """The step the methods' schedules are at after `done_this_epoch` steps of this epoch:
    optimizer steps done had every epoch had this run's steps per epoch. It equals `r.step`
    unless the run was resumed with another (see `resume.step_scale_note`)."""
    return r.epoch * r.steps_per_epoch + done_this_epoch


def train_one_epoch(r: Run) -> dict[str, float]:
    """One epoch of training (epoch `r.epoch`, counting from 0); its mean losses, learning rate
    and speed. TrainingDiverged when the loss becomes NaN or inf on any process."""
    cfg, procs = r.cfg, r.procs
    r.ddp.train()
    r.loaders.sampler.set_epoch(r.epoch)
    r.loaders.rng.manual_seed(cfg.seed * 100_003 + procs.rank + 7919 * (r.epoch + 1))
    images = r.steps_per_epoch * cfg.batch_size * procs.world
    bar = tqdm(total=images, unit="img", unit_scale=True, desc=f"epoch {r.epoch + 1}/{cfg.epochs}",
               disable=not (procs.main and cfg.progress), leave=False, dynamic_ncols=True)
    sums = torch.zeros(2, dtype=torch.float64, device=procs.device)
    lr = r.optimizer.param_groups[0]["lr"]  # the schedule steps per epoch: this epoch's learning rate
    start = time.perf_counter()
    for i, (x, y) in enumerate(r.loaders.train):
        x, y = _to_device(r, x, y)
        with _autocast(r):
            logits, aux = _logits(r.ddp(x))
            task = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            for a in aux:
                task = task + AUX_LOSS_WEIGHT * F.cross_entropy(a.float(), y, label_smoothing=cfg.label_smoothing)
        loss = task + r.method.regularizer() if r.method is not None else task
        # One all-reduce gives the mean loss for the log and, since a NaN or inf anywhere
        # makes the sum non-finite, lets every process stop at the same step.
        both = all_reduce(torch.stack([loss.detach(), task.detach()]).double(), procs) / procs.world
        if not bool(torch.isfinite(both[0])):
            raise TrainingDiverged(_diverged_message(r, float(both[0])))
        r.optimizer.zero_grad(set_to_none=True)
        r.scaler.scale(loss).backward()
        if cfg.clip_grad_norm is not None:
            r.scaler.unscale_(r.optimizer)
            nn.utils.clip_grad_norm_(r.model.parameters(), cfg.clip_grad_norm)
        r.scaler.step(r.optimizer)
        r.scaler.update()
        r.step += 1
        if r.method is not None:
            r.method.after_step(schedule_step(r, i + 1))
        sums += both
        bar.update(cfg.batch_size * procs.world)
        bar.set_postfix(loss=f"{float(both[0]):.4f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    n = max(1, r.steps_per_epoch)
    return {"train_loss": float(sums[0]) / n, "task_loss": float(sums[1]) / n, "lr": lr,
            "img_per_s": images / max(seconds, 1e-9), "epoch_seconds": seconds}


def _diverged_message(r: Run, value: float) -> str:
    if r.checkpoint_epoch is not None:
        kept = f"the last good checkpoint {r.out / CHECKPOINT} (epoch {r.checkpoint_epoch}) is kept"
    else:
        kept = "no checkpoint had been written yet"
    return (f"the loss became {value} at epoch {r.epoch + 1}, step {r.step + 1}; stopped, {kept}. "
            "Try a lower --lr (or --ltp-lambda), --clip-grad-norm, or --amp-dtype bf16")


# -- evaluation ----------------------------------------------------------------------------

@torch.no_grad()
def evaluate(r: Run, desc: str = "eval", loader: DataLoader | None = None) -> dict[str, float]:
    """{"accuracy": top-1, "top5", "loss"} of the model as it stands, on the whole validation
    set (or `loader`'s; each process's shard, summed over the processes)."""
    model, procs, device = r.model, r.procs, r.procs.device
    was_training = model.training
    model.eval()
    k = min(5, r.data.num_classes)
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # top1, topk, loss sum, count
    loader = r.loaders.val if loader is None else loader
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not (procs.main and r.cfg.progress)):
        x, y = _to_device(r, x, y)
        with _autocast(r):
            logits, _ = _logits(model(x))
        logits = logits.float()
        hits = logits.topk(k, dim=1).indices.eq(y[:, None])
        stats += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), F.cross_entropy(logits, y, reduction="sum"),
                              torch.tensor(len(y), device=device)]).double()
    model.train(was_training)
    stats = all_reduce(stats, procs)
    n = max(1.0, float(stats[3]))
    return {"accuracy": float(stats[0]) / n, "top5": float(stats[1]) / n, "loss": float(stats[2]) / n}


def _sync_replicas(model: nn.Module, procs: Procs) -> None:
    """Give every process rank 0's buffers (batch-norm statistics drift apart under DDP)
    and check that the parameters (thresholds included) are identical on every process."""
    if not procs.distributed:
        return
    for b in model.buffers():
        dist.broadcast(b, 0)
    total = torch.zeros(1, dtype=torch.float64, device=procs.device)
    for p in model.parameters():
        total += p.detach().double().sum()
    spread = torch.cat([total, -total])
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    if float(spread[0] + spread[1]) > 1e-9 * max(1.0, abs(float(total))):
        raise RuntimeError("the model replicas differ across processes; a method or layer updates "
                           "parameters differently on each process")


def record_evaluation(r: Run, extra: dict[str, Any]) -> dict[str, Any]:
    """Measure the run as it stands (`ltp_core.core.measure.measure`: the soft and the hard
    network's accuracy, top-5 and loss, sparsity, FLOPs) and append it to the trail, with the
    learning rate, `extra` and the method's thresholds and band fraction where it has them."""
    _sync_replicas(r.model, r.procs)
    descs = iter(("eval", "eval hard"))

    def metrics() -> dict[str, float]:  # validation; with --val-fraction the test split too, as test_*
        desc = next(descs, "eval")
        out = evaluate(r, desc)
        if r.loaders.test is not None:
            out.update({f"test_{k}": v for k, v in evaluate(r, f"{desc} (test)", r.loaders.test).items()})
        return out

    fields = measure(r.model, r.method, metrics, r.example)
    record = {"lr": r.optimizer.param_groups[0]["lr"], **extra}
    if hasattr(r.method, "band_fraction"):
        record["band_fraction"] = float(r.method.band_fraction())
    thresholds = getattr(r.method, "thresholds", None)
    if isinstance(thresholds, dict):
        record["thresholds"] = {n: float(t.detach()) for n, t in thresholds.items()}
    state = None
    if r.cfg.trail_checkpoints and r.trail.directory is not None:
        state = r.method.hard_state_dict() if r.method is not None else r.model.state_dict()
    return r.trail.record(step=r.step, epoch=r.epoch, state_dict=state, **fields, **record)


def summary(r: Run, entry: dict[str, Any]) -> str:
    """The line printed after an evaluation."""
    parts = [f"epoch {r.epoch}/{r.cfg.epochs}", f"step {r.step}"]
    if "train_loss" in entry:
        parts.append(f"loss {entry['train_loss']:.4f}")
    parts += [f"soft_accuracy {entry['soft_accuracy']:.4f}", f"hard_accuracy {entry['hard_accuracy']:.4f}",
              f"soft_top5 {entry['soft_top5']:.4f}"]
    if "hard_test_accuracy" in entry:
        parts.append(f"hard_test_accuracy {entry['hard_test_accuracy']:.4f}")
    if "sparsity" in entry:
        parts.append(f"sparsity {entry['sparsity']:.4f} ({format_compression(entry['compression'])})")
    if entry.get("img_per_s"):
        parts.append(f"{entry['img_per_s']:.0f} img/s")
    return "  ".join(parts)


def save_checkpoint(r: Run) -> None:
    """Write `checkpoint.pth` (atomically; rank 0) with all a resumed run restores
    (`resume.CHECKPOINT_KEYS` and more: see `ltp_core.engine.resume`)."""
    rng = rng_state(r.procs.device)
    states: list[Any] = [rng]
    if r.procs.distributed:
        states = [None] * r.procs.world
        dist.all_gather_object(states, rng)
    if not r.procs.main:
        return
    ckpt = {"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
            "lr_scheduler": r.scheduler.state_dict(), "scaler": r.scaler.state_dict(),
            "epoch": r.epoch, "step": r.step, "args": config_to_dict(r.cfg), "rng": states,
            "trail": r.trail.records, "classes": list(r.data.classes), "world_size": r.procs.world,
            "steps_per_epoch": r.steps_per_epoch}
    if r.method is not None:
        ckpt["method"] = r.method.state_dict()
    atomic_save(ckpt, r.out / CHECKPOINT)
    r.checkpoint_epoch = r.epoch


# -- the run -------------------------------------------------------------------------------

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
        r, error = None, None
        try:
            r = setup(cfg, procs)
        except Exception as e:  # every process must learn of it, or the others wait forever
            error = e
        agree(procs, error)
        r.ddp = wrap_model(r.model, procs)
        for note in r.notes:
            r.say(f"note: {note}")
        d = r.data
        backend = dist.get_backend() if procs.distributed else "single process"
        test = "" if d.test is None else f" / {len(d.test)} test"
        r.say(f"{PROG}: {cfg.model} on {cfg.dataset} ({d.num_classes} classes, {len(d.train)} train / {len(d.val)} val"
              f"{test} images), method {cfg.method}, {procs.world} process(es) ({backend}, {procs.device})"
              + ("" if cfg.test_only else f", output {r.out}"))
        if cfg.test_only:
            last = record_evaluation(r, {})
            r.say(json.dumps({k: last[k] for k in SUMMARY_KEYS if k in last}))
            return RunResult(r.model, r.method, r.trail, cfg, None, last)
        last: dict[str, Any] = {}
        if not r.trail.records:  # the starting network is the trail's first record
            last = record_evaluation(r, {})
            r.say(summary(r, last))
        while r.epoch < cfg.epochs:
            stats = train_one_epoch(r)
            r.scheduler.step()
            r.epoch += 1
            if r.epoch % cfg.eval_every == 0 or r.epoch == cfg.epochs:
                last = record_evaluation(r, stats)
                r.say(summary(r, last))
            save_checkpoint(r)
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
        run(parse_args(argv))
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
