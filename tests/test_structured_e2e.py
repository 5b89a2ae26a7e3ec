"""The structured methods end to end on real architectures, the combinations tests/test_structured.py
and tests/test_wgates.py leave out: `ltp-train --method M --model N` (in process), then the
`ltp-pick` command (a subprocess, the sparsest network: --min-accuracy 0) writes the chosen
network's plain state_dict; it is the chosen record's checkpoint, loads into the architecture
built at the smaller widths (fewer parameters, the FLOPs the trail recorded), and the run's last
network computes what the method's deployed network (inside `hard_masks()`) and its
`finalize()` compute, to 1e-5. ltp-pick chooses the last network unless the run's first one was
as sparse and as accurate or sparser (L1-filter prunes before training, DSA-style starts at its
projected widths): then the last record's checkpoint is loaded the same way.

ResNet-20 runs on real handwritten digits in CIFAR-10's format, ResNet-18 and MobileNetV2 on a
tiny ImageNet-layout folder (3 classes, 32x32 images); one epoch of batches of 8 on the CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ltp_core.core.flops import layer_flops
from ltp_core.core.trail import Trail
from ltp_core.engine import train
from ltp_core.engine.train import parse_args
from ltp_core.methods.surgery import load_pruned_state_dict
from ltp_core.models import get_model

# (method, model, --method-opt): what tests/test_structured.py runs already (l1_filter, greg, gdp and dsa
# on resnet20, gdp on resnet18, l1_filter on mobilenet_v2) is not repeated here
RUNS = [
    ("wgates", "resnet20", ["budget=0.6"]),
    ("l1_filter", "resnet18", ["ratio=0.3"]),
    ("greg", "resnet18", ["interval=1"]),
    ("dsa", "resnet18", ["budget=0.6"]),
    ("wgates", "resnet18", ["budget=0.6"]),
    ("gdp", "mobilenet_v2", ["budget=0.7"]),
    ("greg", "mobilenet_v2", ["interval=1"]),
    ("dsa", "mobilenet_v2", ["budget=0.6"]),
    ("wgates", "mobilenet_v2", ["budget=0.6"]),
]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(b.abs().max()))
    assert a.shape == b.shape and float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


@pytest.mark.parametrize("method, model, opts", RUNS, ids=[f"{m}-{n}" for m, n, _ in RUNS])
def test_train_pick_load_equals_finalize(method, model, opts, tiny_cifar, tiny_imagenet, tmp_path):
    out = tmp_path / "run"
    cifar = model == "resnet20"
    data = (["--dataset", "cifar10", "--data-path", str(tiny_cifar)] if cifar else
            ["--dataset", "imagenet", "--data-path", str(tiny_imagenet), "--train-crop-size", "32",
             "--val-resize-size", "32", "--val-crop-size", "32"])
    flags = [*data, "--model", model, "--method", method, *[a for o in opts for a in ("--method-opt", o)],
             "--epochs", "1", "-b", "8", "--lr", "0.02", "-j", "0", "--device", "cpu", "--no-progress",
             "--output-dir", str(out)]
    result = train.run(parse_args(flags))
    classes = 10 if cifar else 3
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    live, net = result.method, result.model.eval()
    with torch.no_grad(), live.hard_masks():
        deployed = net(x)

    # the ltp-pick command: the sparsest network of the trail (the last one), written as a plain state_dict
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    picked_path = tmp_path / "picked.pt"
    cmd = [sys.executable, "-m", "ltp_core.deploy.pick", str(out), "--min-accuracy", "0", "--out", str(picked_path),
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    trail = Trail.load(out)
    last = trail[-1]
    assert record["sparsity"] == max(r["sparsity"] for r in trail.records) > 0
    picked = torch.load(picked_path, weights_only=True)
    written = trail.load_checkpoint(record)
    assert list(picked) == list(written) and all(torch.equal(v, written[k]) for k, v in picked.items())

    dense = get_model(model, classes, image_size=32)
    dense_flops = layer_flops(dense, x[:1])["total"]
    plain_net = load_pruned_state_dict(get_model(model, classes, image_size=32).eval(), picked)  # strict
    assert sum(p.numel() for p in plain_net.parameters()) < sum(p.numel() for p in dense.parameters())
    assert layer_flops(plain_net, x[:1])["total"] == record["flops"] < dense_flops  # the trail's FLOPs are exact
    if record["step"] != last["step"]:  # an earlier network was chosen: the last one, loaded the same way
        plain_net = load_pruned_state_dict(get_model(model, classes, image_size=32).eval(),
                                           trail.load_checkpoint(last))
        assert layer_flops(plain_net, x[:1])["total"] == last["flops"] < dense_flops
    finalized = live.finalize()
    assert list(plain_net.state_dict()) == list(finalized.state_dict())
    with torch.no_grad():
        got = plain_net(x)
        _close(got, deployed)
        _close(got, finalized(x))


def test_trail_flops_of_l1_filter_are_the_pruned_networks():
    """What ltp-train records as an L1-filter run's FLOPs (`measure`) is what the network it
    deploys costs, as for the other structured methods."""
    from ltp_core.core.measure import measure
    from ltp_core.methods import build

    torch.manual_seed(0)
    model = get_model("resnet20", 10, image_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    method = build("l1_filter", model, ratio=0.3, example_input=x)
    deployed = layer_flops(method.finalized_copy(), x)["total"]
    assert method.flops() == deployed  # the method's own count is right
    # scaling the already smaller layers by their density again gave 18859368 against 39061764
    assert measure(model, method, lambda: 0.5, x)["flops"] == deployed
