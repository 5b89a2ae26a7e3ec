"""`python -m ltp_core.deploy.pick` / `pick_record`: choosing a network from an ltp-train run's trail."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ltp_core.core.trail import Trail
from ltp_core.deploy.pick import main, pick_checkpoint, pick_record
from ltp_core.deploy.sparse_file import load_sparse
from ltp_core.models import mlp

# (step, sparsity, hard_accuracy, hard_top5): the run starts dense at 0.95 and gets sparser
RECORDS = [(0, 0.0, 0.95, 0.99), (10, 0.5, 0.96, 0.99), (20, 0.8, 0.95, 0.99), (30, 0.9, 0.94, 0.985),
           (40, 0.95, 0.90, 0.98)]


@pytest.fixture
def run(tmp_path):
    """An ltp-train-like output folder: trail.json and a plain checkpoint per record, each
    holding a marker value so a test can tell which one was written."""
    trail = Trail(tmp_path / "run")
    for step, sparsity, hard, top5 in RECORDS:
        state = mlp(hidden=(8,)).state_dict()
        state["0.bias"] = torch.full((8,), float(step))
        trail.record(step=step, epoch=step / 10, sparsity=sparsity, hard_accuracy=hard, soft_accuracy=hard,
                     hard_top1=hard, hard_top5=top5, state_dict=state)
    return tmp_path / "run"


def test_rules(run):
    trail = Trail.load(run)
    assert pick_record(trail, min_accuracy=0.94)["step"] == 30  # the sparsest with >= 0.94
    assert pick_record(trail, max_drop=0.0)["step"] == 20  # as accurate as the start: 0.8 sparse
    assert pick_record(trail, max_drop=0.05)["step"] == 40
    assert pick_record(trail, max_sparsity=0.85)["step"] == 10  # the most accurate with <= 0.85
    assert pick_record(trail, min_accuracy=0.94, max_sparsity=0.85)["step"] == 20
    assert pick_record(trail, min_accuracy=0.985, accuracy_key="hard_top5")["step"] == 30


@pytest.mark.parametrize("rule,match", [
    ({}, "give min_accuracy, max_drop or max_sparsity"),
    ({"min_accuracy": 0.9, "max_drop": 0.01}, "not both"),
    ({"min_accuracy": 1.5}, r"min_accuracy must be a fraction in \[0, 1\]"),
    ({"min_accuracy": 0.99}, "no record with hard_accuracy >= 0.99"),
    ({"min_accuracy": 0.9, "accuracy_key": "top9"}, "accuracy key 'top9' is not in the trail's records; available"),
])
def test_bad_rules(run, rule, match):
    with pytest.raises(ValueError, match=match):
        pick_record(Trail.load(run), **rule)


def test_only_records_with_a_checkpoint_when_one_is_written(run):
    trail = Trail.load(run)
    trail.records[3]["checkpoint"] = None
    assert pick_record(trail, min_accuracy=0.94)["step"] == 30
    assert pick_record(trail, min_accuracy=0.94, need_checkpoint=True)["step"] == 20
    for r in trail.records:
        r["checkpoint"] = None
    with pytest.raises(ValueError, match="no-trail-checkpoints"):
        pick_record(trail, min_accuracy=0.9, need_checkpoint=True)


def test_pick_checkpoint_returns_the_plain_state_dict(run):
    record, state = pick_checkpoint(run, max_drop=0.02)
    assert record["step"] == 30 and torch.equal(state["0.bias"], torch.full((8,), 30.0))
    mlp(hidden=(8,)).load_state_dict(state)  # strict


def test_command_writes_the_chosen_network(run, tmp_path, capsys):
    assert main([str(run), "--max-drop", "0.01", "--out", str(tmp_path / "picked.pth")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("picked step 30  epoch 3  sparsity 0.9000 (10.00x)  hard_accuracy 0.9400")
    state = torch.load(tmp_path / "picked.pth", weights_only=True)
    assert torch.equal(state["0.bias"], torch.full((8,), 30.0))
    assert main([str(run), "--min-accuracy", "0.9", "--out", str(tmp_path / "picked.ltps"), "--sparse", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["step"] == 40 and torch.equal(load_sparse(tmp_path / "picked.ltps")["0.bias"],
                                                torch.full((8,), 40.0))
    assert main([str(run), "--list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(RECORDS)


@pytest.mark.parametrize("argv,match", [
    (["--min-accuracy", "0.99"], "no record with hard_accuracy >= 0.99;"),
    (["--key", "hard_top5", "--min-accuracy", "0.999"], "no record with hard_top5 >= 0.999;"),
    (["--min-accuracy", "0.5", "--out", ""], "--out is empty"),
    (["--sparse", "--min-accuracy", "0.9"], "give --out PATH too"),
    (["--min-accuracy", "x"], "argument --min-accuracy: must be a finite number, got 'x'"),
    (["--max-drop", "nan"], "argument --max-drop: must be a finite number, got 'nan'"),
    (["--min-accuracy", "0", "--out", "{run}/trail.json/net.pth"], "trail.json is a file, not a folder"),
    (["--max-sparsity", "0.5", "--key", "nope"], "accuracy key 'nope'"),
])
def test_command_errors_are_one_line(run, capsys, argv, match):
    assert main([str(run), *(a.format(run=run) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ltp-pick: error: ") and match in err and "\n" not in err and "None" not in err


def test_out_never_overwrites_the_runs_own_files(run, capsys):
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    steps = sorted((run / "trail").glob("step_*.pt"))
    for target in (run / "trail.json", steps[0]):
        assert main([str(run), "--min-accuracy", "0", "--out", str(target)]) == 2
        assert "is one of the run's own files" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "--min-accuracy", "0.9"]) == 2
    assert "no trail at" in capsys.readouterr().err


def test_runs_as_a_module(run, tmp_path):
    out = tmp_path / "m.pth"
    proc = subprocess.run([sys.executable, "-m", "ltp_core.deploy.pick", str(run), "--max-sparsity", "0.9", "--out",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "picked step 10" in proc.stdout and out.is_file()  # the most accurate with <= 0.9
