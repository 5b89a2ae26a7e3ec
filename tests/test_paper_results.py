"""The paper's numbers, the dense references they start from, and the torchrun commands notebook 07 builds."""
import pytest

from ltp_core.teaching.paper import DENSE_REFERENCE, PAPER_RESULTS, markdown_table, paper_table, torchvision_reference
from ltp_core.teaching.runs import command_config, train_command


@pytest.mark.parametrize("model", sorted(DENSE_REFERENCE))
def test_dense_reference_is_torchvisions_weights_table(model):
    # the one dense figure per network the notebook shows must be what torchvision's table says
    ref = DENSE_REFERENCE[model]
    table = torchvision_reference(ref.weights)
    assert (ref.top1, ref.top5) == pytest.approx((table.top1, table.top5), abs=1e-9)
    assert ref.weights.endswith("IMAGENET1K_V1")  # the first torchvision weights: the paper's starting point


def test_paper_table_shows_the_dense_reference_with_its_source():
    rows = {r["network"]: r for r in paper_table()}
    resnet = torchvision_reference("ResNet50_Weights.IMAGENET1K_V1")
    assert rows["resnet50"]["dense top-5"] == pytest.approx(resnet.top5)
    assert "ResNet50_Weights.IMAGENET1K_V1" in rows["resnet50"]["dense source"]
    assert rows["mixnet_s"]["dense top-5"] is None and rows["mixnet_s"]["library"] == "timm"


@pytest.mark.parametrize("model", [m for m, r in PAPER_RESULTS.items() if r.on_record])
def test_paper_figures_are_consistent(model):
    paper, dense = PAPER_RESULTS[model], DENSE_REFERENCE[model]
    assert 1 / (1 - paper.sparsity) == pytest.approx(paper.compression)
    # the target the notebook imposes (rounded to 4 digits) lands on the paper's compression
    assert 1 / (1 - round(paper.sparsity, 4)) == pytest.approx(paper.compression, rel=2e-3)
    # the paper's headline: pruned top-5 within one point of the dense network it starts from
    assert abs(paper.top5 - dense.top5) <= 0.01


def test_torchrun_command_round_trips_to_the_same_settings():
    settings = {"dataset": "synthetic", "model": "resnet18", "epochs": 2, "batch_size": 8,
                "ltp_lambda": 2.5, "ltp_t0": 0.05}
    command = train_command(settings, nproc_per_node=2)
    assert command[:5] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m"]
    cfg = command_config(command)
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.ltp_lambda, cfg.ltp_t0) == ("resnet18", 2, 8, 2.5, 0.05)
    assert train_command(settings)[0] == "ltp-train"
    with pytest.raises(ValueError, match="nproc_per_node"):
        train_command(settings, nproc_per_node=0)


def test_markdown_table():
    table = markdown_table([{"model": "alexnet", "top5": 0.791, "ours": None}])
    assert table.splitlines() == ["| model | top5 | ours |", "|---|---|---|", "| alexnet | 0.791 | — |"]


@pytest.mark.parametrize("model", ["alexnet", "inception_v3"])
def test_min_image_size_is_the_least_a_network_trains_on(model):
    # notebook 07 trains each chosen network at max(image_size, min_image_size(model))
    import torch

    from ltp_core.models import get_model
    from ltp_core.teaching.paper import min_image_size

    size = min_image_size(model)
    assert size > 32
    net = get_model(model, 10, image_size=size).train()
    out = net(torch.randn(2, 3, size, size))
    (out[0] if isinstance(out, tuple) else out).sum().backward()  # Inception: (logits, aux logits)
    with pytest.raises(RuntimeError):  # a pixel less fails deep inside the forward
        net(torch.randn(2, 3, size - 1, size - 1))
