#!/usr/bin/env python
"""Generate tiny datasets in the real on-disk layouts, for tests and smoke runs.

    python data/make_tiny_imagenet.py data/tiny-imagenet                  # ImageFolder layout
    python data/make_tiny_imagenet.py data/tiny-cifar10 --format cifar10  # cifar-10-batches-py pickles

ImageNet layout: `<out>/train/<wnid>/<wnid>_<i>.JPEG` and `<out>/val/<wnid>/...`, the layout
`ltp-train --dataset imagenet --data-path <out>` reads with torchvision's ImageFolder.
CIFAR-10 layout: `<out>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`,
the pickles `torchvision.datasets.CIFAR10(<out>, download=False)` reads (their md5 sums
differ from the official release's, which `ltp_core.data.cifar10_folder` notes and accepts).

The images are learnable on purpose: each class has its own colour and stripe direction,
plus noise, so a short run shows the accuracy rising above chance. Everything is seeded.
Standard library, numpy and Pillow only (both come with torchvision).
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

__all__ = ["make_tiny_imagenet", "make_cifar10_sample", "class_image"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_image(label: int, size: int, rng: np.random.Generator, num_classes: int = 10) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`: a class colour, stripes at a class
    angle, and noise."""
    hue = label / max(1, num_classes)
    colour = 127 + 100 * np.array([np.cos(2 * np.pi * hue), np.cos(2 * np.pi * (hue + 1 / 3)),
                                   np.cos(2 * np.pi * (hue + 2 / 3))])
    angle = np.pi * label / max(1, num_classes)
    yy, xx = np.mgrid[0:size, 0:size] / size
    stripes = np.sin(2 * np.pi * 3 * (np.cos(angle) * xx + np.sin(angle) * yy))
    img = colour[None, None, :] + 60 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_tiny_imagenet(root: str | Path, num_classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                       image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny ImageNet-layout folder at `root` (JPEG images, wnid-style class folders
    n00000000, n00000001, ...) and return its path."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            wnid = f"n{c:08d}"
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(class_image(c, image_size, rng, num_classes)).save(
                    folder / f"{wnid}_{i}.JPEG", quality=95)
    return root


def make_cifar10_sample(root: str | Path, per_batch: int = 10, test_size: int | None = None,
                        seed: int = 0) -> Path:
    """Write `<root>/cifar-10-batches-py/` with five training batches of `per_batch` 32x32
    images each, a test batch of `test_size` (default per_batch) and batches.meta, in
    CIFAR-10's python pickle format. Returns `root`."""
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int, name: str) -> dict:
        labels = [int(i % 10) for i in range(n)]
        rng.shuffle(labels)
        images = np.stack([class_image(y, 32, rng) for y in labels])  # (n, 32, 32, 3)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3 * 32 * 32)   # CIFAR rows: R plane, G, B
        return {"batch_label": name, "labels": labels, "data": data,
                "filenames": [f"{name.replace(' ', '_')}_{i}.png" for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, f"training batch {i} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test_size or per_batch, "testing batch 1 of 1"), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--format", choices=("imagenet", "cifar10"), default="imagenet")
    p.add_argument("--classes", type=int, default=3, help="imagenet: number of class folders")
    p.add_argument("--train-per-class", type=int, default=8, help="imagenet: training images per class")
    p.add_argument("--val-per-class", type=int, default=4, help="imagenet: validation images per class")
    p.add_argument("--size", type=int, default=32, help="imagenet: image side in pixels")
    p.add_argument("--per-batch", type=int, default=10, help="cifar10: images per batch file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.format == "imagenet":
        out = make_tiny_imagenet(a.out, a.classes, a.train_per_class, a.val_per_class, a.size, a.seed)
    else:
        out = make_cifar10_sample(a.out, a.per_batch, seed=a.seed)
    print(f"wrote {a.format} sample to {out}")


if __name__ == "__main__":
    main()
