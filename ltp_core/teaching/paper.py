"""The paper's headline numbers as data, the dense references they start from, and the facts about
its networks the notebooks need.

    from ltp_core.teaching.paper import PAPER_RESULTS, DENSE_REFERENCE, paper_table

- `PAPER_RESULTS`: what Azarian et al. report for the ImageNet networks: compression and top-5 of
  the pruned network. Only the figures this project has on record are filled in; the others are
  None (the paper prunes those networks too).
- `DENSE_REFERENCE`: the dense starting points, one value per network, taken from torchvision's
  weights table (`torchvision.models.get_weight(name).meta["_metrics"]`, no download needed);
  `torchvision_reference(name)` reads that table, so a test can hold the two together.
- `paper_table()`: both side by side, one row per network, every dense figure with its source.
- `missing_requirement(model)`, `min_image_size(model)`: what a network needs to run here.
- `markdown_table(rows)`: a results table for a notebook or report.

The `ltp-train` runs that reproduce them are built by `ltp_core.teaching.imagenet_runs`.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..models import min_input_size

__all__ = ["PAPER", "PaperResult", "PAPER_RESULTS", "PAPER_MODELS", "DenseReference", "DENSE_REFERENCE",
           "torchvision_reference", "paper_table", "REQUIREMENTS", "missing_requirement", "min_image_size",
           "markdown_table"]

PAPER = ("Azarian, Bhalgat, Lee, Blankevoort: Learned Threshold Pruning, arXiv:2003.00075 "
         "(ImageNet, from pretrained torchvision networks)")


@dataclass(frozen=True)
class PaperResult:
    """One network of the paper's ImageNet experiments.

    compression: prunable weights / surviving weights of the pruned network (None: not on
    record here); top5: its top-5 validation accuracy (fraction); epochs: the pruning run's
    length where the paper gives it; source: where the network comes from (torchvision or timm).
    The dense starting point is not here: it is `DENSE_REFERENCE[model]`, one value per network.
    """
    model: str
    compression: float | None = None
    top5: float | None = None
    epochs: int | None = None
    source: str = "torchvision"

    @property
    def sparsity(self) -> float | None:
        """Fraction of prunable weights removed: compression c keeps 1/c of them, so s = 1 - 1/c."""
        return None if self.compression is None else 1.0 - 1.0 / self.compression

    @property
    def on_record(self) -> bool:
        return self.compression is not None and self.top5 is not None


PAPER_RESULTS: dict[str, PaperResult] = {
    "alexnet": PaperResult("alexnet", compression=26.4, top5=0.791),
    "resnet50": PaperResult("resnet50", compression=9.1, top5=0.920, epochs=30),
    "mobilenet_v2": PaperResult("mobilenet_v2"),
    "efficientnet_b0": PaperResult("efficientnet_b0"),
    "mixnet_s": PaperResult("mixnet_s", source="timm"),
}
PAPER_MODELS: tuple[str, ...] = tuple(PAPER_RESULTS)


@dataclass(frozen=True)
class DenseReference:
    """A dense starting network's ImageNet-1K validation accuracy (fractions), from the weights
    table of the library that ships the weights; `weights` names the entry, e.g.
    "ResNet50_Weights.IMAGENET1K_V1" (the first torchvision weights, the paper's starting point)."""
    weights: str
    top1: float
    top5: float

    @property
    def source(self) -> str:
        return f"torchvision weights table, {self.weights}"


# torchvision's table, copied so that reading it needs no torchvision import; test_paper_results
# checks every value against `torchvision_reference`. MixNet-S (timm) has no entry here.
DENSE_REFERENCE: dict[str, DenseReference] = {
    "alexnet": DenseReference("AlexNet_Weights.IMAGENET1K_V1", top1=0.56522, top5=0.79066),
    "resnet50": DenseReference("ResNet50_Weights.IMAGENET1K_V1", top1=0.7613, top5=0.92862),
    "mobilenet_v2": DenseReference("MobileNet_V2_Weights.IMAGENET1K_V1", top1=0.71878, top5=0.90286),
    "efficientnet_b0": DenseReference("EfficientNet_B0_Weights.IMAGENET1K_V1", top1=0.77692, top5=0.93532),
}


def torchvision_reference(weights: str) -> DenseReference:
    """The DenseReference torchvision's own weights table gives for `weights` (e.g.
    "ResNet50_Weights.IMAGENET1K_V1"): acc@1 and acc@5 of `meta["_metrics"]["ImageNet-1K"]`,
    as fractions. Reads the table only; nothing is downloaded."""
    import torchvision

    metrics = torchvision.models.get_weight(weights).meta["_metrics"]["ImageNet-1K"]
    return DenseReference(weights, top1=metrics["acc@1"] / 100, top5=metrics["acc@5"] / 100)


def paper_table(models: Iterable[str] = PAPER_MODELS) -> list[dict[str, Any]]:
    """One row per network: the paper's compression, sparsity and pruned top-5 beside the dense
    top-1/top-5 it starts from, with that dense figure's source (None where not on record)."""
    rows = []
    for model in models:
        paper, dense = PAPER_RESULTS.get(model, PaperResult(model)), DENSE_REFERENCE.get(model)
        rows.append({"network": model, "library": paper.source, "paper compression": paper.compression,
                     "paper sparsity": paper.sparsity, "paper top-5": paper.top5,
                     "dense top-1": dense and dense.top1, "dense top-5": dense and dense.top5,
                     "dense source": dense.source if dense else None})
    return rows


# Python packages a model needs beyond torch/torchvision: {model: module name}.
REQUIREMENTS: dict[str, str] = {"mixnet_s": "timm", "mixnet_m": "timm", "mixnet_l": "timm", "mixnet_xl": "timm"}

def missing_requirement(model: str) -> str | None:
    """The name of the optional package `model` needs and this environment lacks, else None."""
    module = REQUIREMENTS.get(model)
    if module is not None and importlib.util.find_spec(module) is None:
        return module
    return None


def min_image_size(model: str) -> int:
    """The smallest square image side (pixels) to train `model` on here: 32, or more where its
    layers need it (`ltp_core.models.min_input_size` in training mode: AlexNet 63, Inception v3
    299 with its auxiliary head)."""
    return max(32, min_input_size(model, train=True))


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of `rows` (dicts); columns default to the first row's keys.
    None and NaN show as a dash, floats with 4 significant digits."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
