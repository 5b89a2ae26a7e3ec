"""The ImageNet runs of notebook 07: from settings to `ltp-train` commands, and their trails to a results table.

    from ltp_core.teaching.imagenet_runs import describe_setting, run_settings, plan_run, launch

A run of the paper's ImageNet experiment is: an ImageNet folder, a starting network (a
pretrained weight file), one `torchrun ... -m ltp_core.engine.train --method ltp ...` command,
and the trail that command writes. The steps, one function each:

- `describe_setting(data_path, pretrained_dir)`: what the runs can show. Only real ImageNet
  *and* pretrained weights make a rerun of the paper; anything else is a pipeline check, and
  every table, plot and metrics.json says so.
- `imagenet_folder(...)`, `starting_weights(...)`: the data and the starting weights (a tiny
  generated sample and random stand-ins when none are given; nothing is downloaded).
- `run_settings(...)`, `plan_run(...)`: the `ltp-train` settings of one network (with the paper's
  compression imposed when asked) and its command, checked to parse back to those settings.
- `launch(command, cwd)`: run the command, its log streamed.
- `expected_records`, `check_checkpoint`, `trail_rows`: what to read in a trail.
- `top5_at_compression`, `results_row`, `results_markdown`: our figures beside the paper's.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..engine.config import make_config
from .paper import DENSE_REFERENCE, PAPER_RESULTS, markdown_table, min_image_size
from .runs import (
    command_config,
    display_path,
    format_command,
    prepare_run_dir,
    resolve_path,
    sample_maker,
    train_command,
)

__all__ = ["PIPELINE_CHECK", "describe_setting", "imagenet_folder", "starting_weights", "run_settings", "plan_run",
           "launch", "expected_records", "check_checkpoint", "trail_rows", "top5_at_compression", "results_row",
           "results_markdown"]

PIPELINE_CHECK = "pipeline check"


# -- what the runs are -----------------------------------------------------------------------

def describe_setting(data_path: str | os.PathLike | None, pretrained_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What a set of runs can be compared with.

    A pruned network is comparable with the paper's only when it was pruned on real ImageNet
    from the pretrained weights the paper starts from. A random network pruned on real ImageNet
    is no more "ImageNet LTP" than one pruned on the tiny sample: both are pipeline checks.
    Returns {"pipeline_check": bool, "data": ..., "weights": ..., "label": one line for titles}.
    """
    data = "ImageNet folder" if data_path else "tiny generated sample"
    weights = "pretrained weight files" if pretrained_dir else "random stand-in weights"
    check = not (data_path and pretrained_dir)
    label = f"{PIPELINE_CHECK} ({data}, {weights})" if check else f"ImageNet, {weights}"
    return {"pipeline_check": check, "data": data, "weights": weights, "label": label}


def imagenet_folder(data_path: str | os.PathLike | None, sample_dir: str | os.PathLike, *, classes: int = 10,
                    train_per_class: int = 16, val_per_class: int = 8, seed: int = 0) -> Path:
    """The ImageNet folder (`train/<wnid>/*`, `val/<wnid>/*`): `data_path` when given, else a tiny
    sample of 32x32 JPEGs in that layout written afresh to `sample_dir` (a pipeline check: the
    real loader runs, the images say nothing about ImageNet)."""
    if data_path:
        return resolve_path(data_path)
    shutil.rmtree(sample_dir, ignore_errors=True)  # no stale images of an older run
    return sample_maker().make_tiny_imagenet(sample_dir, num_classes=classes, train_per_class=train_per_class,
                                             val_per_class=val_per_class, image_size=32, seed=seed)


