"""The training engine (`ltp_core.engine.train`) and its CLI schema (`ltp_core.engine.config`).

The end-to-end runs use tiny datasets in the real layouts: `data/make_tiny_imagenet.py`'s
ImageNet-layout folder for a 2-process torchrun (gloo) run, and real handwritten digits written
in CIFAR-10's pickle format (`write_digits_cifar10`, 4 per class and split) for a 1-process
CIFAR-10 run; also a run that chooses on validation carved from training (--val-fraction), an
exact `--resume`, clean one-line errors, head replacement with `--pretrained`, a NaN stop
that keeps the last good checkpoint, and the AMP / channels_last paths (CUDA ones skip
without a GPU).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ltp_core import LTP
from ltp_core.core.trail import Trail
from ltp_core.data import (
    SyntheticImages,
    build_datasets,
    carve_validation,
    dataset_labels,
    image_sizes,
)
from ltp_core.engine import distributed, train
from ltp_core.engine.build import check_input_sizes
from ltp_core.engine.config import UsageError, make_config, method_options
from ltp_core.engine.train import parse_args
from ltp_core.models import MIN_INPUT_SIZES, check_input_size, get_model, min_input_size

PY = sys.executable
TORCHRUN = Path(sys.executable).with_name("torchrun")
VOLATILE = {"img_per_s", "epoch_seconds"}
TINY = ["--train-crop-size", "32", "--val-resize-size", "32", "--val-crop-size", "32"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LTP_TRACEBACK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)


def _synthetic(out: Path, *extra: str) -> list[str]:
    """Flags of a tiny synthetic run (16 images of 8x8, 4 classes, CIFAR ResNet-20)."""
    return ["--dataset", "synthetic", "--synthetic-size", "16", "--synthetic-classes", "4", "--train-crop-size", "8",
            "--model", "resnet20", "-b", "8", "--epochs", "1", "--lr", "0.05", "-j", "0", "--device", "cpu",
            "--no-progress", "--output-dir", str(out), *extra]


# -- end-to-end runs -----------------------------------------------------------------------

def test_torchrun_two_processes_on_imagenet_layout(tiny_imagenet, tmp_path):
    out = tmp_path / "run"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "ltp_core.engine.train",
           "--dataset", "imagenet", "--data-path", str(tiny_imagenet), *TINY, "--model", "mobilenet_v3_small",
           "--epochs", "2", "-b", "4", "--lr", "0.01", "--ltp-lambda", "1", "--ltp-t0", "0.05",
           "--ltp-threshold-lr", "1e-5", "-j", "0", "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # rank 0 alone prints (and writes): one header, one summary line per evaluation
    assert proc.stdout.count("ltp-train: mobilenet_v3_small on imagenet (3 classes, 24 train / 12 val") == 1
    assert "2 process(es) (gloo, cpu)" in proc.stdout
    assert proc.stdout.count("epoch 2/2") == 1
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert files == ["args.yaml", "checkpoint.pth", "trail", "trail.json", "trail/step_00000000.pt",
                     "trail/step_00000003.pt", "trail/step_00000006.pt"]  # no temporary files left
    trail = Trail.load(out)
    assert [(r["epoch"], r["step"]) for r in trail] == [(0, 0), (1, 3), (2, 6)]
    last = trail[-1]
    for key in ("soft_accuracy", "soft_top5", "hard_accuracy", "hard_top5", "soft_loss", "hard_loss", "sparsity",
                "compression", "flops", "layer_sparsity", "thresholds", "img_per_s"):
        assert last[key] is not None, key
    assert not {"top1", "top5", "hard_top1", "val_loss", "hard_val_loss"} & set(last)  # one name per value
    assert 0 < last["sparsity"] < 1 and last["flops"] < trail[0]["flops"]
    assert set(last["layer_sparsity"]) == set(last["thresholds"])
    ckpt = _checkpoint(out)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["model"]["classifier.3.bias"].shape == (3,)  # the head has the folder's 3 classes
    hard = trail.load_checkpoint(last)
    model = get_model("mobilenet_v3_small", 3)
    model.load_state_dict(hard)  # a plain network, strictly loadable
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["model"] == "mobilenet_v3_small" and args["batch_size"] == 4


def test_two_processes_train_exactly_what_one_process_does_on_the_same_global_batches(tmp_path):
    # DistributedSampler deals one shuffled order out rank by rank, so two processes with batch 16
    # see, step by step, the same 32 images that one process with batch 32 sees; DDP averages the
    # two ranks' mean gradients, which is the 32-image mean. Without batch norm (whose statistics
    # are per process) the weights and the thresholds must then agree to float rounding.
    flags = ["-m", "ltp_core.engine.train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--opt", "sgd",
             "--lr", "0.05", "--weight-decay", "0", "--ltp-lambda", "2", "--ltp-t0", "0.05", "--ltp-threshold-lr",
             "1e-3", "-j", "0", "--device", "cpu", "--no-progress", "--no-trail-checkpoints", "--seed", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [[PY, *flags, "-b", "32", "--output-dir", str(one)],
            [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *flags, "-b", "16", "--output-dir", str(two)]]
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = _checkpoint(one), _checkpoint(two)
    assert b["world_size"] == 2 and a["world_size"] == 1 and a["step"] == b["step"] == 2 * (1347 // 32)
    assert set(a["model"]) == set(b["model"])
    thresholds = [k for k in a["model"] if k.endswith("threshold")]
    assert thresholds and all(float(a["model"][k]) > 0 for k in thresholds)  # training moved the thresholds
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_single_process_on_cifar10_folder(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    cmd = [PY, "-m", "ltp_core.engine.train", "--dataset", "cifar10", "--data-path", str(tiny_cifar),
           "--model", "resnet20", "--epochs", "1", "-b", "8", "--lr", "0.05", "--ltp-exclude", "first", "last",
           "-j", "0", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resnet20 on cifar10 (10 classes, 40 train / 40 val images)" in proc.stdout
    assert "differ from the official CIFAR-10 release" in proc.stdout
    trail = Trail.load(out)
    assert len(trail) == 2 and trail[-1]["step"] == 5
    assert "conv1" not in trail[-1]["layer_sparsity"] and "fc" not in trail[-1]["layer_sparsity"]
    ckpt = _checkpoint(out)
    assert ckpt["classes"][0] == "digit 0" and ckpt["model"]["fc.bias"].shape == (10,)
    # args.yaml repeats the run: the same settings come back through --config
    again = parse_args(["--config", str(out / "args.yaml")])
    assert again == make_config(**yaml.safe_load((out / "args.yaml").read_text()))
    assert again.ltp_exclude == ["first", "last"] and again.model == "resnet20"


def test_val_fraction_measures_the_trail_on_validation_carved_from_training(tmp_path):
    # digits: 1347 training / 450 test images; --val-fraction 0.2 holds out 270 training images
    out = tmp_path / "run"
    cmd = [PY, "-m", "ltp_core.engine.train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "-b", "64",
           "--lr", "0.1", "--ltp-lambda", "2", "--ltp-t0", "0.05", "--val-fraction", "0.2", "-j", "0",
           "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlp on digits (10 classes, 1077 train / 270 val / 450 test images)" in proc.stdout
    assert "270 training images held out for validation" in proc.stdout
    trail = Trail.load(out)
    for record in trail:
        for key in ("soft_accuracy", "hard_accuracy", "soft_test_accuracy", "hard_test_accuracy", "hard_test_top5"):
            assert 0 <= record[key] <= 1, key
    # the two splits are different images: their accuracies differ somewhere along the trail
    assert any(r["hard_accuracy"] != r["hard_test_accuracy"] for r in trail)
    assert args_of(out)["val_fraction"] == 0.2
    # ltp-pick chooses on validation and reports the chosen record's test accuracy beside it
    pick = subprocess.run([PY, "-m", "ltp_core.deploy.pick", str(out), "--max-drop", "0.05"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert pick.returncode == 0 and "hard_test_accuracy" in pick.stdout and "(test split, reported)" in pick.stdout
    refused = subprocess.run([PY, "-m", "ltp_core.deploy.pick", str(out), "--max-drop", "0.05", "--key",
                              "hard_test_accuracy"], capture_output=True, text=True, env=_env(), timeout=120)
    assert refused.returncode == 2 and "is the test split's: it is reported, not chosen on" in refused.stderr


def test_carve_validation_holds_out_unaugmented_training_images(tiny_cifar):
    data = build_datasets("cifar10", tiny_cifar)
    carved = carve_validation(data, 0.25, seed=1)
    assert (len(carved.train), len(carved.val), len(carved.test)) == (30, 10, 40)
    assert carved.test is data.val and carved.classes == data.classes
    assert sorted(dataset_labels(carved.val)) == list(range(10))  # stratified: one image per class
    assert not set(carved.train.indices) & set(carved.val.indices)
    x1, x2 = carved.val[0][0], carved.val[0][0]
    assert torch.equal(x1, x2)  # read without augmentation (random crops and flips would differ)
    assert carve_validation(data, 0.25, seed=1).val.indices == carved.val.indices  # the seed fixes the images
    with pytest.raises(ValueError, match="val_fraction must be in \\(0, 1\\), got 1.0"):
        carve_validation(data, 1.0)
    with pytest.raises(ValueError, match="holds out 4 of 40 training images; .* at least one image per class"):
        carve_validation(data, 0.1)
    with pytest.raises(ValueError, match="already have a carved validation split"):
        carve_validation(carved, 0.25)


def args_of(out: Path) -> dict:
    return yaml.safe_load((out / "args.yaml").read_text())


def test_resume_continues_exactly(tiny_imagenet, tmp_path, monkeypatch):
    """Two epochs in one go equal one epoch, a crash, and --resume (augmentation, dropout and
    data order included: the RNG states are checkpointed)."""
    flags = ["--dataset", "imagenet", "--data-path", str(tiny_imagenet), *TINY, "--model", "mobilenet_v3_small",
             "--epochs", "2", "-b", "8", "--lr", "0.01", "--ltp-t0", "0.05", "--ltp-threshold-lr", "1e-5", "-j", "0",
             "--device", "cpu", "--no-progress", "--no-trail-checkpoints"]
    whole = train.run(parse_args([*flags, "--output-dir", str(tmp_path / "whole")]))

    original = train.train_one_epoch

    def crash_in_second_epoch(r):
        if r.epoch == 1:
            raise KeyboardInterrupt
        return original(r)

    monkeypatch.setattr(train, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run(parse_args([*flags, "--output-dir", str(tmp_path / "split")]))
    assert _checkpoint(tmp_path / "split")["epoch"] == 1
    monkeypatch.setattr(train, "train_one_epoch", original)
    resumed = train.run(parse_args([*flags, "--output-dir", str(tmp_path / "split"), "--resume"]))

    a, b = _checkpoint(tmp_path / "whole"), _checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in Trail.load(tmp_path / "whole")]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in Trail.load(tmp_path / "split")]
    assert whole.last["hard_accuracy"] == resumed.last["hard_accuracy"]


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    """Every file write is gated by rank 0: a process that is not rank 0 leaves no trace."""
    monkeypatch.setattr(distributed.Procs, "main", property(lambda self: False))
    result = train.run(parse_args(_synthetic(tmp_path / "run", "--method", "none")))
    assert not (tmp_path / "run").exists()
    assert result.method is None and result.last["sparsity"] == 0.0  # measured, not recorded


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    original = train.train_one_epoch

    def poison_second_epoch(r):
        if r.epoch == 1:
            monkeypatch.setattr(SyntheticImages, "__getitem__", lambda s, i: (torch.full((3, 8, 8), float("nan")), 0))
        return original(r)

    monkeypatch.setattr(train, "train_one_epoch", poison_second_epoch)
    flags = _synthetic(out)
    flags[flags.index("--epochs") + 1] = "3"
    assert train.main(flags) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "the loss became nan at epoch 2, step 3" in err and "(epoch 1) is kept" in err
    ckpt = _checkpoint(out)
    assert ckpt["epoch"] == 1 and len(ckpt["trail"]) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(Trail.load(out)) == 2


# -- pretrained weights and the head -------------------------------------------------------

def test_pretrained_weights_load_with_the_head_replaced(tiny_imagenet, tmp_path, capsys):
    torch.manual_seed(1)
    source = get_model("resnet20", 10)
    ltp = LTP(source, temperature=0.05)
    with torch.no_grad():
        for tau in ltp.thresholds.values():
            tau.fill_(1e-3)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ten_classes.pth")  # a checkpoint.pth shape
    expected = ltp.hard_state_dict()

    result = train.run(parse_args(["--dataset", "imagenet", "--data-path", str(tiny_imagenet), *TINY,
                                   "--model", "resnet20", "--pretrained", str(tmp_path / "ten_classes.pth"),
                                   "--method", "none", "--test-only", "-j", "0", "--no-progress"]))
    model = result.model
    assert model.fc.weight.shape == (3, 64)
    assert torch.equal(model.conv1.weight, expected["conv1.weight"])  # hard-pruned weights came across
    assert torch.equal(model.layer3[2].bn2.running_var, expected["layer3.2.bn2.running_var"])
    assert not torch.equal(model.fc.weight, expected["fc.weight"][:3])
    out = capsys.readouterr().out
    assert "replaced the 3-class head (fc.bias, fc.weight; the file has 10 classes)" in out
    assert json.loads(out.strip().splitlines()[-1])["soft_accuracy"] >= 0

    torch.save(get_model("resnet32", 10).state_dict(), tmp_path / "resnet32.pth")
    with pytest.raises(UsageError, match="does not fit this model: missing"):
        train.load_pretrained(get_model("resnet20", 3), tmp_path / "resnet32.pth", 3)


# -- clean errors --------------------------------------------------------------------------

def test_missing_folder_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([PY, "-m", "ltp_core.engine.train", "--dataset", "imagenet", "--data-path",
                           str(tmp_path / "nowhere"), "--no-progress"], capture_output=True, text=True, env=_env(),
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"ltp-train: error: ImageNet folder {tmp_path / 'nowhere'} not found; expected "
                                   f"{tmp_path / 'nowhere'}/train/<class>/<image> and {tmp_path / 'nowhere'}/val/"
                                   "<class>/<image> (ImageFolder layout, see data/README.md)")
    assert not (tmp_path / "runs").exists()


def _one_line_error(capsys, argv: list[str]) -> str:
    assert train.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("ltp-train: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_clean_errors(tiny_imagenet, tiny_cifar, tmp_path, capsys):
    malformed = tmp_path / "malformed"
    (malformed / "train").mkdir(parents=True)
    (malformed / "val").mkdir()
    assert "malformed/train is malformed: Couldn't find any class folder" in _one_line_error(
        capsys, ["--dataset", "imagenet", "--data-path", str(malformed)])
    (malformed / "train" / "cat").mkdir()
    (malformed / "train" / "cat" / "notes.txt").write_text("not an image")
    assert "Found no valid file for the classes cat" in _one_line_error(
        capsys, ["--dataset", "imagenet", "--data-path", str(malformed)])
    assert "lacks data_batch_1" in _one_line_error(capsys, ["--dataset", "cifar10", "--data-path", str(tiny_imagenet)])
    assert "is a file, not a folder" in _one_line_error(
        capsys, ["--dataset", "cifar10", "--data-path",
                 str(tiny_imagenet / "train" / "n00000000" / "n00000000_0.JPEG")])
    broken = tmp_path / "broken-cifar"
    shutil.copytree(tiny_cifar, broken)
    (broken / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage\n")
    assert f"{broken}/cifar-10-batches-py/data_batch_3 is malformed" in _one_line_error(
        capsys, ["--dataset", "cifar10", "--data-path", str(broken)])

    assert "--lr (lr): expected a number, got 'fast'" in _one_line_error(capsys, ["--lr", "fast"])
    assert "--batch-size (batch_size): must be > 0, got 0" in _one_line_error(capsys, ["-b", "0"])
    assert "invalid choice: 'mnist'" in _one_line_error(capsys, ["--dataset", "mnist"])
    assert "--epochs (epochs): must be >= 0" in _one_line_error(capsys, ["--epochs", "-1"])
    assert "unrecognized arguments: --learning-rate" in _one_line_error(capsys, ["--learning-rate", "1"])
    assert "unknown pruning method 'ltpp'" in _one_line_error(capsys, ["--method", "ltpp", "--dataset", "synthetic"])
    assert "options of --method ltp" in _one_line_error(capsys, ["--method", "none", "--ltp-lambda", "1",
                                                                 "--dataset", "synthetic"])

    run = tmp_path / "out"
    assert re.search(r"unknown model 'resnet21' \(did you mean [^)]*resnet20", _one_line_error(
        capsys, _synthetic(run, "--model", "resnet21")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "timm", None)  # as if not installed
        assert "comes from timm, which is not installed: pip install timm" in _one_line_error(
            capsys, _synthetic(run, "--model", "mixnet_s"))
    assert "--method ltp: temperature (T0) must be a finite number > 0" in _one_line_error(
        capsys, _synthetic(run, "--method-opt", "temperature=-1"))
    assert "is larger than the 16 training images" in _one_line_error(capsys, _synthetic(run, "-b", "32"))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    for flag in ("--resume", "--pretrained"):  # without torch's advice to load it with weights_only=False
        assert _one_line_error(capsys, _synthetic(run, flag, str(garbage))) == \
            f"ltp-train: error: {flag}: {garbage} is not a PyTorch checkpoint, or it is damaged"
    torch.save({"model": {}}, tmp_path / "partial.pth")
    assert "is not an ltp-train checkpoint (it lacks optimizer" in _one_line_error(
        capsys, _synthetic(run, "--resume", str(tmp_path / "partial.pth")))
    assert "--resume: no checkpoint at" in _one_line_error(capsys, _synthetic(run, "--resume"))
    assert not run.exists()  # no failed start wrote anything

    (run / "checkpoint.pth").parent.mkdir()
    (run / "checkpoint.pth").write_bytes(b"precious")
    assert "already holds a run (checkpoint.pth); pass --resume" in _one_line_error(capsys, _synthetic(run))
    assert (run / "checkpoint.pth").read_bytes() == b"precious"


def _md5s(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_settings_the_checkpoint_fixes(tmp_path, capsys):
    run = tmp_path / "run"
    flags = _synthetic(run, "--model", "small_cnn", "--lr-scheduler", "steplr")
    assert train.main(flags) == 0
    before = _md5s(run)
    # The optimizer's and schedule's state would override these without a word.
    err = _one_line_error(capsys, [*flags, "--resume", "--opt", "adam", "--lr", "0.5"])
    assert "was trained with --opt sgd, --lr 0.05; this run sets --opt adam, --lr 0.5" in err
    assert _md5s(run) == before  # nothing rewritten
    # --epochs may grow under a step schedule, not under one built for the run's length.
    assert train.main([*flags, "--resume", "--epochs", "2"]) == 0
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (args["epochs"], args["resume"], len(Trail.load(run))) == (2, None, 3)  # args.yaml reruns, not resumes
    cosine = _synthetic(tmp_path / "cosine", "--model", "small_cnn", "--lr-scheduler", "cosineannealinglr")
    assert train.main(cosine) == 0
    assert "trained with --epochs 1; this run sets --epochs 2" in _one_line_error(
        capsys, [*cosine, "--resume", "--epochs", "2"])
    gmp = _synthetic(tmp_path / "gmp", "--model", "small_cnn", "--method", "gmp")
    assert train.main(gmp) == 0
    assert "its schedule is built for the run's --epochs" in _one_line_error(
        capsys, [*gmp, "--resume", "--epochs", "3"])

    # Resuming another run's checkpoint into a folder that holds a run would overwrite it.
    before = _md5s(run)
    assert f"{run} already holds a run (checkpoint.pth); resuming {tmp_path / 'cosine' / 'checkpoint.pth'} there" \
        in _one_line_error(capsys, [*cosine, "--output-dir", str(run), "--resume", str(tmp_path / "cosine")])
    assert _md5s(run) == before


def test_resume_takes_the_settings_not_given_from_the_checkpoint(tmp_path, capsys):
    """A resumed run is the run it continues: what the command line leaves out is the
    checkpoint's, not the default; only given flags are checked against it."""
    run = tmp_path / "run"
    assert train.main(_synthetic(run, "--model", "small_cnn")) == 0
    assert train.main(["--output-dir", str(run), "--resume", "--test-only"]) == 0
    # lr, scheduler, seed ... left out: not "changed" to their defaults
    assert train.main(["--dataset", "synthetic", "--model", "small_cnn", "-b", "16", "--output-dir", str(run),
                       "--resume", "--test-only"]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, ["--output-dir", str(run), "--resume", "--lr", "0.1"])
    assert "was trained with --lr 0.05; this run sets --lr 0.1. A resumed run" in err and "drop those flags" in err
    # --seed seeds every epoch's data order (and these synthetic images): not silently ignored
    assert "was trained with --seed 0; this run sets --seed 3" in _one_line_error(
        capsys, ["--output-dir", str(run), "--resume", "--seed", "3"])
    # a run folder without --output-dir continues in place; args.yaml records what the run used
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (args["dataset"], args["model"], args["lr"], args["batch_size"], args["epochs"], args["output_dir"],
            args["resume"]) == ("synthetic", "small_cnn", 0.05, 8, 2, str(run), None)
    assert train.main(["--config", str(run / "args.yaml"), "--resume", "--epochs", "3"]) == 0
    assert _checkpoint(run)["epoch"] == 3 and len(Trail.load(run)) == 4
    cfg = parse_args(["--output-dir", str(run), "--resume", "--method-opt", "init_threshold=0"])
    assert cfg.method_opt == {"init_threshold": 0} and cfg.synthetic_size == 16 and cfg.resume == "auto"


