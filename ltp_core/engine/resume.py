"""Resuming an `ltp-train` run: its checkpoint read back, checked against the new settings, restored.

`checkpoint.pth`, in the run's folder and written atomically after every epoch, holds what
torchvision's reference puts there (model, optimizer, lr_scheduler, scaler, epoch, args) plus
the optimizer step count, every process's RNG state, the trail's records, the method's state,
the class names, the number of processes and the steps per epoch: all a resumed run needs to
be the run that was interrupted.

The settings a resumed run does not give are the checkpoint's (`settings_from_checkpoint`). A
resume may not change a setting whose effect the checkpoint carries (`RESUME_FIXED`,
`check_settings`), and may run on another number of steps per epoch (batch size x processes)
only where no method option counts optimizer steps (`step_scale_note`). `restore` puts the
states back into the new run's model, optimizer, schedule, scaler and method, and returns where
the run stood (`Resumed`). The engine (`ltp_core.engine.train.save_checkpoint`) writes the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..core.trail import Trail
from .config import (
    FIELDS,
    PROG,
    TrainConfig,
    UsageError,
    convert,
    flag_name,
    make_config,
    merge_settings,
    output_folder,
    schedule_fixes_epochs,
)
from .distributed import Procs, seed_all, set_rng_state
from .weights import first_line, load_torch_file

__all__ = ["CHECKPOINT", "CHECKPOINT_KEYS", "RESUME_FIXED", "checkpoint_path", "read_checkpoint", "check_settings",
           "settings_from_checkpoint", "step_scale_note", "inherited_records", "restore", "Resumed"]

CHECKPOINT = "checkpoint.pth"  # a run's checkpoint, in its output folder
CHECKPOINT_KEYS = ("model", "optimizer", "lr_scheduler", "scaler", "epoch", "step", "args", "rng", "trail")
# Settings whose effect a checkpoint carries (in the model, optimizer, schedule and method
# states it restores; --seed: the random states, and it keeps seeding every epoch's data order
# and the synthetic images): --resume refuses to change them.
RESUME_FIXED = ("model_opt", "synthetic_classes", "opt", "lr", "momentum", "weight_decay", "lr_scheduler",
                "lr_step_size", "lr_gamma", "lr_min", "lr_warmup_epochs", "lr_warmup_method", "lr_warmup_decay",
                "method_opt", "ltp_lambda", "ltp_t0", "ltp_exclude", "ltp_threshold_lr", "target_sparsity", "seed",
                "val_fraction")


def checkpoint_path(resume: str, out: Path) -> Path:
    """The checkpoint file `--resume resume` names: `out`/checkpoint.pth for "auto" (the flag
    without a value), a run folder's checkpoint.pth, or the file itself. UsageError when there
    is none."""
    path = out / CHECKPOINT if resume == "auto" else Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        stopped = resume == "auto" and (out / "trail.json").exists()
        raise UsageError(f"--resume: no checkpoint at {path}" + (
            " (the run there stopped before its first checkpoint: delete the folder to start again)"
            if stopped else ""))
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The `ltp-train` checkpoint at `path` (loaded with weights_only=True, on the CPU).
    UsageError when it is not one."""
    ckpt = load_torch_file(path, "--resume")
    lacking = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if lacking:
        raise UsageError(f"--resume: {path} is not an {PROG} checkpoint (it lacks {', '.join(lacking)})")
    if not isinstance(ckpt["args"], dict):
        raise UsageError(f"--resume: {path} is not an {PROG} checkpoint (its args are not a mapping of settings)")
    return ckpt


