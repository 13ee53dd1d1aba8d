"""Users' own images: a folder of them (`image-folder`); arrays in one file are kdtemp.data.arrays.

Both end as the same `Dataset` of tensors the built-in datasets give, so the training loop and the
device-side augmentation do not know where the data came from. Every malformed input is refused with
one line naming the file and the fix, before any run writes a file. A teacher trained on one folder or
file is refused for another through `Dataset.fingerprint`, which hashes the decoded content.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import CACHE_DIR, Dataset, standardised_images
from kdtemp.data.registry import register_dataset
from kdtemp.errors import CheckpointError, DataError
from kdtemp.store.files import atomic_torch_save, load_checkpoint

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The extensions torchvision's ImageFolder accepts (case-insensitive); other files are ignored, as there."""
IMAGE_FOLDER_LAYOUT = (
    "image-folder expects root/train/<class>/*.png|jpg, root/test/<class>/... and optionally "
    "root/val/<class>/... (or, as before, root/train/ and root/val/ with val/ the test split)"
)
CACHE_FORMAT = "kdtemp-image-folder-cache/1"


# --- image-folder --------------------------------------------------------------------------------


@register_dataset("image-folder")
def load_image_folder(config: DataConfig) -> Dataset:
    """torchvision's ImageFolder layout (class = subfolder name, sorted): train/, test/ and optionally val/,
    the user's own validation split. Without test/, val/ is the test split, as before this layout existed.

    Images are decoded once into a uint8 cache under root/.kdtemp-cache, keyed by every file's relative
    path, size and mtime and by `image_size`, so a later load reads one file and decodes nothing.
    """
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"image-folder root {root} is not a folder; {IMAGE_FOLDER_LAYOUT}")
    splits, notices = folder_splits(root)
    cache = root / CACHE_DIR / f"image-folder-{folder_key(root, splits, config.image_size)}.pt"
    arrays = read_image_cache(cache, has_val="val" in splits)
    if arrays is None:
        arrays = decode_folder(splits, config.image_size)
        try:
            atomic_torch_save({"format": CACHE_FORMAT, **arrays}, cache)
            source = f"{root}, decoded at {config.image_size}x{config.image_size} and cached in {cache}"
        except OSError:
            source = (
                f"{root}, decoded at {config.image_size}x{config.image_size} (root not writable: not cached)"
            )
    else:
        source = f"{root}, cached at {config.image_size}x{config.image_size} in {cache}"
    dataset = images_dataset("image-folder", arrays, tuple(splits["train"]), source)
    if "val" in splits:
        dataset = replace(dataset, validation=f"{root / 'val'} (the folder's own)")
    return replace(dataset, notices=notices)


def folder_splits(root: Path) -> tuple[dict[str, dict[str, list[Path]]], tuple[str, ...]]:
    """Split name ("train", "val", "test") -> its classes' files, and a notice when the folder has the old
    train/ + val/ layout (val/ read as the test split). Every split must hold the same classes."""
    notices: tuple[str, ...] = ()
    if (root / "test").is_dir():
        names = {"train": "train", "test": "test"}
        if (root / "val").is_dir():
            names["val"] = "val"
    else:
        if not (root / "val").is_dir():
            raise DataError(f"{root} has no test/ folder; {IMAGE_FOLDER_LAYOUT}")
        names = {"train": "train", "test": "val"}
        notices = (
            f"{root} has train/ and val/ but no test/: val/ is read as the test split, as before, and the "
            "validation split is held out of train/ (data.val_fraction); to choose on your own validation "
            "images, put the test images in test/ and keep val/ for validation",
        )
    splits = {split: scan_split(root, folder) for split, folder in names.items()}
    classes = list(splits["train"])
    for split, folder in names.items():
        if list(splits[split]) != classes:
            only_train = sorted(set(classes) - set(splits[split]))
            only_here = sorted(set(splits[split]) - set(classes))
            raise DataError(
                f"{root}: train/ and {folder}/ hold different classes "
                f"(only in train: {only_train or 'none'}, only in {folder}: {only_here or 'none'}); "
                "give every split the same class folders"
            )
    return splits, notices


