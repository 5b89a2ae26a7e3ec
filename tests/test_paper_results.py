"""The paper's numbers and the torchrun commands notebook 07 builds from settings."""
import pytest

from ltp_core.teaching.paper import PAPER_RESULTS, markdown_table
from ltp_core.teaching.runs import command_config, train_command


def test_paper_headline_numbers():
    assert PAPER_RESULTS["alexnet"].compression == pytest.approx(26.4)
    assert PAPER_RESULTS["resnet50"].compression == pytest.approx(9.1)


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
