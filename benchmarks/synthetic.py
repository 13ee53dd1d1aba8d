"""Synthetic CIFAR-100-shaped data for the GPU scripts: no download, and learnable, so accuracy means something.

Each class has a random prototype image; a sample is its class's prototype blended with noise. The same
images serve three readers: kdtemp's `Dataset` (in memory), a `cifar-100-python/` folder in CIFAR's own
pickle layout (so `kdtemp sweep --dataset cifar100` runs end to end, offline), and uint8 HWC arrays for a
torchvision DataLoader (the RepDistiller-style baseline).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from kdtemp.data.builtin import NORMALISATION
from kdtemp.data.dataset import Dataset, standardised_images

CLASSES = 100
SHAPE = (3, 32, 32)
NOISE = 0.5
"""Share of each pixel that is noise rather than the class prototype."""


def cifar_like_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (count, 3, 32, 32), int64 labels) with every class present."""
    generator = np.random.default_rng(seed)
    prototypes = np.random.default_rng(12345).integers(0, 256, (CLASSES, *SHAPE)).astype(np.float32)
    labels = np.arange(count) % CLASSES
    generator.shuffle(labels)
    noise = generator.integers(0, 256, (count, *SHAPE)).astype(np.float32)
    images = (1 - NOISE) * prototypes[labels] + NOISE * noise
    return images.round().astype(np.uint8), labels.astype(np.int64)


def synthetic_cifar100(train: int, test: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """kdtemp's Dataset of `train` + `test` images, plus the raw uint8 training images and labels."""
    train_x, train_y = cifar_like_images(train, seed=1)
    test_x, test_y = cifar_like_images(test, seed=2)
    data = standardised_images("cifar100", train_x, torch.from_numpy(train_y), test_x, torch.from_numpy(test_y),
                               tuple(str(c) for c in range(CLASSES)), "synthetic (benchmarks/synthetic.py)",
                               NORMALISATION["cifar100"])
    return data, train_x, train_y


def write_cifar100_folder(root: Path, train: int, test: int) -> Path:
    """The images of `synthetic_cifar100` as root/cifar-100-python/{train,test,meta}, CIFAR's pickle layout.

    Protocol 2 keeps numpy arrays to the globals kdtemp's safe unpickler accepts.
    """
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train, 1), ("test", test, 2)):
        images, labels = cifar_like_images(count, seed)
        entry = {"data": images.reshape(count, -1), "fine_labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"class{c}" for c in range(CLASSES)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root