def scan_split(root: Path, split: str) -> dict[str, list[Path]]:
    """Class name -> its image files (searched recursively, sorted), as ImageFolder finds them."""
    directory = root / split
    if not directory.is_dir():
        raise DataError(f"{root} has no {split}/ folder; {IMAGE_FOLDER_LAYOUT}")
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"{directory} has no class subfolders; {IMAGE_FOLDER_LAYOUT}")
    files = {}
    for name in classes:
        files[name] = sorted(
            path
            for path in (directory / name).rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files[name]:
            raise DataError(
                f"{directory / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add some or remove the folder"
            )
    return files


def folder_key(root: Path, splits: dict[str, dict[str, list[Path]]], image_size: int) -> str:
    """Hash of what the decoded cache depends on: each file's relative path, size and mtime, and the size.

    Which folder is which split enters too: the same files as train/ + val/ (val/ the test split) and
    as train/ + val/ + test/ decode to different arrays."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{CACHE_FORMAT}|{image_size}".encode())
    if "val" in splits:
        digest.update(b"|own-val")
    for files_of_class in splits.values():
        for path in (path for files in files_of_class.values() for path in files):
            stat = path.stat()
            digest.update(f"|{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def read_image_cache(path: Path, has_val: bool) -> dict[str, torch.Tensor] | None:
    """The cached arrays, or None when absent or unreadable (then the folder is decoded again)."""
    try:
        cached = load_checkpoint(path, "image cache")
    except CheckpointError:  # absent, torn or foreign: decode again
        return None
    keys = ("train_x", "train_y", "test_x", "test_y", *(("val_x", "val_y") if has_val else ()))
    if cached.get("format") != CACHE_FORMAT or not all(
        isinstance(cached.get(key), torch.Tensor) for key in keys
    ):
        return None
    return {key: cached[key] for key in keys}


def decode_folder(splits: dict[str, dict[str, list[Path]]], size: int) -> dict[str, torch.Tensor]:
    """Every image as uint8 (N, C, size, size), `<split>_x` and `<split>_y`: RGB, or one channel when every
    image of every split is grayscale."""
    arrays, grayscale = {}, True
    for split, files in splits.items():
        images, labels = [], []
        for label, paths in enumerate(files.values()):
            for path in paths:
                pixels, is_gray = decode_image(path, size)
                images.append(pixels)
                labels.append(label)
                grayscale &= is_gray
        arrays[f"{split}_x"] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        arrays[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    if grayscale:
        for split in splits:
            arrays[f"{split}_x"] = arrays[f"{split}_x"][:, :1].clone()
    return arrays


def decode_image(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """(size, size, 3) uint8 pixels and whether the file was grayscale.

    As torchvision's Resize(size) + CenterCrop(size): the shorter side is scaled to `size` (bilinear,
    antialiased by PIL), then the centre square is kept, so no image is distorted.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            is_gray = Image.getmodebands(image.mode) == 1 and image.mode != "P"
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove or replace it") from None
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    scaled_long = int(size * long / short)
    new_size = (size, scaled_long) if width <= height else (scaled_long, size)
    resized = rgb.resize(new_size, Image.Resampling.BILINEAR)
    left, top = round((new_size[0] - size) / 2.0), round((new_size[1] - size) / 2.0)
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8), is_gray


def images_dataset(
    name: str, arrays: dict[str, torch.Tensor], classes: tuple[str, ...], source: str
) -> Dataset:
    """uint8 images scaled to [0, 1] and standardised with the TRAIN split's per-channel mean and std.

    The validation and test splits use the train statistics too, as torchvision's Normalize with published
    values does; a constant channel (std 0) is only centred. `val_x`/`val_y` are optional.
    """
    val = (arrays["val_x"].numpy(), arrays["val_y"]) if "val_x" in arrays else None
    return standardised_images(
        name,
        arrays["train_x"].numpy(),
        arrays["train_y"],
        arrays["test_x"].numpy(),
        arrays["test_y"],
        classes,
        source,
        channel_statistics(arrays["train_x"]),
        val,
    )


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, ...) images in [0, 1], in float64."""
    channels = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    mean = channels.mean(dim=1)
    std = channels.std(dim=1, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())
