"""Datasets the suite trains on, none of them downloaded.

- digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), real
  data that ships with the library, split into a seeded stratified train/test pair, with an
  optional validation split carved from the training share (choices are made on it; the
  test split is only reported). `write_digits_cifar10` also writes them in CIFAR-10's
  on-disk format, so the real CIFAR-10 loader can read them.
- synthetic: a seeded Gaussian-cluster classification task of any size.

For the training engine (`ltp_core.engine.train`), `build_datasets(name, path)` gives image datasets:
ImageNet in the ImageFolder layout, CIFAR-10 from its python pickles, digits as 8x8 images,
and `SyntheticImages` (FakeData-style, learnable) for smoke runs.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = ["TensorSplit", "load_digits", "make_synthetic", "loader", "DataError", "ImageDatasets", "DATASETS",
           "build_datasets", "imagenet_folder", "imagenet_transforms", "cifar10_folder", "SyntheticImages",
           "synthetic_images", "digits_images", "image_sizes", "read_image", "write_digits_cifar10",
           "carve_validation", "dataset_labels"]


@dataclass
class TensorSplit:
    """Train/validation/test tensors of a small in-memory dataset.

    x_*: float32, shape (N, 64) for flat digits or (N, 1, 8, 8) as images; y_*: int64 (N,).
    x_val/y_val are None when no validation split was asked for. The validation split is for
    choosing (recipes, calibration, picking from a trail); the test split is only reported.
    """
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    def to(self, device: str | torch.device) -> TensorSplit:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TensorSplit(move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test),
                           self.num_classes, move(self.x_val), move(self.y_val))

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(x, y) of 'train', 'val' or 'test'; asking for 'val' without one is a ValueError."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; valid splits: ['train', 'val', 'test']")
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if x is None:
            raise ValueError("this TensorSplit has no validation split; load it with val_fraction > 0")
        return x, y


def load_digits(test_fraction: float = 0.25, seed: int = 0, images: bool = False,
                val_fraction: float = 0.0) -> TensorSplit:
    """scikit-learn's bundled digits, standardized with the training split's mean and std.

    Args:
        test_fraction: share held out for testing, in (0, 1); stratified by class.
        seed: fixes the split.
        images: False gives flat (N, 64) rows, True (N, 1, 8, 8) images.
        val_fraction: share of the *training* part held out for validation, in [0, 1);
            stratified; 0 gives no validation split. The test split does not depend on it.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_va = y_va = None
    if val_fraction > 0:
        x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=val_fraction, random_state=seed,
                                                  stratify=y_tr)
    as_x = lambda a: None if a is None else torch.tensor(a, dtype=torch.float32)  # noqa: E731
    x_tr, x_va, x_te = as_x(x_tr), as_x(x_va), as_x(x_te)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-3)  # some border pixels are always 0
    norm = lambda t: None if t is None else (t - mean) / std  # noqa: E731
    x_tr, x_va, x_te = norm(x_tr), norm(x_va), norm(x_te)
    if images:
        x_tr, x_te = x_tr.view(-1, 1, 8, 8), x_te.view(-1, 1, 8, 8)
        x_va = None if x_va is None else x_va.view(-1, 1, 8, 8)
    return TensorSplit(x_tr, torch.tensor(y_tr), x_te, torch.tensor(y_te), 10,
                       x_va, None if y_va is None else torch.tensor(y_va))


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


# -- image datasets for the training engine (ltp_core.engine.train) ---------------------------
#
# Each builder returns an `ImageDatasets` (train and val `Dataset`s of (image tensor, label)
# pairs, the class names, the shape of one image). A folder that is missing or not in the
# expected layout raises `DataError`, whose one-line message names the path and the layout
# (data/README.md says where each dataset goes). Nothing is ever downloaded.

DATASETS = ("imagenet", "cifar10", "digits", "synthetic")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
IMAGENET_LAYOUT = "{p}/train/<class>/<image> and {p}/val/<class>/<image> (ImageFolder layout, see data/README.md)"
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")
CIFAR10_LAYOUT = ("{p}/cifar-10-batches-py/ holding data_batch_1..5, test_batch and batches.meta (the extracted "
                  "cifar-10-python.tar.gz, see data/README.md)")