def test_resumed_into_another_folder_the_trail_finds_its_checkpoints(tmp_path, capsys):
    """The inherited records name the old run's trail/step_*.pt by absolute path, so ltp-pick
    picks from the new folder; its ltp-sparse output is a --pretrained file."""
    from ltp_core.deploy import pick
    from ltp_core.deploy.sparse_file import load_sparse

    old, new = tmp_path / "old", tmp_path / "new"
    assert train.main(_synthetic(old, "--model", "small_cnn")) == 0
    assert train.main(["--resume", str(old), "--output-dir", str(new), "--epochs", "2"]) == 0
    trail = Trail.load(new)
    assert [r["checkpoint"] for r in trail] == [str(old / "trail" / "step_00000000.pt"),
                                                str(old / "trail" / "step_00000002.pt"), "trail/step_00000004.pt"]
    for record in trail:
        assert set(trail.load_checkpoint(record)) == set(Trail.load(old).load_checkpoint(Trail.load(old)[0]))
    capsys.readouterr()
    picked = tmp_path / "picked.ltps"
    assert pick.main([str(new), "--max-sparsity", "0", "--out", str(picked), "--sparse"]) == 0
    assert capsys.readouterr().out.startswith("picked step 0 ")  # the dense start, a record of the old run
    result = train.run(parse_args(_synthetic(tmp_path / "eval", "--model", "small_cnn", "--method", "none",
                                             "--pretrained", str(picked), "--test-only")))
    assert f"loaded 14 tensors from {picked}" in capsys.readouterr().out
    for key, value in load_sparse(picked).items():
        assert torch.equal(result.model.state_dict()[key], value), key
    # a finished run resumed into another folder: nothing left to train, no checkpoint written there
    capsys.readouterr()
    assert train.main(["--resume", str(old), "--output-dir", str(tmp_path / "done")]) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if "done;" in line]
    assert done and "checkpoint" not in done[0] and not (tmp_path / "done" / "checkpoint.pth").exists()


