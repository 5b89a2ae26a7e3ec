"""Pick a network from the trail of an `ltp-train` run: `python -m ltp_core.deploy.pick`.

    python -m ltp_core.deploy.pick runs/digits-mlp-ltp --list
    python -m ltp_core.deploy.pick runs/digits-mlp-ltp --max-drop 0.01 --out picked.pth
    python -m ltp_core.deploy.pick runs/digits-mlp-ltp --min-accuracy 0.9 --out picked.ltps --sparse
    python -m ltp_core.deploy.pick runs/imagenet-resnet50-ltp --max-sparsity 0.8 --key hard_top5

A run's output folder holds `trail.json` (one record per evaluation) and a hard-pruned
checkpoint per record (`trail/step_*.pt`, plain state_dicts). A run made with
`--val-fraction` measured its trail on validation images carved from training, and its test
split as `soft_test_*` / `hard_test_*`: the choice is made on the former, and the chosen
record's test accuracy is printed beside it (a test key cannot be `--key`). The rule is
`Trail.pick`'s:

- `--min-accuracy A`: the sparsest network whose accuracy (`--key`, default the hard-pruned
  top-1 `hard_accuracy`) is at least A;
- `--max-drop D`: the same with A = the first record's accuracy - D (the first record is
  the network the run started from, e.g. the dense pretrained one);
- `--max-sparsity S`: the most accurate network with sparsity at most S;
- a sparsity and an accuracy bound together: the sparsest network meeting both.

It prints the chosen record (`--json`: the whole record as JSON) and, with `--out`, writes its
plain state_dict there (`torch.save`, or the compact `ltp_core.export.save_sparse` format with
`--sparse`), atomically. Only records with a saved checkpoint are candidates then. Exit
status: 0 chosen, 2 bad input or no record qualifies (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..core.trail import Trail, format_compression
from ..io import atomic_save, write_target

__all__ = ["pick_record", "pick_checkpoint", "format_record", "main", "PROG"]

PROG = "ltp-pick"
DEFAULT_KEY = "hard_accuracy"


def _accuracy_keys(trail: Trail) -> list[str]:
    """Keys whose values are numbers in [0, 1] in some record (accuracies, top-1/top-5)."""
    keys = set()
    for r in trail.records:
        for k, v in r.items():
            if k not in ("sparsity", "epoch", "step", "compression") and isinstance(v, (int, float)) \
                    and not isinstance(v, bool) and 0.0 <= v <= 1.0 and ("accuracy" in k or "top" in k):
                keys.add(k)
    return sorted(keys)


def pick_record(trail: Trail, *, min_accuracy: float | None = None, max_drop: float | None = None,
                max_sparsity: float | None = None, accuracy_key: str = DEFAULT_KEY,
                need_checkpoint: bool = False) -> dict[str, Any]:
    """The record `Trail.pick` chooses (see the module docstring), with `max_drop` measured
    from the first record and, if `need_checkpoint`, among records with a saved checkpoint.
    Raises ValueError naming what is wrong or what the trail offers."""
    if min_accuracy is not None and max_drop is not None:
        raise ValueError("give min_accuracy or max_drop, not both")
    if min_accuracy is None and max_drop is None and max_sparsity is None:
        raise ValueError("give min_accuracy, max_drop or max_sparsity (see --help)")
    for name, value in (("min_accuracy", min_accuracy), ("max_drop", max_drop), ("max_sparsity", max_sparsity)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    if not trail.records:
        raise ValueError("the trail is empty")
    accuracy_key = Trail.RENAMED.get(accuracy_key, accuracy_key)  # an earlier version's name (hard_top1)
    keys = _accuracy_keys(trail)
    if "_test_" in accuracy_key:
        raise ValueError(f"accuracy key {accuracy_key!r} is the test split's: it is reported, not chosen on; "
                         f"choose on a validation key: {[k for k in keys if '_test_' not in k]}")
    if accuracy_key not in keys:
        raise ValueError(f"accuracy key {accuracy_key!r} is not in the trail's records; available: {keys}")
    records = trail.records
    if need_checkpoint:
        records = [r for r in records if r.get("checkpoint")]
        if not records:
            raise ValueError("no record of this trail has a saved checkpoint (was the run made with "
                             "--no-trail-checkpoints?)")
    if max_drop is not None:
        start = trail.records[0].get(accuracy_key)
        if start is None:
            raise ValueError(f"the first record has no {accuracy_key}; give min_accuracy instead of max_drop")
        min_accuracy = start - max_drop
    view = Trail(trail.directory, records=records)
    return view.pick(min_accuracy=min_accuracy, max_sparsity=max_sparsity, accuracy_key=accuracy_key)


def pick_checkpoint(output_dir: str | os.PathLike, **rule: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(record, plain state_dict) of the network `pick_record(**rule)` chooses from the run in
    `output_dir` (the folder holding trail.json), among the records with a checkpoint."""
    trail = Trail.load(output_dir)
    record = pick_record(trail, need_checkpoint=True, **rule)
    path = trail.directory / record["checkpoint"]
    if not path.is_file():
        raise FileNotFoundError(f"the record at step {record['step']} names {path}, which does not exist")
    try:
        state = trail.load_checkpoint(record)
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {detail})") from None
    return record, state