def starting_weights(models: Iterable[str], pretrained_dir: str | os.PathLike | None,
                     standin_dir: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """{model: weight file} the runs start from.

    With `pretrained_dir`: its `<model>.pth` state_dicts (FileNotFoundError naming how to save
    them when one is missing; nothing is downloaded). Without: random stand-ins written to
    `standin_dir` in torchvision's file format (a plain state_dict with a 1000-class head), so the
    `--pretrained` path of ltp-train runs exactly as with real weights."""
    import torch

    from ..io import atomic_save
    from ..models import get_model

    models = list(models)
    if pretrained_dir:
        folder = resolve_path(pretrained_dir)
        missing = [m for m in models if not (folder / f"{m}.pth").is_file()]
        if missing:
            m = missing[0]
            timm = m in PAPER_RESULTS and PAPER_RESULTS[m].source == "timm"
            maker = (f"timm.create_model('{m}', pretrained=True)" if timm
                     else f"torchvision.models.get_model('{m}', weights='IMAGENET1K_V1')")
            raise FileNotFoundError(f"no weights for {missing} in {folder}: save them on a machine with network "
                                    f"access, e.g. torch.save({maker}.state_dict(), '{folder / m}.pth')")
        return {m: folder / f"{m}.pth" for m in models}
    weights = {}
    for m in models:
        torch.manual_seed(seed)
        weights[m] = Path(standin_dir) / f"{m}.pth"
        atomic_save(get_model(m, 1000).state_dict(), weights[m])
    return weights


# -- the commands ------------------------------------------------------------------------------

def run_settings(model: str, data: str | os.PathLike, weights: str | os.PathLike, shared: Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None, *, image_size: int = 32,
                 impose_paper: bool = False) -> dict[str, Any]:
    """The `ltp-train` settings (TrainConfig names) of one network's LTP run.

    Crops follow torchvision's reference recipe: train at `image_size` (or the least the network
    runs on), validate by resizing to size * 256/224 and center-cropping `size`. `shared` holds
    the settings of every network, `overrides` this network's. With `impose_paper` and a paper
    figure on record, `target_sparsity` = 1 - 1/compression: a controller then holds the run at
    the paper's compression, so the compression is imposed, not learned, and the comparison
    becomes top-5 at equal compression."""
    size = max(image_size, min_image_size(model))
    settings = {"dataset": "imagenet", "data_path": display_path(data), "train_crop_size": size,
                "val_resize_size": int(round(size * 256 / 224)), "val_crop_size": size, "model": model,
                "pretrained": display_path(weights), "method": "ltp", **shared, **(overrides or {})}
    paper = PAPER_RESULTS.get(model)
    if impose_paper and paper is not None and paper.on_record:
        settings["target_sparsity"] = round(paper.sparsity, 4)
    return settings


def plan_run(settings: Mapping[str, Any], folder: str | os.PathLike, *, nproc_per_node: int | str = 1,
             existing_runs: str = "overwrite") -> dict[str, Any]:
    """One run, ready to launch: {"settings", "command", "state", "folder", "parses_back"}.

    The run writes to `folder`; `state` says what `prepare_run_dir` made of an earlier run there
    ("fresh", "resume": continued with --resume auto, "done": reused). `parses_back` is whether
    `ltp-train`'s own parser reads the command back to exactly `settings`: what is printed is
    what runs."""
    folder = Path(folder)
    settings = {**settings, "output_dir": display_path(folder), "progress": False}
    state = prepare_run_dir(folder, make_config(**{**settings, "output_dir": str(folder)}), existing_runs)
    settings["resume"] = "auto" if state == "resume" else None
    command = train_command(settings, nproc_per_node=nproc_per_node)
    return {"settings": settings, "command": command, "state": state, "folder": folder,
            "parses_back": command_config(command) == make_config(**settings)}


def launch(command: Sequence[str], cwd: str | os.PathLike, *, num_threads: int = 1,
           echo: Callable[[str], Any] = lambda line: print(line, end="")) -> float:
    """Run a `train_command` from `cwd` (the repository root), each line of its log passed to
    `echo`; return its wall time in seconds. `torchrun` is taken from this Python's environment,
    each process gets OMP_NUM_THREADS=num_threads, and torchrun variables of an enclosing job are
    dropped so the run starts its own. RuntimeError with the exit status when it fails."""
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    argv = [*launcher, *command[1:]] if command[0] == "torchrun" else list(command)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LTP_TRACEBACK")}
    env["OMP_NUM_THREADS"] = str(num_threads)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    for line in proc.stdout:
        echo(line)
    if proc.wait() != 0:
        raise RuntimeError(f"the run failed with exit status {proc.returncode} (its log is above): "
                           f"{' '.join(command)}")
    return time.perf_counter() - start


# -- reading a trail ---------------------------------------------------------------------------

def expected_records(epochs: int, eval_every: int = 1) -> int:
    """How many records an ltp-train trail of `epochs` epochs holds: the starting network, then
    one every `eval_every` epochs and one after the last epoch."""
    return 1 + sum(1 for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs)


def check_checkpoint(trail, entry: Mapping[str, Any], model: str, num_classes: int) -> dict[str, Any]:
    """Load the hard-pruned checkpoint of trail record `entry` into a plain `model` network.

    Returns {"strict": its keys are exactly the network's (no missing, no unexpected one),
    "zero_fraction": the fraction of exactly-zero weights over the layers the record lists,
    "sparsity_error": its distance from the record's sparsity}: a deployed network is this
    file, so its zeros must be the pruning the trail reports. (Loaded with strict=False so a
    key mismatch is reported, not raised; a tensor of the wrong shape still raises.)"""
    from ..core.layers import prunable_layers, zero_fractions
    from ..models import get_model

    net = get_model(model, num_classes)
    load = net.load_state_dict(trail.load_checkpoint(entry), strict=False)
    layers = {n: m for n, m in prunable_layers(net) if n in entry["layer_sparsity"]}
    zeros = zero_fractions(layers)["total"]
    return {"strict": not load.missing_keys and not load.unexpected_keys, "zero_fraction": zeros,
            "sparsity_error": abs(zeros - entry["sparsity"])}


def trail_rows(trail: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The columns of a trail worth reading, one row per record: where the run was (epoch,
    step), how much it pruned (sparsity, compression, FLOPs relative to the first record) and
    what the hard-pruned network scores (top-1, top-5)."""
    records = list(trail)
    dense_flops = records[0]["flops"] if records else None
    return [{"epoch": r["epoch"], "step": r["step"], "sparsity": r["sparsity"], "compression": r["compression"],
             "FLOPs / start": r["flops"] / dense_flops if dense_flops else None,
             "hard top-1": r["hard_accuracy"], "hard top-5": r.get("hard_top5")} for r in records]


# -- beside the paper --------------------------------------------------------------------------

def top5_at_compression(trail: Iterable[Mapping[str, Any]], compression: float, tolerance: float = 0.02) -> float:
    """Our hard top-5 at the paper's compression: the best hard top-5 among the trail's records
    compressed at least (1 - tolerance) * compression (a run held at a target settles just below
    it). NaN when the run never got that far, so a comparison with it fails."""
    at = [r["hard_top5"] for r in trail if r["compression"] >= (1 - tolerance) * compression]
    return max(at) if at else math.nan


def results_row(model: str, trail: Sequence[Mapping[str, Any]], settings: Mapping[str, Any],
                setting: Mapping[str, Any]) -> dict[str, Any]:
    """One network, the paper's figures beside ours (fractions and ratios, None where the paper
    has none). "compression source" says whether our compression was imposed (target_sparsity)
    or learned; "weights" and "data" say what our numbers come from."""
    paper, dense = PAPER_RESULTS.get(model), DENSE_REFERENCE.get(model)
    first, last = trail[0], trail[-1]
    imposed = settings.get("target_sparsity") is not None
    return {"network": model, "data": setting["data"], "weights": setting["weights"],
            "pipeline check": setting["pipeline_check"],
            "paper compression": paper and paper.compression, "our compression": last["compression"],
            "compression source": (f"imposed: target_sparsity {settings['target_sparsity']}" if imposed
                                   else "learned"),
            "paper top-5": paper and paper.top5, "our top-5": last["hard_top5"],
            "our top-5 at paper compression": (top5_at_compression(trail, paper.compression)
                                               if paper and paper.on_record else None),
            "dense top-5 (torchvision)": dense and dense.top5, "our starting top-5": first["hard_top5"],
            "our top-1": last["hard_accuracy"], "sparsity": last["sparsity"], "epochs": last["epoch"]}


def _pct(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def results_markdown(rows: Sequence[Mapping[str, Any]], commands: Mapping[str, Sequence[str]], title: str) -> str:
    """The results table as markdown: per network the paper's compression and top-5 beside ours,
    our compression marked "(imposed: target ...)" when a target held it there, the weights and data ours
    come from beside each ("pipeline check: ..." unless real ImageNet and pretrained weights),
    then the command of every run."""
    table = []
    for r in rows:
        target = r["compression source"].removeprefix("imposed: target_sparsity ")
        imposed = f" (imposed: target {1 / (1 - float(target)):.2f}x)" if target != r["compression source"] else ""
        source = ("pipeline check: " if r["pipeline check"] else "") + f"{r['weights']}, {r['data']}"
        table.append({"network": r["network"], "ours from": source,
                      "paper compression": r["paper compression"] and f"{r['paper compression']:g}x",
                      "our compression": f"{r['our compression']:.2f}x{imposed}",
                      "paper top-5": _pct(r["paper top-5"]), "our top-5": _pct(r["our top-5"]),
                      "our top-5 at paper compression": _pct(r["our top-5 at paper compression"]),
                      "dense top-5 (torchvision)": _pct(r["dense top-5 (torchvision)"]),
                      "our starting top-5": _pct(r["our starting top-5"]), "epochs": r["epochs"]})
    lines = [f"# {title}", "", markdown_table(table), "## Commands", "", "Run from the repository root:", ""]
    for model, command in commands.items():
        lines += [f"**{model}**", "", "```", format_command(command), "```", ""]
    return "\n".join(lines)