class DataError(ValueError):
    """A dataset folder that is missing or malformed; the message is one line naming the path
    and the layout that was expected."""


@dataclass
class ImageDatasets:
    """Train and validation splits of an image classification dataset.

    train, val: `Dataset`s of (float image tensor (C, H, W), int label); classes: the class
    names, in label order; sample_shape: (C, H, W) of one validation image; notes: remarks
    for the user (e.g. "files differ from the official release").
    """
    train: Dataset
    val: Dataset
    classes: list[str]
    sample_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)
    # The training images under the evaluation transform (no augmentation): what a validation
    # split carved from training is read through (`carve_validation`). None: same as `train`.
    train_eval: Dataset | None = None
    # After `carve_validation`: the dataset's own held-out split, reported only (`val` is then
    # the carved validation split, the one choices are made on).
    test: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def imagenet_transforms(train_crop_size: int = 224, val_resize_size: int = 256, val_crop_size: int = 224,
                        interpolation: str = "bilinear"):
    """The standard ImageNet transforms of torchvision's classification references:
    train RandomResizedCrop + horizontal flip, eval Resize + CenterCrop; both normalized."""
    from torchvision import transforms as T

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    mode = T.InterpolationMode(interpolation)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(train_crop_size, interpolation=mode, antialias=True),
                       T.RandomHorizontalFlip(), T.PILToTensor(), T.ConvertImageDtype(torch.float), normalize])
    val = T.Compose([T.Resize(val_resize_size, interpolation=mode, antialias=True), T.CenterCrop(val_crop_size),
                     T.PILToTensor(), T.ConvertImageDtype(torch.float), normalize])
    return train, val


def read_image(path: str):
    """An image file as an RGB PIL image (torchvision's `default_loader`), for `ImageFolder`. A
    file that cannot be read (not an image, damaged, unreadable) is a DataError naming it: it
    surfaces mid-epoch, often in a DataLoader worker, where PIL's own error would not say
    which file of the dataset it was."""
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except UnidentifiedImageError:
        raise DataError(f"cannot read {path}: not an image PIL recognizes (a damaged or misnamed file); "
                        "replace or delete it") from None
    except OSError as e:  # truncated image, permission denied, gone since the folder was listed
        reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read {path}: {reason}; replace or delete it") from None


def imagenet_folder(path: str | os.PathLike, train_crop_size: int = 224, val_resize_size: int = 256,
                    val_crop_size: int = 224, interpolation: str = "bilinear") -> ImageDatasets:
    """ImageNet (or any dataset) in the ImageFolder layout: `path/train/<class>/*.JPEG` and
    `path/val/<class>/*.JPEG` with the same class folders, read with torchvision's
    `ImageFolder` and the standard transforms. Labels are the sorted class folder names. An
    image that cannot be read raises DataError naming it when it is read (`read_image`)."""
    from torchvision.datasets import ImageFolder

    root = Path(path).expanduser()
    layout = IMAGENET_LAYOUT.format(p=root)
    if not root.is_dir():
        raise DataError(f"ImageNet folder {root} {'is a file, not a folder' if root.exists() else 'not found'}; "
                        f"expected {layout}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder; expected {layout}")
    train_tf, val_tf = imagenet_transforms(train_crop_size, val_resize_size, val_crop_size, interpolation)
    splits = {}
    for split, tf in (("train", train_tf), ("val", val_tf)):
        try:
            splits[split] = ImageFolder(str(root / split), transform=tf, loader=read_image)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{root / split} is malformed: {str(e).strip()} Expected {layout}") from None
    train, val = splits["train"], splits["val"]
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"{root}: train/ and val/ must hold the same class folders; only in train: "
                        f"{only_train[:5]}{' ...' if len(only_train) > 5 else ''}, only in val: "
                        f"{only_val[:5]}{' ...' if len(only_val) > 5 else ''}")
    if len(train.classes) < 2:
        raise DataError(f"{root / 'train'} has {len(train.classes)} class folder; a classifier needs at least 2")
    shape = tuple(val[0][0].shape)  # read_image: a DataError naming the file when it cannot be read
    return ImageDatasets(train, val, list(train.classes), shape, train_eval=_with_transform(train, val_tf))