def test_unreadable_image_is_one_line_naming_it(tiny_imagenet, tmp_path, capsys):
    """A damaged image found mid-epoch, in the main process or a DataLoader worker: one line
    naming the file, exit status 2, the checkpoint left as it was."""
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_imagenet, data)
    flags = ["--dataset", "imagenet", "--data-path", str(data), *TINY, "--model", "small_cnn", "--method", "none",
             "--epochs", "1", "-b", "8", "-j", "0", "--device", "cpu", "--no-progress"]
    assert train.main([*flags, "--output-dir", str(run)]) == 0
    bad = data / "train" / "n00000002" / "zz_bad.JPEG"
    bad.write_bytes(b"notajpeg\n")
    before = _md5s(run)
    expected = f"ltp-train: error: cannot read {bad}: not an image PIL recognizes"
    # 25 images, 5 per batch: every image is read
    assert _one_line_error(capsys, ["--output-dir", str(run), "--resume", "--epochs", "2", "-b", "5",
                                    "-j", "2"]).startswith(expected)
    assert _md5s(run)["checkpoint.pth"] == before["checkpoint.pth"]
    assert _one_line_error(capsys, [*flags, "-b", "5", "--output-dir", str(tmp_path / "fresh")]).startswith(expected)


def test_output_dir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _one_line_error(capsys, _synthetic(tmp_path / "file" / "sub")) == (
        f"ltp-train: error: --output-dir {tmp_path / 'file' / 'sub'}: cannot create it, {tmp_path / 'file'} is a "
        "file, not a folder")
    if Path("/proc/self").is_dir():  # a folder nobody can create anything in, root included
        assert _one_line_error(capsys, _synthetic(Path("/proc/nope"), "--model", "small_cnn")).startswith(
            "ltp-train: error: --output-dir /proc/nope: cannot ")


