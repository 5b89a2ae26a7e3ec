"""Shared test setup: one thread, and the tiny datasets in the real on-disk layouts."""
import importlib.util
from pathlib import Path

import pytest
import torch

from ltp_core.data import write_digits_cifar10

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the tests' tiny models gain nothing from more, and on a shared
    2-core machine a second thread only contends (10-100x slower measured under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> Path:
    """`data/make_tiny_imagenet.py`'s folder: 3 classes of 32x32 JPEGs in ImageFolder's layout."""
    spec = importlib.util.spec_from_file_location("make_tiny_imagenet", ROOT / "data" / "make_tiny_imagenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_imagenet(tmp_path_factory.mktemp("data") / "tiny-imagenet")


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """scikit-learn's digits in CIFAR-10's on-disk format, 4 images per class in each split."""
    return write_digits_cifar10(tmp_path_factory.mktemp("data") / "digits-cifar10", per_class=4)
