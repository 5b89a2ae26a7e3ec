"""The ImageNet runs of notebook 07: settings, commands, trails, and the table beside the paper."""
import math
import sys

import pytest
import torch

from ltp_core import Trail
from ltp_core.models import get_model
from ltp_core.teaching.imagenet_runs import (
    PIPELINE_CHECK,
    check_checkpoint,
    describe_setting,
    expected_records,
    imagenet_folder,
    launch,
    plan_run,
    results_markdown,
    results_row,
    run_settings,
    starting_weights,
    top5_at_compression,
    trail_rows,
)
from ltp_core.teaching.paper import PAPER_RESULTS
from ltp_core.teaching.runs import command_config


@pytest.mark.parametrize("data, weights, check", [("", "", True), ("data/imagenet", "", True),
                                                  ("", "data/weights", True),
                                                  ("data/imagenet", "data/weights", False)])
def test_only_imagenet_with_pretrained_weights_is_not_a_pipeline_check(data, weights, check):
    setting = describe_setting(data, weights)
    assert setting["pipeline_check"] is check
    assert setting["label"].startswith(PIPELINE_CHECK) is check
    assert ("random stand-in" in setting["label"]) is (not weights)


def test_imagenet_folder_writes_the_sample_only_without_data_path(tmp_path):
    given = tmp_path / "imagenet"
    assert imagenet_folder(given, tmp_path / "sample") == given.resolve()
    assert not (tmp_path / "sample").exists()
    sample = imagenet_folder("", tmp_path / "sample", classes=3, train_per_class=2, val_per_class=1)
    assert sorted(p.name for p in (sample / "train").iterdir()) == ["n00000000", "n00000001", "n00000002"]
    assert len(list((sample / "val").rglob("*.JPEG"))) == 3


def test_starting_weights_are_stand_ins_or_the_given_files(tmp_path):
    standin = starting_weights(["small_cnn"], "", tmp_path / "standin", seed=0)["small_cnn"]
    state = torch.load(standin, weights_only=True)
    get_model("small_cnn", 1000).load_state_dict(state)  # torchvision's format: a 1000-class head
    again = torch.load(starting_weights(["small_cnn"], "", tmp_path / "again", seed=0)["small_cnn"], weights_only=True)
    assert all(torch.equal(state[k], again[k]) for k in state)  # the seed fixes the stand-in
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1"):
        starting_weights(["resnet50"], folder, tmp_path / "unused")
    (folder / "resnet50.pth").write_bytes(b"")
    assert starting_weights(["resnet50"], folder, tmp_path / "unused") == {"resnet50": folder / "resnet50.pth"}


def test_run_settings_impose_the_paper_compression_only_when_asked(tmp_path):
    shared = {"epochs": 2, "lr": 1e-3}
    plain = run_settings("resnet50", tmp_path, tmp_path / "w.pth", shared, {"lr": 1e-4}, image_size=224)
    assert (plain["train_crop_size"], plain["val_resize_size"], plain["val_crop_size"]) == (224, 256, 224)
    assert plain["lr"] == 1e-4 and "target_sparsity" not in plain
    imposed = run_settings("resnet50", tmp_path, tmp_path / "w.pth", shared, impose_paper=True)
    assert 1 / (1 - imposed["target_sparsity"]) == pytest.approx(PAPER_RESULTS["resnet50"].compression, rel=1e-3)
    assert "target_sparsity" not in run_settings("mobilenet_v2", tmp_path, tmp_path / "w.pth", shared,
                                                 impose_paper=True)  # no paper figure on record
    assert run_settings("alexnet", tmp_path, tmp_path / "w.pth", shared)["train_crop_size"] == 63


def test_plan_run_command_parses_back_and_replaces_an_earlier_run(tmp_path):
    settings = run_settings("resnet50", tmp_path / "data", tmp_path / "w.pth", {"epochs": 1}, impose_paper=True)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "args.yaml").write_text("model: resnet50\n")  # an earlier ltp-train run
    run = plan_run(settings, folder, nproc_per_node=2)
    assert run["state"] == "fresh" and not folder.exists() and run["parses_back"]
    assert "--target-sparsity" in run["command"] and run["command"][:4] == ["torchrun", "--standalone",
                                                                            "--nproc_per_node", "2"]
    assert command_config(run["command"]).target_sparsity == settings["target_sparsity"]


