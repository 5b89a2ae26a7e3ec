"""Dense against CSR inference of one Linear layer, swept over sparsity and batch size, and told in words.

torch's CSR product skips the zeros, but pays for its index bookkeeping: whether it beats the
dense BLAS product depends on the layer size, the sparsity, the batch and the machine. So the
notebooks measure it rather than state it:

    rows = csr_timing_sweep(1024, sparsities=[0.5, 0.8, 0.95, 0.99], batches=[1, 64])
    print("\\n".join(timing_summary(rows)))      # sentences computed from the measured table
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..deploy.export import compare_inference, to_sparse_inference

__all__ = ["random_sparse_linear", "csr_timing_sweep", "timing_summary"]


@torch.no_grad()
def random_sparse_linear(features: int, sparsity: float, generator: torch.Generator) -> nn.Linear:
    """A square `nn.Linear(features, features)` with exactly round(sparsity * features**2) of its
    weights set to 0, at uniformly random places (an unstructured mask, like LTP's)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1], got {sparsity!r}")
    layer = nn.Linear(features, features)
    n = layer.weight.numel()
    pruned = torch.randperm(n, generator=generator)[:round(sparsity * n)]
    layer.weight.view(-1)[pruned] = 0.0
    return layer


def csr_timing_sweep(features: int, sparsities: Sequence[float], batches: Sequence[int], *, repeats: int = 20,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Time a random sparse `features` x `features` Linear layer dense and as CSR
    (`to_sparse_inference`), for every sparsity and batch size.

    One row per (sparsity, batch): `dense_us` and `csr_us`, the medians of `repeats` alternating
    timings (`compare_inference`, in microseconds), `speedup` = dense / CSR (> 1: CSR faster)
    and `max_abs_diff`, the largest |dense output - CSR output| on that batch of random inputs.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for sparsity in sparsities:
        dense = nn.Sequential(random_sparse_linear(features, sparsity, generator))
        csr = to_sparse_inference(dense, min_sparsity=0.0)
        for batch in batches:
            x = torch.randn(batch, features, generator=generator)
            s = compare_inference(dense, csr, x, repeats=repeats)
            rows.append({"features": features, "sparsity": float(sparsity), "batch": int(batch),
                         "dense_us": s["dense_s"] * 1e6, "csr_us": s["sparse_s"] * 1e6, "speedup": s["speedup"],
                         "max_abs_diff": s["max_abs_diff"]})
    return rows


def timing_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per batch size saying at which swept sparsities CSR was faster (speedup > 1)
    and at which it was not, with the measured speedups: the words come from the table only."""
    lines = []
    for batch in sorted({r["batch"] for r in rows}):
        mine = sorted((r for r in rows if r["batch"] == batch), key=lambda r: r["sparsity"])
        faster = [f"{r['sparsity']:g} ({r['speedup']:.2f}x)" for r in mine if r["speedup"] > 1.0]
        slower = [f"{r['sparsity']:g} ({r['speedup']:.2f}x)" for r in mine if r["speedup"] <= 1.0]
        head = f"{mine[0]['features']}x{mine[0]['features']} layer, batch {batch}: CSR"
        if not faster:
            lines.append(f"{head} not faster than dense at any swept sparsity: {', '.join(slower)}.")
        elif not slower:
            lines.append(f"{head} faster than dense at every swept sparsity: {', '.join(faster)}.")
        else:
            lines.append(f"{head} faster than dense at sparsity {', '.join(faster)}; "
                         f"not faster at {', '.join(slower)}.")
    return lines
