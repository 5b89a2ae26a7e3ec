"""`python -m ltp_core.engine.bench`: the cost of an LTP training step, side by side with its peers.

In one process, interleaved (one step of each variant per round, in a shuffled order, so
drift, noise and what the previous step left in the caches hit every variant alike), it times
full training steps — forward, task loss (+ λ·soft-L0 for LTP), backward, optimizer step — and
reports the median of many:

- dense: the plain network;
- ltp: the same network with `ltp_core.LTP` attached, as a user gets it (every mask as
  compiled kernels, as the network has layers big enough; see `LTP(fused=...)`);
- ltp_eager: the same with `LTP(..., fused=False)` (the mask as plain eager ops);
- torch_prune: `torch.nn.utils.prune.global_unstructured` at 50% (a static mask multiplied in
  by a forward pre-hook), the usual peer for "what does a mask cost".

Presets: `cpu` — torchvision ResNet-18 at 32x32, batch 128, float32; `gpu` — ResNet-50 at
224x224, batch 256, bf16 autocast, channels_last. It prints a table, writes JSON, and reports
each variant's peak GPU memory (CUDA: what it allocates on top of the variants built before it)
and the time of `LTP.finalize()`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from ..core.ltp import LTP, prunable_layers
from ..io import atomic_write_bytes, standard_json
from ..kernels.denormals import flush_denormals
from ..models import torchvision_models

__all__ = ["PRESETS", "run_benchmark", "main"]

PRESETS = {
    "cpu": dict(model="resnet18", image_size=32, batch_size=128, device="cpu", amp=False, channels_last=False),
    "gpu": dict(model="resnet50", image_size=224, batch_size=256, device="cuda", amp=True, channels_last=True),
}
VARIANTS = ("dense", "ltp", "ltp_eager", "torch_prune")


def _model(name: str, device: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=1000 if name == "resnet50" else 10).to(device)


def _make_step(variant: str, cfg: dict, seed: int) -> tuple[Callable[[], None], nn.Module, LTP | None]:
    torch.manual_seed(seed)
    device = cfg["device"]
    model = _model(cfg["model"], device)
    if variant == "torch_prune":
        # Pruned before the layout change: global_unstructured flattens every weight with
        # .view(-1), which a channels_last weight refuses; .to() then converts weight_orig and
        # weight_mask alike, so the masked weight comes out channels_last as in the others.
        prune.global_unstructured([(m, "weight") for _, m in prunable_layers(model)],
                                  pruning_method=prune.L1Unstructured, amount=0.5)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ltp = None
    if variant in ("ltp", "ltp_eager"):
        ltp = LTP(model, temperature=0.05, lambda_=1.0, fused=False if variant == "ltp_eager" else None)
        with torch.no_grad():  # start where the torch-prune peer is: half the weights pruned
            for name, module in ltp.layers.items():
                ltp.thresholds[name].fill_(module.parametrizations.weight.original.pow(2).median())
        # A threshold lr this small keeps the run at that sparsity (the step costs the same at
        # any lr): a realistic one would prune nearly everything within the timed steps.
        params = ltp.param_groups(threshold_lr=1e-10)
    else:
        params = model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    num_classes = 1000 if cfg["model"] == "resnet50" else 10
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(cfg["batch_size"], 3, cfg["image_size"], cfg["image_size"], generator=g).to(device)
    if cfg["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(num_classes, (cfg["batch_size"],), generator=g).to(device)

    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if cfg["amp"]
                else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        if ltp is not None:
            loss = loss + ltp.regularizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model, ltp


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_benchmark(preset: str = "cpu", steps: int = 20, warmup: int = 10, seed: int = 0, **overrides) -> dict:
    """Time the variants interleaved (a shuffled order per round); returns a dict with
    per-variant medians (seconds), the ratios, peak memory (CUDA) and finalize time.
    `overrides` replace preset fields (model, image_size, batch_size, device, amp, channels_last)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    cfg = {**PRESETS[preset], **overrides}
    started = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    device = cfg["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("the gpu preset needs a CUDA GPU; none is available here")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for key in ("batch_size", "image_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {cfg[key]!r}")
    known = torchvision_models()
    if cfg["model"] not in known:
        close = difflib.get_close_matches(str(cfg["model"]), known, n=4, cutoff=0.6)
        raise ValueError(f"unknown model {cfg['model']!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                         + "; the benchmark builds torchvision's classification models: "
                         + ", ".join(m for m in known if m.startswith("resnet")) + ", ...")
    warmup = max(1, warmup)  # the first step compiles, allocates and measures peak memory
    flush_denormals()  # as fit and ltp-train do: denormal soft-masked weights are slow
    cuda = device.startswith("cuda")
    built = {}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peak: dict[str, float | None] = {v: None for v in VARIANTS}
    for v in VARIANTS:
        # Built and warmed up one at a time, so a variant's peak memory is its own: the most it
        # allocates (model, gradients, optimizer state, batch, activations) on top of what the
        # variants before it hold.
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() if cuda else 0
        built[v] = _make_step(v, cfg, seed)
        for _ in range(warmup):
            built[v][0]()
        _sync(device)
        if cuda:
            peak[v] = (torch.cuda.max_memory_allocated() - held) / 2**20
    order, rng = list(VARIANTS), random.Random(seed)
    for _ in range(steps):
        rng.shuffle(order)  # no variant always follows the same one (and what it left in the caches)
        for v in order:
            _sync(device)
            t0 = time.perf_counter()
            built[v][0]()
            _sync(device)
            times[v].append(time.perf_counter() - t0)
    median = {v: statistics.median(ts) for v, ts in times.items()}
    _, model, ltp = built["ltp"]
    compiled_layers = sum(mask.compiled for mask in ltp.masks.values())
    ltp_sparsity = ltp.sparsity()["total"]
    _sync(device)
    t0 = time.perf_counter()
    ltp.finalize()
    _sync(device)
    finalize_s = time.perf_counter() - t0
    result = {
        "preset": preset, "config": cfg, "steps": steps, "warmup": warmup,
        "median_step_s": median, "min_step_s": {v: min(ts) for v, ts in times.items()},
        "ratio_ltp_dense": median["ltp"] / median["dense"],
        "ratio_ltp_torch_prune": median["ltp"] / median["torch_prune"],
        "ratio_ltp_eager_dense": median["ltp_eager"] / median["dense"],
        "ratio_ltp_eager_torch_prune": median["ltp_eager"] / median["torch_prune"],
        "peak_memory_mib": peak,
        "memory_ratio_ltp_dense": (peak["ltp"] / peak["dense"]) if peak["dense"] else None,
        "memory_ratio_ltp_eager_dense": (peak["ltp_eager"] / peak["dense"]) if peak["dense"] else None,
        "ltp_compiled_layers": compiled_layers, "ltp_layers": len(ltp.layers),
        "finalize_s": finalize_s, "ltp_sparsity": ltp_sparsity,
        "date": datetime.date.today().isoformat(), "started": started, "commit": source_commit(),
        "torch": torch.__version__,
        "device_name": (torch.cuda.get_device_name() if device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
    }
    return result


def source_commit() -> str:
    """The short git commit of the checkout the benchmark runs from, '+dirty' when it has
    uncommitted changes to tracked files; 'unknown' outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "") if commit else "unknown"


def default_output(result: dict, custom: str = "") -> Path:
    """reports/benchmarks/<start time>-<commit>-<preset><custom>.json: one file per run, never
    overwritten by a later one."""
    return Path("reports/benchmarks") / f"{result['started']}-{result['commit']}-{result['preset']}{custom}.json"


def format_table(r: dict) -> str:
    c = r["config"]
    head = (f"{c['model']} {c['image_size']}x{c['image_size']} batch {c['batch_size']} on {r['device_name']} "
            f"({'bf16 autocast, ' if c['amp'] else ''}{'channels_last, ' if c['channels_last'] else ''}"
            f"torch {r['torch']}, median of {r['steps']} interleaved steps)")
    lines = [head, "", "| variant | median step (ms) | vs dense | peak memory (MiB) |", "|---|---|---|---|"]
    for v in VARIANTS:
        mem = r["peak_memory_mib"][v]
        step = r["median_step_s"][v]
        lines.append(f"| {v} | {1e3 * step:.1f} | {step / r['median_step_s']['dense']:.3f} "
                     f"| {'-' if mem is None else f'{mem:.0f}'} |")
    lines += ["", f"LTP / dense = {r['ratio_ltp_dense']:.3f}, LTP / torch-prune = {r['ratio_ltp_torch_prune']:.3f}; "
                  f"eager mask: {r['ratio_ltp_eager_dense']:.3f} and {r['ratio_ltp_eager_torch_prune']:.3f}; "
                  f"{r['ltp_compiled_layers']} of {r['ltp_layers']} layers compiled; "
                  f"LTP sparsity {r['ltp_sparsity']:.2f}; "
                  f"finalize() = {1e3 * r['finalize_s']:.1f} ms"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ltp_core.engine.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first (allocator, caches; "
                   "at least 1)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--model")
    p.add_argument("--output", type=Path, help="JSON file (default reports/benchmarks/<time>-<commit>-<preset>.json, "
                   "with the settings in the name when --batch-size, --image-size or --model change them or --steps "
                   "or --warmup are below their defaults)")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("image_size", args.image_size),
                                   ("model", args.model)) if v is not None}
    try:
        result = run_benchmark(args.preset, args.steps, args.warmup, **overrides)
    except (ValueError, RuntimeError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    # Every run gets a file of its own (start time and commit in the name); other sizes and shorter
    # runs also carry their settings, so a quick run is never mistaken for the preset's report.
    short = {k: v for k, v in (("steps", args.steps), ("warmup", args.warmup)) if v < p.get_default(k)}
    named = {**overrides, **short}
    custom = "" if not named else "-" + "-".join(f"{k}{v}" for k, v in sorted(named.items()))
    out = args.output or default_output(result, custom)
    atomic_write_bytes(out, standard_json(result))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
