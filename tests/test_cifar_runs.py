"""Notebook 05's run helpers (`ltp_core.teaching.cifar_runs`): the validation copy of a CIFAR-10
folder, an in-process ltp-train run with its printed command, stage sparsity, top-1 over a dataset."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from ltp_core.core.layers import prunable_layers
from ltp_core.data import cifar10_folder, load_digits, write_digits_cifar10
from ltp_core.models import get_model
from ltp_core.teaching.cifar_runs import dataset_top1, holdout_cifar10, resnet_stage, run_logged, stage_sparsity


def _batches(root, names):
    folder = root / "cifar-10-batches-py"
    return [pickle.loads((folder / n).read_bytes(), encoding="latin1") for n in names]


TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def test_holdout_cifar10_carves_validation_from_training_batches_only(tmp_path):
    source = write_digits_cifar10(tmp_path / "digits", seed=0)
    dest = holdout_cifar10(source, tmp_path / "val", fraction=0.2, seed=0)
    src_train, src_test = _batches(source, TRAIN), _batches(source, ["test_batch"])[0]
    new_train, held = _batches(dest, TRAIN), _batches(dest, ["test_batch"])[0]
    rows = lambda bs: [r.tobytes() for b in bs for r in b["data"]]  # noqa: E731
    labels = lambda bs: [v for b in bs for v in b["labels"]]  # noqa: E731
    # every training image lands in exactly one of the two parts, with its label; no test image does
    before = sorted(zip(rows(src_train), labels(src_train)))
    after = sorted(zip(rows(new_train) + rows([held]), labels(new_train) + labels([held])))
    assert before == after and len(before) == 1347
    assert len(held["labels"]) == 270 and not set(rows([held])) & set(rows(new_train))
    assert not set(rows([src_test])) & set(rows([held]) + rows(new_train))
    # stratified: each digit keeps its share of the held-out part (within one image)
    share = np.bincount(labels(src_train), minlength=10) * 0.2
    assert np.abs(np.bincount(held["labels"], minlength=10) - share).max() <= 1
    # the same validation images, in the same order, as the in-memory digits of the other notebooks
    assert held["labels"] == load_digits(val_fraction=0.2, seed=0).y_val.tolist()
    # the real CIFAR-10 loader reads the copy, with the source's class names
    data = cifar10_folder(dest)
    assert (len(data.train), len(data.val)) == (1077, 270) and data.classes == cifar10_folder(source).classes
    # another seed holds out other images; a bad fraction is refused
    other = _batches(holdout_cifar10(source, tmp_path / "val1", 0.2, seed=1), ["test_batch"])[0]
    assert set(rows([other])) != set(rows([held]))
    with pytest.raises(ValueError, match="fraction"):
        holdout_cifar10(source, tmp_path / "bad", fraction=1.0)


def test_run_logged_prints_the_command_it_runs_and_reuses_a_finished_run(tmp_path, capsys):
    settings = dict(dataset="synthetic", synthetic_size=16, synthetic_classes=4, train_crop_size=8, model="resnet20",
                    batch_size=8, epochs=1, lr=0.05, workers=0, device="cpu", method="ltp", ltp_threshold_lr=1e-4)
    trail, same, seconds = run_logged(tmp_path / "run", settings)
    printed = capsys.readouterr().out
    assert same and seconds > 0 and len(trail) == 2 and trail[-1]["step"] == 2
    assert printed.startswith("ltp-train --dataset synthetic") and "--ltp-threshold-lr 0.0001" in printed
    again, same, _ = run_logged(tmp_path / "run", settings, existing_runs="resume")
    assert same and "reusing the finished run" in capsys.readouterr().out
    assert [r["hard_accuracy"] for r in again] == [r["hard_accuracy"] for r in trail]


def test_resnet_stage_names_every_layer_of_resnet20():
    names = [n for n, _ in prunable_layers(get_model("resnet20", 10))]
    stages = [resnet_stage(n) for n in names]
    assert stages[0] == "stem" and stages[-1] == "head"
    assert [stages.count(f"stage {k}") for k in (1, 2, 3)] == [6, 6, 6]   # 3 blocks of 2 convs each
    with pytest.raises(ValueError, match="not a layer of a CIFAR ResNet"):
        resnet_stage("features.0")


def test_stage_sparsity_weights_layers_by_their_size():
    sparsity = {"conv1": 0.0, "layer1.0.conv1": 1.0, "layer1.0.conv2": 0.0, "fc": 0.5}
    sizes = {"conv1": 10, "layer1.0.conv1": 30, "layer1.0.conv2": 10, "fc": 4}
    assert stage_sparsity(sparsity, sizes) == {"stem": 0.0, "stage 1": 0.75, "head": 0.5}   # not the mean 0.5
    assert list(stage_sparsity(sparsity, sizes, stage_of=lambda n: "all")) == ["all"]


def test_dataset_top1_counts_correct_predictions():
    torch.manual_seed(0)
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    model = nn.Linear(4, 3)
    expected = int((model(x).argmax(1) == y).sum()) / 50
    dataset = torch.utils.data.TensorDataset(x, y)
    assert dataset_top1(model, dataset, batch_size=7) == expected and 0 < expected < 1
    perfect = torch.utils.data.TensorDataset(torch.eye(3), torch.arange(3))
    assert dataset_top1(nn.Identity(), perfect, batch_size=2) == 1.0
