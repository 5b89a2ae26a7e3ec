"""Datasets the suite trains on, none of them downloaded.

- digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), real
  data that ships with the library, split into a seeded stratified train/test pair.
- synthetic: a seeded Gaussian-cluster classification task of any size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TensorSplit", "load_digits", "make_synthetic", "loader"]


@dataclass
class TensorSplit:
    """Train/test tensors of a small in-memory dataset.

    x_*: float32, shape (N, 64) for flat digits or (N, 1, 8, 8) as images; y_*: int64 (N,).
    """
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    def to(self, device: str | torch.device) -> "TensorSplit":
        return TensorSplit(self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                           self.y_test.to(device), self.num_classes)


def load_digits(test_fraction: float = 0.25, seed: int = 0, images: bool = False) -> TensorSplit:
    """scikit-learn's bundled digits, standardized with the training split's mean and std.

    Args:
        test_fraction: share held out for testing, in (0, 1); stratified by class.
        seed: fixes the split.
        images: False gives flat (N, 64) rows, True (N, 1, 8, 8) images.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-3)  # some border pixels are always 0
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if images:
        x_tr, x_te = x_tr.view(-1, 1, 8, 8), x_te.view(-1, 1, 8, 8)
    return TensorSplit(x_tr, torch.tensor(y_tr), x_te, torch.tensor(y_te), 10)


def make_synthetic(num_train: int = 1024, num_test: int = 512, num_features: int = 32, num_classes: int = 4,
                   noise: float = 1.0, seed: int = 0) -> TensorSplit:
    """Gaussian clusters: each class a random centre in R^num_features, points centre + noise * N(0, I).

    Only a few features carry the class (the others are pure noise), so a good network
    needs few weights: a task where pruning has something to find.
    """
    for name, v in (("num_train", num_train), ("num_test", num_test), ("num_features", num_features),
                    ("num_classes", num_classes)):
        if not (isinstance(v, int) and v > 0):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    informative = max(1, num_features // 4)
    centres = torch.zeros(num_classes, num_features)
    centres[:, :informative] = 2.0 * torch.randn(num_classes, informative, generator=g)

    def draw(n):
        y = torch.randint(num_classes, (n,), generator=g)
        return centres[y] + noise * torch.randn(n, num_features, generator=g), y

    x_tr, y_tr = draw(num_train)
    x_te, y_te = draw(num_test)
    return TensorSplit(x_tr, y_tr, x_te, y_te, num_classes)


def loader(x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader over in-memory tensors; shuffling is seeded so runs repeat exactly."""
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=g)