def check_settings(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """UsageError when `cfg` changes a setting of the checkpoint's run (its `args`, `saved`)
    that the restored states carry: a different value would be overridden by the checkpoint
    without a word (or fail to load), and args.yaml would record a setting the run did not use.
    Settings not given on the command line (or in --config) are the checkpoint's already
    (`settings_from_checkpoint`), so these are ones the user gave."""
    for key in ("dataset", "model", "method"):
        if saved.get(key) != getattr(cfg, key):
            raise UsageError(f"--resume: {path} is a --{key} {saved.get(key)} run, this one is --{key} "
                             f"{getattr(cfg, key)}")
    fixed = RESUME_FIXED + (("epochs",) if schedule_fixes_epochs(cfg) else ())
    changed = [k for k in fixed if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        raise UsageError(f"--resume: {path} was trained with "
                         + ", ".join(f"{flag_name(k)} {saved[k]}" for k in changed) + "; this run sets "
                         + ", ".join(f"{flag_name(k)} {getattr(cfg, k)}" for k in changed)
                         + ". A resumed run keeps the checkpoint's optimizer, schedule and method state"
                         + (" (its schedule is built for the run's --epochs)" if "epochs" in changed else "")
                         + (" and its random states (--seed also orders every epoch's data)"
                            if "seed" in changed else "")
                         + ": drop those flags, or start a new run in another --output-dir")


def step_scale_note(ckpt: dict[str, Any], cfg: TrainConfig, steps_per_epoch: int, world: int,
                    path: Path) -> str | None:
    """A resumed run may have another number of optimizer steps per epoch than the
    checkpoint's (another --batch-size, number of processes or dataset size): then a note for
    the user, else None. The learning-rate schedule steps per epoch and the methods' schedules
    are built from --epochs at this run's scale and told the step on it (the engine's
    `schedule_step`), so they continue at the epoch they had reached; only a method option
    given in optimizer steps (the method's STEP_OPTIONS: a start, an end, a length) cannot
    follow: such a resume is a UsageError."""
    saved = ckpt["args"]
    epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
    # Checkpoints before steps_per_epoch was saved: every epoch had the same number of steps.
    before = ckpt.get("steps_per_epoch", step // epoch if epoch else None)
    if before is None or int(before) == steps_per_epoch or cfg.test_only:
        return None
    before, saved_world = int(before), int(ckpt.get("world_size", len(ckpt["rng"])))
    scale = (f"{before} optimizer steps per epoch (-b/--batch-size {saved.get('batch_size')} x {saved_world} "
             f"process(es)); this run has {steps_per_epoch} (--batch-size {cfg.batch_size} x {world} process(es))")
    from ..methods import METHODS

    step_options = getattr(METHODS.get(cfg.method), "STEP_OPTIONS", ())
    given = [k for k in step_options if cfg.method_opt.get(k) not in (None, 0)]
    if given:
        raise UsageError(f"--resume: {path} was trained with {scale}. --method {cfg.method}'s "
                         + ", ".join(f"{k}={cfg.method_opt[k]}" for k in given)
                         + " counts optimizer steps, so its schedule would move to other epochs: resume with "
                         f"--batch-size {saved.get('batch_size')} on {saved_world} process(es), or start a new run "
                         "in another --output-dir")
    return (f"resume: {path} was trained with {scale}; the schedules continue from epoch {epoch} "
            f"(step {epoch * steps_per_epoch} at this run's scale; the trail keeps counting optimizer steps); "
            "rates per step (--lr, momentum, LTP's target_pace) now act on a different number of steps per epoch")


def settings_from_checkpoint(given: dict[str, Any]) -> dict[str, Any]:
    """`given` (the settings flags and --config set, `config.given_settings`) completed with the
    resumed run's own, from its checkpoint: what the user leaves out stays as the run had it.
    Without --output-dir a run folder's checkpoint is continued in that folder. UsageError for a
    checkpoint that cannot be read, or a missing one when `given` alone is not a whole
    configuration."""
    key = {n: convert(n, given[n]) if n in given else FIELDS[n].default
           for n in ("resume", "output_dir", "dataset", "model", "method")}
    try:
        path = checkpoint_path(key["resume"], output_folder(key["output_dir"], key["dataset"], key["model"],
                                                           key["method"]))
    except UsageError as missing:
        # Nothing to complete them from. The flags may still make a whole run (the notebooks parse
        # their commands back from another working folder): the engine then says that there is
        # no checkpoint when it starts. Otherwise the missing checkpoint is the error to report.
        try:
            make_config(**given)
        except UsageError:
            raise missing from None
        return given
    # Settings this ltp_core does not know (another version's) are left out.
    saved = {k: v for k, v in read_checkpoint(path)["args"].items() if k in FIELDS}
    if "output_dir" not in given and path.name == CHECKPOINT:
        saved["output_dir"] = str(path.parent)
    return merge_settings(saved, given)


def inherited_records(records: list[dict[str, Any]], source: Path, out: Path) -> list[dict[str, Any]]:
    """The trail records of a checkpoint in folder `source`, for a run that writes into `out`,
    under the trail's current names (`Trail.RENAMED`). Their hard-pruned checkpoints are named
    relative to the run's folder: resumed into another folder, they name the files in `source`
    by absolute path (None where a file is missing, so ltp-pick passes over the record instead
    of failing on it)."""
    records = [Trail.renamed(r) for r in records]
    if source.resolve() == out.resolve():
        return records
    inherited = []
    for r in records:
        if r.get("checkpoint"):
            file = (source / r["checkpoint"]).resolve()
            r = {**r, "checkpoint": str(file) if file.is_file() else None}
        inherited.append(r)
    return inherited


@dataclass
class Resumed:
    """Where a restored run stands: epochs and optimizer steps done, the trail's records so far,
    the epoch of the checkpoint in the run's own folder (None when it was read from elsewhere)
    and notes for the user."""
    epoch: int
    step: int
    records: list[dict[str, Any]]
    checkpoint_epoch: int | None
    notes: list[str] = field(default_factory=list)


def restore(path: Path, cfg: TrainConfig, procs: Procs, out: Path, steps_per_epoch: int, *, model: nn.Module,
            optimizer: Any, scheduler: Any, scaler: Any, method: Any) -> Resumed:
    """Read the checkpoint at `path`, check it against `cfg` (`check_settings`,
    `step_scale_note`), load its states into the run's model, optimizer, schedule, scaler and
    method, and set this process's RNG state. UsageError when it does not fit."""
    ckpt = read_checkpoint(path)
    check_settings(ckpt["args"], cfg, path)
    notes = []
    note = step_scale_note(ckpt, cfg, steps_per_epoch, procs.world, path)
    if note:
        notes.append(note)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        if "method" in ckpt and method is not None:
            method.load_state_dict(ckpt["method"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"--resume: {path} does not fit this run ({first_line(e)})") from None
    epoch = int(ckpt["epoch"])
    records = inherited_records(ckpt["trail"], path.parent, out)
    lost = sum(bool(a.get("checkpoint")) and not b.get("checkpoint") for a, b in zip(ckpt["trail"], records))
    if lost:
        notes.append(f"resume: {lost} trail record(s) name hard-pruned checkpoints that are not in "
                     f"{path.parent}; ltp-pick passes over them")
    rng = ckpt["rng"]
    if len(rng) == procs.world:
        set_rng_state(rng[procs.rank], procs.device)
    else:
        seed_all(cfg.seed * 100_003 + procs.rank + 7919 * epoch)
        notes.append(f"resume: the checkpoint has RNG states of {len(rng)} processes, this run has "
                     f"{procs.world}: data order and augmentation differ from the original run")
    notes.append(f"resumed from {path} at epoch {epoch}, step {int(ckpt['step'])}")
    # the checkpoint in this run's folder, if that is where it was read from (resumed into
    # another folder, this run has written none yet)
    own = path.resolve() == (out / CHECKPOINT).resolve()
    return Resumed(epoch, int(ckpt["step"]), records, epoch if own else None, notes)