def test_clear_errors_for_weights_files_and_options(tmp_path, capsys):
    import argparse

    run = tmp_path / "run"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "reference.pth")
    assert "holds a Python object (argparse.Namespace) that weights_only loading refuses" in _one_line_error(
        capsys, _synthetic(run, "--pretrained", str(tmp_path / "reference.pth")))
    (tmp_path / "weights").mkdir()
    assert f"--pretrained: {tmp_path / 'weights'} is a folder; give a weights file" in _one_line_error(
        capsys, _synthetic(run, "--pretrained", str(tmp_path / "weights")))
    assert "unexpected keyword argument 'bogus'; valid --model-opt names: channels, batch_norm" in _one_line_error(
        capsys, _synthetic(run, "--model", "small_cnn", "--model-opt", "bogus=1"))
    err = _one_line_error(capsys, _synthetic(run, "--method", "none", "--target-sparsity", "0.5"))
    assert err.endswith("this run uses --method none; dense training prunes nothing: drop it, or choose --method ltp")
    assert not run.exists()
    from ltp_core.models import model_options

    assert model_options("resnet20") == ["shortcut"] and model_options("mlp") == ["hidden", "batch_norm"]
    assert "zero_init_residual" in model_options("resnet18") and model_options("no_such_model") is None


def _crash_at_epoch(monkeypatch, epoch: int) -> None:
    """Make the next runs stop with KeyboardInterrupt when they reach `epoch` (0-based)."""
    original = train.train_one_epoch

    def crash(r):
        if r.epoch == epoch:
            raise KeyboardInterrupt
        return original(r)

    monkeypatch.setattr(train, "train_one_epoch", crash)