def test_launch_streams_the_log_and_raises_on_failure(tmp_path):
    lines = []
    code = "import os; print('threads', os.environ['OMP_NUM_THREADS'])"
    assert launch([sys.executable, "-c", code], tmp_path, num_threads=3, echo=lines.append) >= 0
    assert lines == ["threads 3\n"]
    with pytest.raises(RuntimeError, match="exit status 2"):
        launch([sys.executable, "-c", "raise SystemExit(2)"], tmp_path, echo=lines.append)


@pytest.mark.parametrize("epochs, every, n", [(1, 1, 2), (3, 1, 4), (5, 2, 4), (4, 2, 3)])
def test_expected_records_counts_the_start_every_evaluation_and_the_last(epochs, every, n):
    assert expected_records(epochs, every) == n


def _pruned_trail(tmp_path, extra_key=False):
    torch.manual_seed(0)
    net = get_model("small_cnn", 10)
    layer = net[0]
    with torch.no_grad():
        layer.weight[layer.weight.abs() < layer.weight.abs().median()] = 0
    state = {**net.state_dict(), **({"extra": torch.zeros(1)} if extra_key else {})}
    trail = Trail(tmp_path)
    sparsity = int((layer.weight == 0).sum()) / layer.weight.numel()
    entry = trail.record(step=3, epoch=1, sparsity=sparsity, layer_sparsity={"0": sparsity}, state_dict=state)
    return trail, entry


def test_check_checkpoint_measures_the_zeros_and_the_keys(tmp_path):
    trail, entry = _pruned_trail(tmp_path / "good")
    check = check_checkpoint(trail, entry, "small_cnn", 10)
    assert check["strict"] and check["zero_fraction"] == pytest.approx(0.5, abs=0.02)
    assert check["sparsity_error"] == 0
    assert check_checkpoint(trail, {**entry, "sparsity": 0.1}, "small_cnn", 10)["sparsity_error"] > 0.3
    trail, entry = _pruned_trail(tmp_path / "extra", extra_key=True)
    assert not check_checkpoint(trail, entry, "small_cnn", 10)["strict"]


RECORDS = [{"step": 0, "epoch": 0.0, "sparsity": 0.0, "compression": 1.0, "flops": 100, "hard_accuracy": 0.7,
            "hard_top5": 0.92},
           {"step": 5, "epoch": 1.0, "sparsity": 0.88, "compression": 8.4, "flops": 30, "hard_accuracy": 0.68,
            "hard_top5": 0.915},
           {"step": 9, "epoch": 2.0, "sparsity": 0.8895, "compression": 9.05, "flops": 25, "hard_accuracy": 0.66,
            "hard_top5": 0.905}]


def test_trail_rows_give_flops_relative_to_the_start():
    rows = trail_rows(RECORDS)
    assert [r["FLOPs / start"] for r in rows] == [1.0, 0.3, 0.25]
    assert rows[-1]["hard top-5"] == 0.905 and rows[0]["compression"] == 1.0


def test_top5_at_compression_takes_records_near_or_past_it():
    assert top5_at_compression(RECORDS, 9.1) == 0.905          # 9.05x is within 2% of 9.1x
    assert top5_at_compression(RECORDS, 8.0) == 0.915          # the best record past 8x
    assert math.isnan(top5_at_compression(RECORDS, 9.1, tolerance=0.0))
    assert math.isnan(top5_at_compression(RECORDS, 26.4))      # never got there: a comparison fails


def test_results_mark_imposed_compression_and_pipeline_check():
    setting = describe_setting("data/imagenet", "")
    settings = {"target_sparsity": 0.8901, "model": "resnet50"}
    row = results_row("resnet50", RECORDS, settings, setting)
    assert row["compression source"].startswith("imposed") and row["pipeline check"]
    assert (row["paper top-5"], row["our top-5"], row["our top-5 at paper compression"]) == (0.92, 0.905, 0.905)
    assert row["dense top-5 (torchvision)"] == pytest.approx(0.92862)
    learned = results_row("mobilenet_v2", RECORDS, {}, describe_setting("data/imagenet", "data/weights"))
    assert learned["compression source"] == "learned" and learned["our top-5 at paper compression"] is None
    text = results_markdown([row, learned], {"resnet50": ["ltp-train", "--model", "resnet50"]}, title="t")
    resnet, mobilenet = [line for line in text.splitlines() if line.startswith("| resnet50")
                         or line.startswith("| mobilenet_v2")]
    assert "9.05x (imposed: target 9.10x)" in resnet and "pipeline check: random stand-in weights" in resnet
    assert "(imposed)" not in mobilenet and "pipeline check" not in mobilenet
    assert "ltp-train --model resnet50" in text