def format_record(record: dict[str, Any], accuracy_key: str = DEFAULT_KEY) -> str:
    """One line: step, epoch, sparsity (compression), the accuracy key, soft accuracy."""
    parts = [f"step {record['step']}", f"epoch {record['epoch']:g}",
             f"sparsity {record['sparsity']:.4f} ({format_compression(record.get('compression'))})"]
    acc = record.get(accuracy_key)
    parts.append(f"{accuracy_key} {acc:.4f}" if isinstance(acc, (int, float)) else f"{accuracy_key} -")
    if accuracy_key != "soft_accuracy" and isinstance(record.get("soft_accuracy"), (int, float)):
        parts.append(f"soft_accuracy {record['soft_accuracy']:.4f}")
    test = accuracy_key.replace("_", "_test_", 1) if accuracy_key.count("_") else ""
    if isinstance(record.get(test), (int, float)):
        parts.append(f"{test} {record[test]:.4f} (test split, reported)")
    return "  ".join(parts)


def _finite(text: str) -> float:
    # argparse names the flag in front of this message
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise ValueError(f"{message} (see {PROG} --help)")

    p = Parser(prog=PROG, description="Choose a hard-pruned network from the trail of an ltp-train run.")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's folder (holding trail.json)")
    p.add_argument("--min-accuracy", type=_finite, metavar="A", help="the sparsest network with accuracy >= A")
    p.add_argument("--max-drop", type=_finite, metavar="D",
                   help="the sparsest network within D of the first record's accuracy")
    p.add_argument("--max-sparsity", type=_finite, metavar="S", help="the most accurate network with sparsity <= S")
    p.add_argument("--key", default=DEFAULT_KEY, metavar="KEY",
                   help=f"the accuracy compared (default {DEFAULT_KEY}, the hard-pruned top-1; e.g. hard_top5, "
                        "soft_accuracy)")
    p.add_argument("--out", metavar="PATH", help="write the chosen network's plain state_dict here")
    p.add_argument("--sparse", action="store_true", help="write --out in the compact ltp-sparse format "
                   "(ltp_core.export.load_sparse reads it) instead of torch.save")
    p.add_argument("--list", action="store_true", help="print every record of the trail first")
    p.add_argument("--json", action="store_true", help="print the chosen record as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m ltp_core.deploy.pick` (`ltp-pick`): returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        args.key = Trail.RENAMED.get(args.key, args.key)  # an earlier version's name (hard_top1)
        if args.out is not None and not args.out.strip():
            raise ValueError("--out is empty; give a file path")
        if args.sparse and not args.out:
            raise ValueError("--sparse says how to write --out; give --out PATH too")
        trail = Trail.load(args.output_dir)
        if args.out:
            out, run = Path(args.out).resolve(), Path(args.output_dir).resolve()
            if out in (run / "trail.json", run / "checkpoint.pth", run / "args.yaml") or out.parent == run / "trail":
                raise ValueError(f"--out {args.out} is one of the run's own files; write the network elsewhere")
            write_target(out)  # a file where a folder of --out should be: one line, before any work
        if args.list:
            for r in trail.records:
                print(format_record(r, args.key) + ("" if r.get("checkpoint") else "  (no checkpoint)"))
        rule = {"min_accuracy": args.min_accuracy, "max_drop": args.max_drop, "max_sparsity": args.max_sparsity}
        if args.list and all(v is None for v in rule.values()):
            return 0
        if not args.out:
            record = pick_record(trail, accuracy_key=args.key, **rule)
        else:
            record, state = pick_checkpoint(args.output_dir, accuracy_key=args.key, **rule)
            if args.sparse:
                from .sparse_file import save_sparse

                save_sparse(state, args.out)
            else:
                atomic_save(state, Path(args.out))
        if args.json:
            print(json.dumps(record, default=float))
        else:
            print(f"picked {format_record(record, args.key)}" + (f"  -> {args.out}" if args.out else ""))
        return 0
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