def _split_run(flags: list[str], run: Path, epoch: int, monkeypatch) -> None:
    """Run `flags` into `run` until the checkpoint after `epoch` epochs, as if interrupted."""
    with monkeypatch.context() as mp:
        _crash_at_epoch(mp, epoch)
        with pytest.raises(KeyboardInterrupt):
            train.run(parse_args([*flags, "--output-dir", str(run)]))
    assert _checkpoint(run)["epoch"] == epoch


def test_resume_with_another_batch_size_keeps_schedules_on_their_epochs(tmp_path, monkeypatch):
    """GMP's ramp is built from --epochs in optimizer steps; a run resumed with another batch
    size (steps per epoch) reaches each sparsity at the same epoch as the uninterrupted run,
    and its trail keeps counting the optimizer steps actually taken."""
    flags = ["--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-classes", "4", "--train-crop-size", "8",
             "--model", "small_cnn", "--epochs", "4", "--lr", "0.05", "-j", "0", "--device", "cpu", "--no-progress",
             "--no-trail-checkpoints", "--method", "gmp", "--method-opt", "sparsity=0.8"]
    whole = train.run(parse_args([*flags, "-b", "8", "--output-dir", str(tmp_path / "whole")]))
    by_epoch = [(r["epoch"], round(r["sparsity"], 4)) for r in whole.trail]
    assert by_epoch[-2][1] == by_epoch[-1][1] == pytest.approx(0.8, abs=1e-3)  # the ramp ends at 3/4 of the run
    _split_run([*flags, "-b", "8"], tmp_path / "split", 1, monkeypatch)
    for batch, steps_per_epoch in (("16", 2), ("4", 8)):  # 32 images: 4 steps per epoch at -b 8
        run = tmp_path / f"b{batch}"
        shutil.copytree(tmp_path / "split", run)
        resumed = train.run(parse_args([*flags, "-b", batch, "--output-dir", str(run), "--resume"]))
        assert [(r["epoch"], round(r["sparsity"], 4)) for r in resumed.trail] == by_epoch, batch
        assert [r["step"] for r in resumed.trail] == [0, 4, *(4 + k * steps_per_epoch for k in (1, 2, 3))]
        ckpt = _checkpoint(run)
        assert (ckpt["step"], ckpt["steps_per_epoch"]) == (4 + 3 * steps_per_epoch, steps_per_epoch)


