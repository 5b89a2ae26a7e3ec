"""The paper's headline numbers as data, and the facts about its networks the notebooks need.

    from ltp_core.teaching.paper import PAPER_RESULTS, markdown_table

- `PAPER_RESULTS`: what Azarian et al. report for the ImageNet networks: compression
  and top-5 of the pruned network, top-5 of the dense one. Only the figures this project has
  on record are filled in; the others are None (the paper prunes those networks too).
- `missing_requirement(model)`, `min_image_size(model)`: what a network needs to run here.
- `markdown_table(rows)`: a results table for a notebook or report.

The `ltp-train` runs that reproduce them are built by `ltp_core.teaching.runs`.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..models import min_input_size

__all__ = ["PAPER", "PaperResult", "PAPER_RESULTS", "PAPER_MODELS", "REQUIREMENTS", "missing_requirement",
           "min_image_size", "markdown_table"]

PAPER = ("Azarian, Bhalgat, Lee, Blankevoort: Learned Threshold Pruning, arXiv:2003.00075 "
         "(ImageNet, from pretrained torchvision networks)")


@dataclass(frozen=True)
class PaperResult:
    """One network of the paper's ImageNet experiments.

    compression: prunable weights / surviving weights of the pruned network (None: not on
    record here); top5: its top-5 validation accuracy (fraction); dense_top5: the dense
    starting network's; epochs: the pruning run's length where the paper gives it;
    source: where the network comes from (torchvision or timm).
    """
    model: str
    compression: float | None = None
    top5: float | None = None
    dense_top5: float | None = None
    epochs: int | None = None
    source: str = "torchvision"

    @property
    def sparsity(self) -> float | None:
        """Fraction of prunable weights removed: 1 - 1/compression."""
        return None if self.compression is None else 1.0 - 1.0 / self.compression

    @property
    def on_record(self) -> bool:
        return self.compression is not None and self.top5 is not None


PAPER_RESULTS: dict[str, PaperResult] = {
    "alexnet": PaperResult("alexnet", compression=26.4, top5=0.791, dense_top5=0.7909),
    "resnet50": PaperResult("resnet50", compression=9.1, top5=0.920, dense_top5=0.9287, epochs=30),
    "mobilenet_v2": PaperResult("mobilenet_v2"),
    "efficientnet_b0": PaperResult("efficientnet_b0"),
    "mixnet_s": PaperResult("mixnet_s", source="timm"),
}
PAPER_MODELS: tuple[str, ...] = tuple(PAPER_RESULTS)

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
