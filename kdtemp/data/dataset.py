"""A classification dataset as tensors, and the helpers every loader of images shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """A classification dataset as tensors: inputs normalised float32, labels int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    pad_value: tuple[float, ...] = field(default=(0.0,))
    """Normalised value of a black pixel per channel, used to pad crops like torchvision does."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def to(self, device: torch.device) -> Dataset:
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

    def fingerprint(self) -> str:
        """Content hash of the data, so caches and checkpoints can tell datasets apart.

        Computed once per Dataset object: it copies every tensor to the host (CIFAR-10: ~740 MB)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = self._content_hash()
            object.__setattr__(self, "_fingerprint", cached)  # frozen: a memo, not a field
        return cached

    def _content_hash(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.name.encode())
        for tensor in (self.train_x, self.train_y, self.test_x, self.test_y):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def standardised_images(
    name: str,
    train_x: np.ndarray,
    train_y: torch.Tensor,
    test_x: np.ndarray,
    test_y: torch.Tensor,
    classes: tuple[str, ...],
    source: str,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]],
) -> Dataset:
    """A Dataset of uint8 (N, C, H, W) images standardised per channel with (mean, std); augmentation pads
    crops with black in those units."""
    mean, std = normalisation
    return Dataset(
        name=name,
        train_x=normalise_images(train_x, mean, std),
        train_y=train_y,
        test_x=normalise_images(test_x, mean, std),
        test_y=test_y,
        classes=classes,
        source=source,
        pad_value=tuple(-m / s for m, s in zip(mean, std, strict=False)),
    )


def normalise_images(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 standardised per channel, as ToTensor + Normalize would."""
    tensor = torch.from_numpy(np.asarray(images, dtype=np.float32)).div_(255.0)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)