def test_resume_with_another_batch_size_continues_greg(tmp_path, monkeypatch):
    """GReg's lambda and phase are checkpointed: a resumed run continues them exactly, and
    with another batch size lambda still reaches the ceiling (the groups are zeroed) at the
    epoch the uninterrupted run did."""
    flags = ["--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-classes", "4", "--train-crop-size", "8",
             "--model", "small_cnn", "--epochs", "4", "--lr", "0.05", "-j", "0", "--device", "cpu", "--no-progress",
             "--no-trail-checkpoints", "--method", "greg", "--method-opt", "interval=1"]
    whole = train.run(parse_args([*flags, "-b", "8", "--output-dir", str(tmp_path / "whole")]))
    # 4 steps per epoch, 16 in all: lambda reaches the ceiling at half the run, epoch 2
    assert (whole.method.phase, whole.method.pruned_step) == ("pruned", 8)
    _split_run([*flags, "-b", "8"], tmp_path / "split", 1, monkeypatch)
    shutil.copytree(tmp_path / "split", tmp_path / "b16")
    same = train.run(parse_args([*flags, "-b", "8", "--output-dir", str(tmp_path / "split"), "--resume"]))
    a, b = _checkpoint(tmp_path / "whole"), _checkpoint(tmp_path / "split")
    assert a["method"]["phase"] == b["method"]["phase"] == "pruned"
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert same.method.current_lambda == whole.method.current_lambda == 1.0
    other = train.run(parse_args([*flags, "-b", "16", "--output-dir", str(tmp_path / "b16"), "--resume"]))
    assert (other.method.phase, other.method.pruned_step) == ("pruned", 2 * 2)  # epoch 2 at 2 steps per epoch


def test_resume_refuses_another_step_scale_for_options_counted_in_steps(tmp_path, capsys):
    """A schedule given in optimizer steps (here GMP's end_step) cannot stay on its epochs
    when the steps per epoch change (batch size or number of processes): refused, naming both."""
    run = tmp_path / "run"
    flags = _synthetic(run, "--model", "small_cnn", "--method", "gmp", "--method-opt", "end_step=1")
    assert train.main(flags) == 0
    before = _md5s(run)
    err = _one_line_error(capsys, [*flags, "--resume", "-b", "4"])
    assert (f"--resume: {run / 'checkpoint.pth'} was trained with 2 optimizer steps per epoch (-b/--batch-size 8 x 1 "
            "process(es)); this run has 4 (--batch-size 4 x 1 process(es)). --method gmp's end_step=1 counts "
            "optimizer steps") in err
    assert "resume with --batch-size 8 on 1 process(es)" in err
    # two processes of 8 images each: one step per epoch (checked without starting them)
    with pytest.raises(UsageError, match=r"this run has 1 \(--batch-size 8 x 2 process\(es\)\)"):
        train.setup(parse_args([*flags, "--resume"]), distributed.Procs(rank=0, world=2))
    assert _md5s(run) == before  # nothing rewritten
    # --test-only trains nothing: any batch size evaluates the checkpoint
    assert train.main([*flags, "--resume", "-b", "4", "--test-only"]) == 0


def test_a_run_stopped_before_its_first_checkpoint_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trail.json").write_text("[]")
    assert "stopped before its first checkpoint (trail.json, no checkpoint.pth)" in _one_line_error(
        capsys, _synthetic(run))
    assert "no checkpoint at" in _one_line_error(capsys, _synthetic(run, "--resume"))
    assert (run / "trail.json").read_text() == "[]"


def test_records_of_earlier_versions_take_the_current_names(tmp_path, capsys):
    """A checkpoint written by an earlier version holds records under the old names (top1,
    hard_top1, val_loss, ...): a resumed run inherits them under the trail's names, and
    `ltp-pick --key hard_top1` still picks by the hard top-1."""
    from ltp_core.deploy import pick
    from ltp_core.engine.resume import inherited_records

    old = [{"step": 0, "epoch": 0.0, "sparsity": 0.0, "top1": 0.5, "hard_top1": 0.4, "top5": 0.9, "hard_top5": 0.8,
            "val_loss": 1.0, "hard_val_loss": 1.1, "checkpoint": None}]
    (record,) = inherited_records(old, tmp_path, tmp_path)
    assert record == {"step": 0, "epoch": 0.0, "sparsity": 0.0, "soft_accuracy": 0.5, "hard_accuracy": 0.4,
                      "soft_top5": 0.9, "hard_top5": 0.8, "soft_loss": 1.0, "hard_loss": 1.1, "checkpoint": None}
    assert "top1" in old[0]  # the checkpoint's own records are left as they were
    trail = Trail(tmp_path / "run")
    trail.record(step=0, epoch=0, sparsity=0.0, soft_accuracy=0.5, hard_accuracy=0.4, hard_top5=0.8)
    trail.record(step=5, epoch=1, sparsity=0.5, soft_accuracy=0.5, hard_accuracy=0.3, hard_top5=0.9)
    assert pick.pick_record(trail, min_accuracy=0.35, accuracy_key="hard_top1")["step"] == 0
    capsys.readouterr()
    for key, step in (("hard_top1", 0), ("hard_top5", 5)):
        assert pick.main([str(tmp_path / "run"), "--key", key, "--min-accuracy", "0.35"]) == 0
        assert capsys.readouterr().out.startswith(f"picked step {step} ")


def test_error_lines_drop_terminal_color_codes():
    from ltp_core.engine.weights import first_line

    assert first_line(RuntimeError("\x1b[1mWeights only load failed.\x1b[0m\nmore")) == "Weights only load failed."


def test_more_clean_errors(tmp_path, capsys):
    run = tmp_path / "run"
    err = _one_line_error(capsys, _synthetic(run, "--model", "small_cnn", "--method", "gmp", "--method-opt", "foo=1"))
    assert "unexpected keyword argument 'foo'; valid --method-opt names: sparsity, initial_sparsity" in err
    err = _one_line_error(capsys, _synthetic(run, "--method-opt", "foo=1"))
    assert "valid --method-opt names: temperature, lambda_, exclude," in err
    assert "--seed (seed): must be in [0, 2**32), got 99999999999999" in _one_line_error(
        capsys, _synthetic(run, "--seed", "99999999999999"))
    (tmp_path / "file").write_text("x")
    assert f"--output-dir {tmp_path / 'file'} is a file" in _one_line_error(
        capsys, _synthetic(tmp_path / "file"))
    assert "--test-only needs the network to evaluate" in _one_line_error(capsys, _synthetic(run, "--test-only"))
    assert "--data-path is not read with --dataset synthetic" in _one_line_error(
        capsys, _synthetic(run, "--data-path", str(tmp_path)))
    # Processes without CUDA: SyncBatchNorm cannot run; said before anything is built.
    with pytest.raises(UsageError, match="--sync-bn needs CUDA"):
        train.setup(parse_args(_synthetic(run, "--sync-bn")), distributed.Procs(rank=0, world=2))
    assert not run.exists()


