"""`python -m ltp_core.engine.bench` runs end to end (one tiny step per variant; no timing asserted)."""
import json
import re

import pytest
import torch

from ltp_core.engine import bench
from ltp_core.kernels.fused import fused_kernels_work


def test_bench_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    code = bench.main(["--preset", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "2",
                       "--image-size", "16", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for variant in bench.VARIANTS:
        assert f"| {variant} |" in printed
    result = json.loads(out.read_text())
    assert set(result["median_step_s"]) == set(bench.VARIANTS)
    assert all(t > 0 for t in result["median_step_s"].values())
    med = result["median_step_s"]
    assert result["ratio_ltp_dense"] == pytest.approx(med["ltp"] / med["dense"])
    assert result["ratio_ltp_eager_torch_prune"] == pytest.approx(med["ltp_eager"] / med["torch_prune"])
    # ResNet-18 has layers of >= 65536 weights, so all 21 masks run the compiled kernels.
    compiled = 21 if fused_kernels_work("cpu") else 0
    assert (result["ltp_compiled_layers"], result["ltp_layers"]) == (compiled, 21)
    assert result["finalize_s"] > 0 and result["torch"] and result["date"]
    assert result["peak_memory_mib"]["dense"] is None  # CPU: no peak memory


def test_bench_rejects_bad_input(capsys):
    assert bench.main(["--preset", "cpu", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert bench.main(["--preset", "cpu", "--batch-size", "0"]) == 2
    assert "batch_size must be an integer >= 1, got 0" in capsys.readouterr().err
    assert bench.main(["--preset", "cpu", "--model", "resnet81"]) == 2
    assert "unknown model 'resnet81' (did you mean resnet18" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tpu"])
    if not torch.cuda.is_available():
        assert bench.main(["--preset", "gpu"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def _tiny_gpu_preset(device: str) -> dict:
    # The gpu preset's settings (bf16 autocast, channels_last) on a small model and input.
    return bench.run_benchmark("gpu", steps=1, warmup=1, device=device, model="resnet18", batch_size=2,
                               image_size=16)


def test_bench_gpu_preset_settings_run_on_cpu():
    # bf16 autocast and channels_last through every variant (torch-prune's global pruning
    # flattens weights with .view(-1), which a channels_last weight refuses).
    result = _tiny_gpu_preset("cpu")
    assert result["config"]["amp"] and result["config"]["channels_last"]
    assert all(t > 0 for t in result["median_step_s"].values())
    assert result["ltp_layers"] == 21


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_gpu_preset_runs_on_cuda_and_reports_peak_memory():
    result = _tiny_gpu_preset("cuda")
    assert all(result["peak_memory_mib"][v] > 0 for v in bench.VARIANTS)
    assert result["memory_ratio_ltp_dense"] == pytest.approx(
        result["peak_memory_mib"]["ltp"] / result["peak_memory_mib"]["dense"])
    assert result["ltp_compiled_layers"] == (21 if fused_kernels_work("cuda") else 0)
    assert result["device_name"] == torch.cuda.get_device_name()


def test_a_small_run_is_named_by_its_time_commit_and_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--steps", "1", "--warmup", "0", "--batch-size", "2", "--image-size", "16"]) == 0
    written = list((tmp_path / "reports" / "benchmarks").iterdir())
    result = json.loads(written[0].read_text())
    assert [p.name for p in written] == [
        f"{result['started']}-{result['commit']}-cpu-batch_size2-image_size16-steps1-warmup0.json"]
    assert result["warmup"] == 1  # the step it did take
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d{6}", result["started"])
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?|unknown", result["commit"])


def test_every_run_keeps_its_own_file(tmp_path, monkeypatch, capsys):
    tiny = bench.run_benchmark("cpu", steps=1, warmup=1, batch_size=2, image_size=16)
    runs = iter([{**tiny, "started": f"2026-12-02T10000{i}"} for i in range(3)])
    monkeypatch.setattr(bench, "run_benchmark", lambda *args, **kwargs: next(runs))
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--steps", "1", "--warmup", "0"]) == 0
    assert bench.main(["--steps", "25"]) == 0
    assert bench.main(["--steps", "25"]) == 0  # the same settings again: a second file, none replaced
    names = sorted(p.name for p in (tmp_path / "reports" / "benchmarks").iterdir())
    commit = tiny["commit"]
    assert names == [f"2026-12-02T100000-{commit}-cpu-steps1-warmup0.json", f"2026-12-02T100001-{commit}-cpu.json",
                     f"2026-12-02T100002-{commit}-cpu.json"]
