"""The trail: one record per evaluation of a pruning run, so a network is picked afterwards.

As tau rises during training the run passes through ever sparser networks. `Trail` keeps,
for every evaluation, the step, epoch, sparsity (total and per layer), compression, soft
and hard accuracy, FLOPs and anything else given, as JSON, and optionally a hard-pruned
checkpoint (a plain state_dict) next to it. `Trail.pick` chooses a record afterwards.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_save, atomic_write_bytes, standard_json
from .measure import measure

__all__ = ["Trail", "format_compression"]


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of the trail file `path`; ValueError, naming it, for a file that is not one."""
    try:
        data = json.loads(path.read_text())
        records = data["records"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a trail file ({type(e).__name__}: {e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} is not a trail file (its records are a {type(records).__name__}, not a list)")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{path} is not a trail file (record {i}: not a mapping)")
        r = records[i] = Trail.renamed(r)
        for k in Trail.REQUIRED:
            if isinstance(r.get(k), bool) or not isinstance(r.get(k), (int, float)):
                raise ValueError(f"{path} is not a trail file (record {i}: {k!r} is missing or not a number)")
    return records


def format_compression(compression: float | None) -> str:
    """'12.34x', or 'all pruned' for a record whose weights are all zero (compression None)."""
    return "all pruned" if compression is None else f"{compression:.2f}x"


class Trail:
    """Records of a pruning run, in order.

    Args:
        directory: where `trail.json` and the hard-pruned checkpoints `trail/step_<step>.pt`
            go. None keeps the trail in memory only. A `trail.json` already there is read
            first, so `Trail(run_dir).pick(...)` picks from that run and `record` adds to its
            records (never writes over them).
        records: the records to start from instead (the file is then not read).

    Each record is a dict with at least `step`, `epoch`, `sparsity` (total, fraction of
    prunable weights that are zero), `compression` (prunable / surviving weights; None when
    none survive), `soft_accuracy`, `hard_accuracy`, `flops`, `layer_sparsity` ({layer:
    fraction}) and `checkpoint` (path or None). Accuracies are fractions in [0, 1] (or None
    when not measured). `trail.json` is standard JSON: a non-finite number is written as null.
    """

    REQUIRED = ("step", "epoch", "sparsity")
    # Names trail files of earlier versions used for values that now have one name each.
    RENAMED = {"top1": "soft_accuracy", "hard_top1": "hard_accuracy", "top5": "soft_top5",
               "val_loss": "soft_loss", "hard_val_loss": "hard_loss"}

    @classmethod
    def renamed(cls, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with the names of earlier versions (top1, hard_top1, ...) replaced by today's."""
        return {cls.RENAMED.get(k, k): v for k, v in record.items()
                if not (k in cls.RENAMED and cls.RENAMED[k] in record)}

    def __init__(self, directory: str | os.PathLike | None = None, *,
                 records: list[dict[str, Any]] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.records: list[dict[str, Any]] = list(records or [])
        if records is None and self.directory is not None and (self.directory / "trail.json").is_file():
            self.records = _read_records(self.directory / "trail.json")

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]

    def record(self, *, step: int, epoch: float, sparsity: float, layer_sparsity: dict[str, float] | None = None,
               soft_accuracy: float | None = None, hard_accuracy: float | None = None,
               flops: int | None = None, state_dict: dict[str, torch.Tensor] | None = None,
               **extra: Any) -> dict[str, Any]:
        """Append one evaluation. `state_dict` (a hard-pruned plain state_dict) is saved as
        `trail/step_<step>.pt` when the trail has a directory. Writes `trail.json` at once."""
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be a fraction in [0, 1], got {sparsity}")
        entry: dict[str, Any] = {
            "step": int(step), "epoch": float(epoch), "sparsity": float(sparsity),
            "compression": None if sparsity >= 1.0 else 1.0 / (1.0 - sparsity),
            "soft_accuracy": soft_accuracy, "hard_accuracy": hard_accuracy,
            "flops": None if flops is None else int(flops),
            "layer_sparsity": dict(layer_sparsity or {}), "checkpoint": None, **extra,
        }
        if state_dict is not None and self.directory is not None:
            ckpt = self.directory / "trail" / f"step_{int(step):08d}.pt"
            atomic_save(state_dict, ckpt)
            entry["checkpoint"] = str(ckpt.relative_to(self.directory))
        self.records.append(entry)
        if self.directory is not None:
            self.save()
        return entry

    def record_pruner(self, pruner: Any, evaluate: Callable[[], Any], *, step: int, epoch: float,
                      example_input: torch.Tensor | None = None, save_checkpoint: bool = True,
                      **extra: Any) -> dict[str, Any]:
        """Measure a pruning method at this point of training (`ltp_core.core.measure.measure`:
        `evaluate()` once as is, once inside `pruner.hard_masks()`) and record it, with the
        hard-pruned checkpoint `pruner.hard_state_dict()` when the trail has a directory."""
        fields = measure(pruner.model, pruner, evaluate, example_input)
        state = pruner.hard_state_dict() if save_checkpoint and self.directory is not None else None
        return self.record(step=step, epoch=epoch, state_dict=state, **fields, **extra)

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> str:
        return standard_json({"records": self.records}).decode()

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the trail as JSON (atomically) to `path` or `<directory>/trail.json`."""
        if path is None:
            if self.directory is None:
                raise ValueError("this Trail has no directory; pass a path to save()")
            path = self.directory / "trail.json"
        atomic_write_bytes(path, self.to_json().encode())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trail:
        """Read a trail from `trail.json` or from the folder holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / "trail.json"
        if not path.is_file():
            raise FileNotFoundError(f"no trail at {path} (expected a trail.json written by Trail.save)")
        return cls(path.parent, records=_read_records(path))

    def load_checkpoint(self, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The hard-pruned state_dict saved with `entry` (loaded with weights_only=True)."""
        if entry.get("checkpoint") is None or self.directory is None:
            raise ValueError(f"the record at step {entry.get('step')} has no saved checkpoint")
        return torch.load(self.directory / entry["checkpoint"], map_location="cpu", weights_only=True)

    # -- choosing --------------------------------------------------------------------------
    def pick(self, *, min_accuracy: float | None = None, max_sparsity: float | None = None,
             accuracy_key: str = "hard_accuracy") -> dict[str, Any]:
        """Choose a record.

        - `min_accuracy=a`: the sparsest record whose `accuracy_key` is >= a (ties: the more
          accurate, then the later).
        - `max_sparsity=s`: the most accurate record with sparsity <= s (ties: the sparser).
        - both: the sparsest record meeting both.
        Raises ValueError when no record qualifies, naming the best values available.
        """
        if min_accuracy is None and max_sparsity is None:
            raise ValueError("pick needs min_accuracy=, max_sparsity= or both")
        for name, bound in (("min_accuracy", min_accuracy), ("max_sparsity", max_sparsity)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                      or not math.isfinite(bound)):
                raise ValueError(f"{name} must be a finite number, got {bound!r}")
        if not self.records:
            raise ValueError("the trail is empty")
        accuracy_key = self.RENAMED.get(accuracy_key, accuracy_key)
        not_accuracies = ("step", "epoch", "sparsity", "compression", "flops")
        known = sorted({k for r in self.records for k, v in r.items()
                        if isinstance(v, (int, float)) and k not in not_accuracies})
        if accuracy_key not in known:
            raise ValueError(f"accuracy_key {accuracy_key!r} is not in the records; available: {known}")

        def acc(r):
            a = r.get(accuracy_key)
            return -math.inf if a is None else a

        ok = [r for r in self.records
              if (min_accuracy is None or acc(r) >= min_accuracy)
              and (max_sparsity is None or r["sparsity"] <= max_sparsity)]
        if not ok:
            best_acc = max(acc(r) for r in self.records)
            least = min(r["sparsity"] for r in self.records)
            wanted = " and ".join(([f"{accuracy_key} >= {min_accuracy}"] if min_accuracy is not None else [])
                                  + ([f"sparsity <= {max_sparsity}"] if max_sparsity is not None else []))
            raise ValueError(f"no record with {wanted}; "
                             f"the trail's best {accuracy_key} is {best_acc:.4f}, its lowest sparsity {least:.4f}")
        if min_accuracy is not None:
            return max(ok, key=lambda r: (r["sparsity"], acc(r), r["step"]))
        return max(ok, key=lambda r: (acc(r), r["sparsity"], r["step"]))