def test_run_folders_for_the_notebooks_existing_runs_policy(tmp_path):
    from ltp_core.teaching.runs import prepare_run_dir

    assert prepare_run_dir(tmp_path / "new", make_config(dataset="synthetic")) == "fresh"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not an ltp-train run folder"):
        prepare_run_dir(tmp_path / "other", make_config(dataset="synthetic"))
    for schedule in ("steplr", "cosineannealinglr"):
        run = tmp_path / schedule
        flags = _synthetic(run, "--model", "small_cnn", "--lr-scheduler", schedule)
        assert train.main(flags) == 0
        assert [r["lr"] for r in Trail.load(run)] == [0.05, 0.05]  # the start's lr, then the one epoch's
        assert prepare_run_dir(run, parse_args(flags), "resume") == "done"
        with pytest.raises(UsageError, match=r"other settings \(lr: 0.05 there, 0.1 now\)"):
            prepare_run_dir(run, parse_args([*flags, "--lr", "0.1"]), "resume")
        longer = parse_args([*flags, "--epochs", "2"])
        if schedule == "steplr":  # more epochs continue the run
            assert prepare_run_dir(run, longer, "resume") == "resume"
        else:  # a cosine schedule was built for the one epoch it had
            with pytest.raises(UsageError, match=r"other settings \(epochs: 1 there, 2 now\)"):
                prepare_run_dir(run, longer, "resume")
        assert prepare_run_dir(run, longer, "overwrite") == "fresh" and not run.exists()


# -- the configuration schema --------------------------------------------------------------

def test_yaml_config_flags_and_method_options(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: synthetic\nlr: 1e-3\nbatch-size: 16\nmethod_opt: {normalize: false}\n"
                      "ltp_exclude: first\namp: true\n")
    cfg = parse_args(["--config", str(config), "--lr", "0.5", "--method-opt", "init_threshold=1e-4",
                      "--ltp-t0", "0.02", "--ltp-exclude", "fc", "last", "--no-amp"])
    assert (cfg.dataset, cfg.lr, cfg.batch_size, cfg.amp) == ("synthetic", 0.5, 16, False)
    assert cfg.method_opt == {"normalize": False, "init_threshold": 1e-4}
    assert method_options(cfg) == {"normalize": False, "init_threshold": 1e-4, "temperature": 0.02,
                                   "exclude": ["fc"], "exclude_last": True}
    assert parse_args(["--config", str(config)]).lr == 1e-3  # YAML reads 1e-3 as a string: still a number
    # Values are YAML 1.2: 1e-4 is a float, a quoted '0' (a layer name) stays a string.
    cfg = parse_args(["--method-opt", "exclude=['0', 3]", "--method-opt", "init_threshold=1e-4",
                      "--dataset", "synthetic"])
    assert cfg.method_opt == {"exclude": ["0", 3], "init_threshold": 1e-4}
    config.write_text("dataset: synthetic\nmethod_opt: {exclude: ['8'], init_threshold: 2e-4}\n")
    assert parse_args(["--config", str(config)]).method_opt == {"exclude": ["8"], "init_threshold": 2e-4}
    assert yaml.safe_load("1e-4") == "1e-4"  # PyYAML's own loader is left as it is
    assert make_config(dataset="synthetic", wd=0.0).weight_decay == 0.0
    with pytest.raises(UsageError, match=r"unknown setting 'learning_rate'"):
        make_config(learning_rate=0.1)
    config.write_text("epoch: 3\n")
    with pytest.raises(UsageError, match=r"unknown setting 'epoch' \(did you mean epochs"):
        parse_args(["--config", str(config)])
    with pytest.raises(UsageError, match="given both"):
        method_options(make_config(dataset="synthetic", ltp_t0=0.1, method_opt={"temperature": 0.2}))
    with pytest.raises(UsageError, match="--dataset imagenet needs --data-path"):
        make_config()
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        make_config(dataset="synthetic", device="gpu")


