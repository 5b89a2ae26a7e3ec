"""The dense-vs-CSR timing sweep (`ltp_core.teaching.deploy_demo`): exact sparsities, one row
per setting, CSR outputs equal to dense ones, and sentences that follow the measured table."""
from __future__ import annotations

import pytest
import torch

from ltp_core.teaching.deploy_demo import csr_timing_sweep, random_sparse_linear, timing_summary


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_random_sparse_linear_has_exactly_the_asked_sparsity(sparsity):
    layer = random_sparse_linear(40, sparsity, torch.Generator().manual_seed(0))
    assert int((layer.weight == 0).sum()) == round(sparsity * 1600)


def test_random_sparse_linear_refuses_a_sparsity_outside_0_1():
    with pytest.raises(ValueError, match="sparsity"):
        random_sparse_linear(8, 1.5, torch.Generator())


def test_csr_timing_sweep_gives_one_row_per_setting_with_dense_outputs():
    rows = csr_timing_sweep(64, sparsities=[0.5, 0.99], batches=[1, 8], repeats=2, seed=0)
    assert [(r["sparsity"], r["batch"]) for r in rows] == [(0.5, 1), (0.5, 8), (0.99, 1), (0.99, 8)]
    for r in rows:
        assert r["dense_us"] > 0 and r["csr_us"] > 0
        assert r["speedup"] == pytest.approx(r["dense_us"] / r["csr_us"])
        assert r["max_abs_diff"] < 1e-5                 # CSR computes the dense layer's function


def test_timing_summary_words_follow_the_table():
    rows = [{"features": 256, "sparsity": s, "batch": b, "speedup": v}
            for s, b, v in [(0.99, 1, 2.5), (0.5, 1, 0.4), (0.5, 64, 0.9), (0.99, 64, 0.8), (0.5, 256, 1.2)]]
    lines = timing_summary(rows)
    assert lines == ["256x256 layer, batch 1: CSR faster than dense at sparsity 0.99 (2.50x); "
                     "not faster at 0.5 (0.40x).",
                     "256x256 layer, batch 64: CSR not faster than dense at any swept sparsity: "
                     "0.5 (0.90x), 0.99 (0.80x).",
                     "256x256 layer, batch 256: CSR faster than dense at every swept sparsity: 0.5 (1.20x)."]