def _with_transform(dataset, transform):
    """A shallow copy of a torchvision dataset (same file list or arrays, nothing re-read)
    whose images go through `transform`."""
    import copy

    from torchvision.datasets.vision import StandardTransform

    twin = copy.copy(dataset)
    twin.transform = transform
    twin.transforms = StandardTransform(transform, getattr(dataset, "target_transform", None))
    return twin


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10(download=False) without the md5 check, so a generated sample
        in the same pickle layout (or a re-packed copy) loads too; `cifar10_folder` checks the
        md5 sums of the official release itself and says when they differ."""
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10, LocalCIFAR10


def cifar10_folder(path: str | os.PathLike, augment: bool = True) -> ImageDatasets:
    """CIFAR-10 from a local folder holding `cifar-10-batches-py/` (torchvision's
    `CIFAR10(root=path, download=False)`), with the usual augmentation (random crop with
    4-pixel padding, horizontal flip) when `augment`, normalized with CIFAR-10's statistics.
    `path` may also be the `cifar-10-batches-py` folder itself."""
    from torchvision import transforms as T
    from torchvision.datasets.utils import check_integrity

    root = Path(path).expanduser()
    if root.name == "cifar-10-batches-py" and not (root / "cifar-10-batches-py").exists():
        root = root.parent
    layout = CIFAR10_LAYOUT.format(p=root)
    batches = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder {root} {'is a file, not a folder' if root.exists() else 'not found'}; "
                        f"expected {layout}")
    missing = [f for f in CIFAR10_FILES if not (batches / f).is_file()]
    if missing:
        raise DataError(f"{batches} lacks {', '.join(missing)}; expected {layout}")
    official, local = _cifar10_class()
    md5 = dict(official.train_list + official.test_list)
    md5[official.meta["filename"]] = official.meta["md5"]
    notes = []
    if not all(check_integrity(str(batches / f), md5[f]) for f in CIFAR10_FILES):
        notes.append(f"{batches}: the files differ from the official CIFAR-10 release (md5); loading them anyway")
    normalize = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    val_tf = T.Compose([T.ToTensor(), normalize])
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]) \
        if augment else val_tf
    try:
        train = local(str(root), train=True, transform=train_tf, download=False)
        val = local(str(root), train=False, transform=val_tf, download=False)
        train_eval = _with_transform(train, val_tf) if augment else None
        shape = tuple(val[0][0].shape)
    except Exception as e:  # unpickling garbage raises anything from UnpicklingError to KeyError
        culprit = _bad_cifar_file(batches) or batches
        raise DataError(f"{culprit} is malformed ({type(e).__name__}: {str(e).strip()}); expected {layout}") from None
    if len(train.classes) < 2 or int(max(train.targets)) >= len(train.classes):
        raise DataError(f"{batches}: batches.meta names {len(train.classes)} classes but the labels go up to "
                        f"{int(max(train.targets))}")
    return ImageDatasets(train, val, list(train.classes), shape, notes, train_eval=train_eval)


def _bad_cifar_file(batches: Path) -> Path | None:
    """The first CIFAR-10 file that does not unpickle into the expected mapping."""
    import pickle

    for name in CIFAR10_FILES:
        keys = ("label_names",) if name == "batches.meta" else ("data", "labels")
        try:
            with open(batches / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            if not all(k in entry for k in keys):
                return batches / name
        except Exception:
            return batches / name
    return None


class SyntheticImages(Dataset):
    """A FakeData-style stand-in for smoke runs: `size` images of shape (3, image_size,
    image_size), made on the fly and identical at every access (seeded per index).

    Unlike torchvision's FakeData the labels can be learned: each class has a smooth random
    colour pattern and an image is its class's pattern plus unit Gaussian noise.
    """

    def __init__(self, size: int = 1024, num_classes: int = 10, image_size: int = 32, seed: int = 0,
                 split_offset: int = 0) -> None:
        for name, v in (("size", size), ("num_classes", num_classes), ("image_size", image_size)):
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.size, self.num_classes, self.image_size = size, num_classes, image_size
        self.seed, self.offset = int(seed), int(split_offset)
        g = torch.Generator().manual_seed(self.seed)
        coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
        self.patterns = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                                                        align_corners=False)
        self.classes = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.offset + index)
        label = int(torch.randint(self.num_classes, (), generator=g))
        return self.patterns[label] + torch.randn(self.patterns.shape[1:], generator=g), label


def synthetic_images(num_train: int = 1024, num_val: int | None = None, num_classes: int = 10,
                     image_size: int = 32, seed: int = 0) -> ImageDatasets:
    """Train and val `SyntheticImages` (disjoint index streams); `num_val` defaults to num_train // 4."""
    num_val = max(1, num_train // 4) if num_val is None else num_val
    train = SyntheticImages(num_train, num_classes, image_size, seed)
    val = SyntheticImages(num_val, num_classes, image_size, seed, split_offset=10_000_000)
    return ImageDatasets(train, val, list(train.classes), (3, image_size, image_size))


def digits_images(channels: int = 1, seed: int = 0) -> ImageDatasets:
    """scikit-learn's digits (`load_digits(images=True)`) as (channels, 8, 8) images;
    channels=3 repeats the grey channel for networks that expect colour input."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    d = load_digits(seed=seed, images=True)
    xs = [x.repeat(1, channels, 1, 1) for x in (d.x_train, d.x_test)]
    return ImageDatasets(TensorDataset(xs[0], d.y_train), TensorDataset(xs[1], d.y_test),
                         [str(i) for i in range(10)], (channels, 8, 8))


def build_datasets(name: str, path: str | os.PathLike | None = None, *, train_crop_size: int = 224,
                   val_resize_size: int = 256, val_crop_size: int = 224, interpolation: str = "bilinear",
                   channels: int = 3, synthetic_size: int = 1024, synthetic_classes: int = 10,
                   seed: int = 0) -> ImageDatasets:
    """The datasets of the training engine by name (see DATASETS). `path` is the data folder
    (imagenet, cifar10); the crop sizes and interpolation apply to imagenet and give the
    synthetic image size (`train_crop_size`); `channels` to digits; `synthetic_*` to synthetic."""
    builders = {
        "imagenet": lambda: imagenet_folder(_need_path(name, path), train_crop_size, val_resize_size, val_crop_size,
                                            interpolation),
        "cifar10": lambda: cifar10_folder(_need_path(name, path)),
        "digits": lambda: digits_images(channels=1 if channels == 1 else 3),
        "synthetic": lambda: synthetic_images(synthetic_size, None, synthetic_classes, train_crop_size, seed),
    }
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {sorted(builders)}")
    return builders[name]()



def image_sizes(name: str, *, train_crop_size: int = 224, val_crop_size: int = 224) -> tuple[int, int]:
    """(training, validation) image side in pixels of what `build_datasets` gives for dataset
    `name` with these settings, known without reading any file: imagenet the two crops (a
    --val-resize-size below the crop is padded up to it), synthetic `train_crop_size` for
    both, cifar10 32, digits 8."""
    fixed = {"cifar10": 32, "digits": 8}
    if name in fixed:
        return fixed[name], fixed[name]
    if name == "synthetic":
        return train_crop_size, train_crop_size
    if name == "imagenet":
        return train_crop_size, val_crop_size
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}")


def dataset_labels(dataset: Dataset) -> list[int]:
    """Every label of an image dataset, in order: `targets` where torchvision keeps them
    (ImageFolder, CIFAR10), the label tensor of a TensorDataset, else read item by item."""
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    if isinstance(dataset, TensorDataset):
        return [int(t) for t in dataset.tensors[1]]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def carve_validation(data: ImageDatasets, fraction: float, seed: int = 0) -> ImageDatasets:
    """Hold out a stratified `fraction` of the training images as the validation split, read
    without augmentation (`train_eval`). Returns new ImageDatasets: `train` the rest, `val`
    the carved split (for choices: a checkpoint from the trail, a recipe, a calibration) and
    `test` the dataset's own held-out split, which is then only reported. The same `seed`
    carves the same images; disjoint from training by construction."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    if data.test is not None:
        raise ValueError("these datasets already have a carved validation split")
    labels = dataset_labels(data.train)
    count = math.ceil(fraction * len(labels))  # as scikit-learn's train_test_split counts it
    if not len(data.classes) <= count <= len(labels) - len(data.classes):
        raise ValueError(f"val_fraction {fraction} holds out {count} of {len(labels)} training images; the "
                         f"validation and the training split each need at least one image per class "
                         f"({len(data.classes)})")
    stratify = labels if min(labels.count(c) for c in set(labels)) >= 2 else None
    # test_size as a fraction, as load_digits(val_fraction=...) splits (the same count, rounded up)
    keep, held = train_test_split(list(range(len(labels))), test_size=fraction, random_state=seed, stratify=stratify)
    train_eval = data.train if data.train_eval is None else data.train_eval
    return ImageDatasets(Subset(data.train, sorted(keep)), Subset(train_eval, sorted(held)), data.classes,
                         data.sample_shape, list(data.notes), test=data.val)


def _need_path(name: str, path) -> Path:
    if path is None or str(path) == "":
        raise DataError(f"dataset {name!r} needs --data-path (see data/README.md)")
    return Path(path)


DIGITS_CIFAR_CLASSES = tuple(f"digit {i}" for i in range(10))


def write_digits_cifar10(root: str | os.PathLike, test_fraction: float = 0.25, seed: int = 0,
                         per_class: int | None = None) -> Path:
    """Write scikit-learn's bundled digits in CIFAR-10's on-disk format under
    `<root>/cifar-10-batches-py/` and return `root`, so `cifar10_folder(root)` (torchvision's
    `CIFAR10(download=False)`) reads real handwritten digits.

    Each 8x8 image (grey levels 0..16) is scaled to 0..255, enlarged to 32x32 (bilinear) and
    repeated over the three colour planes; the rows are CIFAR's uint8 layout (1024 red values,
    then green, then blue). The stratified test split of `load_digits(test_fraction, seed)`
    becomes `test_batch` (1797 images: 450 test at 0.25) and the rest five `data_batch_*`
    files. Real digits at CIFAR's size: accuracy, pruning and the trail show a trade-off, where a
    synthetic stand-in is separable at once. `per_class` keeps only the first that many images
    of each class in each split (a small real sample for quick tests). Each file is written
    atomically; an existing folder is rewritten.
    """
    import pickle

    import numpy as np
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    from .io import atomic_write_bytes

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = sk_load_digits(return_X_y=True)
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be a positive number of images per class (or None for all), got {per_class}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    if per_class is not None:
        def first(ys: np.ndarray) -> np.ndarray:
            return np.sort(np.concatenate([np.flatnonzero(ys == c)[:per_class] for c in np.unique(ys)]))
        keep_tr, keep_te = first(y_tr), first(y_te)
        x_tr, y_tr, x_te, y_te = x_tr[keep_tr], y_tr[keep_tr], x_te[keep_te], y_te[keep_te]

    def rows(flat: np.ndarray) -> np.ndarray:
        grey = torch.tensor(flat, dtype=torch.float32).view(-1, 1, 8, 8) * (255.0 / 16.0)
        big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
        return big.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).reshape(len(flat), 3 * 32 * 32).numpy()

    folder = Path(root).expanduser() / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, label: str, xs: np.ndarray, ys: np.ndarray) -> None:
        batch = {"batch_label": label, "labels": [int(v) for v in ys], "data": rows(xs),
                 "filenames": [f"digit_{label.split()[0]}_{i}.png" for i in range(len(ys))]}
        atomic_write_bytes(folder / name, pickle.dumps(batch))

    for i, part in enumerate(np.array_split(np.arange(len(y_tr)), 5), start=1):
        write(f"data_batch_{i}", f"training batch {i} of 5", x_tr[part], y_tr[part])
    write("test_batch", "testing batch 1 of 1", x_te, y_te)
    meta = {"label_names": list(DIGITS_CIFAR_CLASSES), "num_cases_per_batch": -(-len(y_tr) // 5), "num_vis": 3072}
    atomic_write_bytes(folder / "batches.meta", pickle.dumps(meta))
    return Path(root).expanduser()