def test_get_model_by_name():
    sizes = {name: sum(p.numel() for p in get_model(name, 10).parameters()) for name in ("resnet20", "resnet32",
                                                                                        "resnet56")}
    assert sizes == {"resnet20": 269_722, "resnet32": 464_154, "resnet56": 853_018}  # He et al.: 0.27M/0.46M/0.85M
    b = get_model("resnet20", 10, shortcut="B")
    assert sum(p.numel() for p in b.parameters()) > sizes["resnet20"]  # 1x1 projections on the shortcuts
    x = torch.randn(2, 3, 32, 32)
    assert b(x).shape == (2, 10)
    assert get_model("shufflenet_v2_x0_5", 7).fc.out_features == 7  # torchvision by name
    assert get_model("mlp", 3, in_channels=1, image_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert get_model("mixnet_s", 10).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)  # timm: a dev extra
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "timm", None)  # as if not installed: `import timm` raises ImportError
        with pytest.raises(ValueError, match="comes from timm, which is not installed: pip install timm"):
            get_model("mixnet_s", 10)
    with pytest.raises(ValueError, match="unknown model 'vgg17'"):
        get_model("vgg17", 10)
    vit = get_model("vit_b_32", 5, image_size=64)  # a ViT is built for the image size it is given
    assert vit(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_datasets_by_name(tiny_imagenet):
    d = build_datasets("imagenet", tiny_imagenet, train_crop_size=24, val_resize_size=32, val_crop_size=28)
    assert (d.num_classes, len(d.train), len(d.val), d.sample_shape) == (3, 24, 12, (3, 28, 28))
    assert d.train[0][0].shape == (3, 24, 24)
    s = build_datasets("synthetic", train_crop_size=8, synthetic_size=40, synthetic_classes=4)
    assert (len(s.train), len(s.val), s.num_classes) == (40, 10, 4)
    assert torch.equal(s.train[3][0], s.train[3][0]) and not torch.equal(s.train[3][0], s.val[3][0])
    g = build_datasets("digits", channels=1)
    assert g.sample_shape == (1, 8, 8) and len(g.train) == 1347
    # the sizes the engine checks against the model before loading anything
    assert image_sizes("imagenet", train_crop_size=24, val_crop_size=28) == (24, 28)
    assert image_sizes("synthetic", train_crop_size=8, val_crop_size=28) == (8, 8) == s.train[0][0].shape[1:]
    assert image_sizes("digits") == (8, 8) and image_sizes("cifar10") == (32, 32)


# -- models with a minimum input size ------------------------------------------------------

def _runs_on(name: str, size: int, train: bool, **options) -> bool:
    """Whether a (2, 3, size, size) batch goes through torchvision's model `name` (a ViT built
    for that size), without the project's check. On the meta device: the same shape checks
    as on CPU (compared by hand for each kind of failure), no arithmetic."""
    import torchvision

    if name.startswith("vit_"):
        options = {"image_size": size, **options}
    with torch.device("meta"):
        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
            model.train(train)
            with torch.no_grad():
                model(torch.zeros(2, 3, size, size))
        except (RuntimeError, AssertionError):  # AssertionError: a ViT's size check (torch._assert)
            return False
    return True


@pytest.mark.parametrize("name", sorted(MIN_INPUT_SIZES))
def test_min_input_sizes_are_the_measured_ones(name):
    least = min_input_size(name)
    assert _runs_on(name, least, False) and not _runs_on(name, least - 1, False)
    assert _runs_on(name, least, True) == (min_input_size(name, train=True) == least)


def test_min_input_sizes_of_the_special_models():
    # Inception v3's auxiliary classifier needs the full 299x299 in training mode (75 in eval)
    assert (min_input_size("inception_v3"), min_input_size("inception_v3", train=True)) == (75, 299)
    assert _runs_on("inception_v3", 299, True) and not _runs_on("inception_v3", 298, True)
    assert min_input_size("inception_v3", train=True, aux_logits=False) == 75
    assert _runs_on("inception_v3", 75, True, aux_logits=False)
    # a ViT is built for one size, a multiple of its patch; MaxViT for 224 only
    assert min_input_size("vit_b_16") == 16 and _runs_on("vit_b_16", 48, False) and not _runs_on("vit_b_16", 40, False)
    with pytest.raises(ValueError, match="vit_b_16 is built for one image size, 224x224 here, got 176x176"):
        check_input_size("vit_b_16", 176, image_size=224)
    with pytest.raises(ValueError, match="maxvit_t takes 224x224 images only"):
        check_input_size("maxvit_t", 256)
    assert _runs_on("maxvit_t", 224, False) and not _runs_on("maxvit_t", 256, False)
    assert min_input_size("resnet18") == 1 and _runs_on("resnet18", 1, True)
    # the builder refuses an image_size its model cannot run on, naming both
    with pytest.raises(ValueError, match="alexnet needs images of at least 63x63, got 32x32"):
        get_model("alexnet", 10, image_size=32)


def test_crops_below_the_models_minimum_fail_before_anything_runs(tiny_imagenet, tmp_path, capsys):
    run = tmp_path / "run"
    err = _one_line_error(capsys, _synthetic(run, "--model", "inception_v3", "--train-crop-size", "32"))
    assert err.endswith("--train-crop-size 32: inception_v3 needs images of at least 299x299 in training (its "
                        "auxiliary classifier; 75x75 with aux_logits=False), got 32x32; raise --train-crop-size")
    err = _one_line_error(capsys, _synthetic(run, "--model", "inception_v3", "--train-crop-size", "224"))
    assert err.endswith("got 224x224; raise --train-crop-size or pass --model-opt aux_logits=false")
    imagenet = ["--dataset", "imagenet", "--data-path", str(tiny_imagenet), "--model", "alexnet", "-j", "0",
                "--device", "cpu", "--no-progress", "--output-dir", str(run), "--train-crop-size", "64"]
    assert "--val-crop-size 32: alexnet needs images of at least 63x63, got 32x32; raise --val-crop-size" in \
        _one_line_error(capsys, [*imagenet, "--val-resize-size", "32", "--val-crop-size", "32"])
    assert "--dataset digits has 8x8 images: vgg11 needs images of at least 32x32, got 8x8; choose another --model" \
        in _one_line_error(capsys, ["--dataset", "digits", "--model", "vgg11", "--output-dir", str(run)])
    assert "--dataset cifar10 has 32x32 images: inception_v3 needs images of at least 299x299" in _one_line_error(
        capsys, ["--dataset", "cifar10", "--data-path", str(tmp_path / "nowhere"), "--model", "inception_v3",
                 "--output-dir", str(run)])  # said before the (missing) folder is read
    assert not run.exists()  # nothing written
    # at or above the minimum the check passes (Inception v3 without its auxiliary head: 75)
    for flags in (["--model", "inception_v3", "--train-crop-size", "75", "--model-opt", "aux_logits=false"],
                  ["--model", "googlenet", "--train-crop-size", "15"]):
        check_input_sizes(parse_args(_synthetic(run, *flags)))


# -- precision and memory format -----------------------------------------------------------

@pytest.mark.parametrize("device,dtype,channels_last", [
    ("cpu", "bf16", True),
    pytest.param("cuda", "bf16", True, marks=needs_cuda),
    pytest.param("cuda", "fp16", True, marks=needs_cuda),
    pytest.param("cuda", "fp16", False, marks=needs_cuda),
])
def test_amp_and_channels_last(tmp_path, device, dtype, channels_last):
    flags = _synthetic(tmp_path / "run", "--device", device, "--amp", "--amp-dtype", dtype)
    flags[flags.index("--epochs") + 1] = "2"
    if channels_last:
        flags.append("--channels-last")
    result = train.run(parse_args(flags))
    assert result.model.conv1.parametrizations.weight.original.is_contiguous(
        memory_format=torch.channels_last) == channels_last
    assert next(result.model.parameters()).device.type == device
    trail = Trail.load(tmp_path / "run")
    assert len(trail) == 3 and all(0 <= r["hard_accuracy"] <= 1 for r in trail)
    ckpt = _checkpoint(tmp_path / "run")
    assert bool(ckpt["scaler"]) == (dtype == "fp16")  # the gradient scaler only with fp16
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
