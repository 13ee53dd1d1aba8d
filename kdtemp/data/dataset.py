"""A classification dataset as tensors (train, validation, test), and the helpers every loader of images
shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from kdtemp.errors import DataError

CACHE_DIR = ".kdtemp-cache"
"""Where a loader caches what it decoded or tokenised, under the data's own root (image-folder, text)."""


@dataclass(frozen=True)
class Dataset:
    """A classification dataset as tensors: inputs normalised float32, labels int64.

    The validation split is what every choice (the best cell, the best epoch, the run to export) is made
    on; the test split is only reported. `val_x` None means there is none and the test set stands in
    (data.val_fraction 0, or a Dataset built by hand): `val_is_test`.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    pad_value: tuple[float, ...] = field(default=(0.0,))
    """Normalised value of a black pixel per channel, used to pad crops like torchvision does."""
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    validation: str = ""
    """Where the validation split came from, in words (kdtemp.data.validation)."""
    notices: tuple[str, ...] = ()
    """Things the user should know about how the files were read, shown once when the data loads."""
    vocab_size: int | None = None
    """Text only: token ids are 0 .. vocab_size - 1. Text inputs are int64 (N, 2, L): each sample's token
    ids, then its attention mask (1 = a token, 0 = padding); kdtemp.data.text builds them."""
    tokenizer_json: str | None = None
    """Text only: the tokenizer (tokenizers' JSON) that made the ids, saved with the experiment for export."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3 and not self.is_text

    @property
    def is_text(self) -> bool:
        return self.vocab_size is not None

    @property
    def val_is_test(self) -> bool:
        """No validation split: choices fall back to the test set, and the report says so."""
        return self.val_x is None

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of "train", "val" or "test"; "val" is the test split when there is none."""
        if name == "train":
            return self.train_x, self.train_y
        if name == "val" and self.val_x is not None and self.val_y is not None:
            return self.val_x, self.val_y
        if name in ("val", "test"):
            return self.test_x, self.test_y
        raise ValueError(f"no split {name!r}: train, val or test")

    def to(self, device: torch.device) -> Dataset:
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            val_x=None if self.val_x is None else self.val_x.to(device),
            val_y=None if self.val_y is None else self.val_y.to(device),
        )

    def fingerprint(self) -> str:
        """Content hash of the data, so caches and checkpoints can tell datasets apart.

        Computed once per Dataset object: it copies every tensor to the host (CIFAR-10: ~740 MB). The
        validation split enters only when there is one, so data.val_fraction 0 keeps the fingerprint an
        older kdtemp gave (and its teachers); a split from the training set changes train_x anyway."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = self._content_hash()
            object.__setattr__(self, "_fingerprint", cached)  # frozen: a memo, not a field
        return cached

    def _content_hash(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self.name.encode())
        tensors = [self.train_x, self.train_y, self.test_x, self.test_y]
        if self.val_x is not None and self.val_y is not None:
            tensors += [self.val_x, self.val_y]
        for tensor in tensors:
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
    val: tuple[np.ndarray, torch.Tensor] | None = None,
    validation: str = "",
) -> Dataset:
    """A Dataset of uint8 (N, C, H, W) images standardised per channel with (mean, std); augmentation pads
    crops with black in those units. `val`: the user's own validation images and labels, if any."""
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
        val_x=None if val is None else normalise_images(val[0], mean, std),
        val_y=None if val is None else val[1],
        validation=validation,
    )


def normalise_images(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 standardised per channel, as ToTensor + Normalize would."""
    tensor = torch.from_numpy(np.asarray(images, dtype=np.float32)).div_(255.0)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def with_channels(data: Dataset, channels: int | None) -> Dataset:
    """`data` with one-channel images repeated to `channels` (data.channels), as torchvision's
    Grayscale(num_output_channels=3) does; None or the data's own count changes nothing."""
    if channels is None or (data.is_image and data.input_shape[0] == channels):
        return data
    if not data.is_image or data.input_shape[0] != 1:
        what = (
            f"{data.input_shape[0]}-channel images"
            if data.is_image
            else f"inputs of shape {data.input_shape}"
        )
        raise DataError(
            f"data.channels {channels} repeats one-channel images, but {data.name} holds {what}; "
            "remove data.channels"
        )

    def repeat(images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, channels, -1, -1).contiguous()

    return replace(
        data,
        train_x=repeat(data.train_x),
        test_x=repeat(data.test_x),
        val_x=None if data.val_x is None else repeat(data.val_x),
        pad_value=data.pad_value * channels,
        notices=(*data.notices, f"gray images repeated to {channels} channels (data.channels)"),
    )


def token_inputs(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """int64 (N, 2, L) from ids (N, L) and mask (N, L): the text layout every text model reads."""
    return torch.stack([ids.long(), mask.long()], dim=1)
