"""Users' own data: a folder of images (`image-folder`) or arrays in one file (`tensors`).

Both end as the same `Dataset` of tensors the built-in datasets give, so the training loop and the
device-side augmentation do not know where the data came from. Every malformed input is refused with
one line naming the file and the fix, before any run writes a file. A teacher trained on one folder or
file is refused for another through `Dataset.fingerprint`, which hashes the decoded content.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import Dataset, standardised_images
from kdtemp.data.registry import register_dataset
from kdtemp.data.text import token_inputs
from kdtemp.errors import CheckpointError, DataError, first_line
from kdtemp.store.files import atomic_torch_save, file_fingerprint, load_checkpoint

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The extensions torchvision's ImageFolder accepts (case-insensitive); other files are ignored, as there."""
IMAGE_FOLDER_LAYOUT = (
    "image-folder expects root/train/<class>/*.png|jpg, root/test/<class>/... and optionally "
    "root/val/<class>/... (or, as before, root/train/ and root/val/ with val/ the test split)"
)
CACHE_FORMAT = "kdtemp-image-folder-cache/1"
CACHE_DIR = ".kdtemp-cache"
TENSOR_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
PIXELS, FLOATS, TOKEN_IDS = "pixels", "floats", "token ids"
VAL_ARRAYS = ("x_val", "y_val")
"""Optional in a tensors file: the user's own validation split, which then wins over data.val_fraction."""


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


# --- tensors (.npz / .pt) ------------------------------------------------------------------------


@register_dataset("tensors")
def load_tensors(config: DataConfig) -> Dataset:
    """x_train, y_train, x_test, y_test (optionally x_val, y_val and `classes`) from an .npz or a .pt file.

    x of any shape (N, ...): channels-first images (N, C, H, W), sequences (N, C, L) or vectors (N, D).
    uint8 x is scaled to [0, 1] and standardised per channel like image-folder; float x is used as given.
    """
    path = Path(config.root)
    arrays = read_arrays(path)
    missing = [key for key in TENSOR_ARRAYS if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(missing)} (it holds {', '.join(sorted(arrays)) or 'nothing'}); "
            f"save {', '.join(TENSOR_ARRAYS)}"
        )
    given_val = [key for key in VAL_ARRAYS if key in arrays]
    if len(given_val) == 1:
        lacking = next(key for key in VAL_ARRAYS if key not in arrays)
        raise DataError(
            f"{path} holds {given_val[0]} but not {lacking}; "
            "save both for your own validation split, or neither"
        )
    splits = ("train", "val", "test") if given_val else ("train", "test")
    for split in splits:
        check_split(path, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    for split in splits[1:]:
        if arrays["x_train"].shape[1:] != arrays[f"x_{split}"].shape[1:]:
            raise DataError(
                f"{path}: x_train samples have shape {arrays['x_train'].shape[1:]}, "
                f"x_{split} {arrays[f'x_{split}'].shape[1:]}; "
                "every split needs the same sample shape"
            )
        if input_kind(arrays["x_train"]) != input_kind(arrays[f"x_{split}"]):
            raise DataError(
                f"{path}: x_train is {arrays['x_train'].dtype}, x_{split} {arrays[f'x_{split}'].dtype}; "
                "store every split as uint8 pixels, every split as floats or every split as int64 token ids"
            )
    largest = int(max(arrays[f"y_{split}"].max() for split in splits))
    classes = class_names(path, arrays.get("classes"), largest)
    labels = {split: torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)) for split in splits}
    source = f"{path} (sha256 {file_fingerprint(path)})"
    validation = f"x_val/y_val of {path.name}" if given_val else ""
    if input_kind(arrays["x_train"]) == TOKEN_IDS:
        inputs = token_arrays(path, arrays, splits)
        vocab_size = token_vocab_size(path, arrays, inputs)
        return Dataset(
            name="tensors",
            train_x=inputs["train"],
            train_y=labels["train"],
            test_x=inputs["test"],
            test_y=labels["test"],
            classes=classes,
            source=source,
            val_x=inputs.get("val"),
            val_y=labels.get("val"),
            validation=validation,
            vocab_size=vocab_size,
        )
    if arrays["x_train"].dtype == np.uint8:
        images = {f"{split}_x": _channels_first(arrays[f"x_{split}"]) for split in splits}
        images.update({f"{split}_y": labels[split] for split in splits})
        dataset = images_dataset("tensors", images, classes, source)
        shape = arrays["x_train"].shape[1:]
        return replace(
            dataset,
            train_x=dataset.train_x.reshape(-1, *shape),
            test_x=dataset.test_x.reshape(-1, *shape),
            val_x=None if dataset.val_x is None else dataset.val_x.reshape(-1, *shape),
            validation=validation,
        )
    inputs = {split: torch.from_numpy(arrays[f"x_{split}"].astype(np.float32)) for split in splits}
    return Dataset(
        name="tensors",
        train_x=inputs["train"],
        train_y=labels["train"],
        test_x=inputs["test"],
        test_y=labels["test"],
        classes=classes,
        source=source,
        val_x=inputs.get("val"),
        val_y=labels.get("val"),
        validation=validation,
    )


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of an .npz (numpy.load, no pickles) or a .pt dict (torch.load, weights_only)."""
    if not path.is_file():
        raise DataError(
            f"tensors file {path} not found; "
            f"set data.root to an .npz or .pt file holding {', '.join(TENSOR_ARRAYS)}"
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".pt":
        return _read_pt(path)
    raise DataError(
        f"{path}: tensors reads .npz or .pt files; save the arrays with numpy.savez or torch.save"
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path} holds object arrays, which would need pickle; store numbers (and classes as strings)"
            ) from None
        raise DataError(f"{path}: not a readable .npz file ({exc}); save it again with numpy.savez") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); save it again with numpy.savez") from None


def _read_pt(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"refused to load {path}: it holds Python objects beyond tensors and plain data; "
            "save a dict of tensors with torch.save"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .pt file ({first_line(exc)}); save a dict of tensors with torch.save"
        ) from None
    if not isinstance(loaded, dict):
        raise DataError(
            f"{path} holds a {type(loaded).__name__}, not a dict; "
            "save {'x_train': ..., 'y_train': ..., ...} with torch.save"
        )
    return {
        str(key): value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        for key, value in loaded.items()
    }


def check_split(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Refuse, in one line, arrays a classifier cannot train or be evaluated on."""
    if x.ndim < 2 or len(x) == 0:
        raise DataError(
            f"{path}: x_{split} has shape {x.shape}; it needs one row per sample, (N, features...) with N > 0"
        )
    if (
        x.dtype != np.uint8
        and not np.issubdtype(x.dtype, np.floating)
        and not np.issubdtype(x.dtype, np.integer)
    ):
        raise DataError(
            f"{path}: x_{split} is {x.dtype}; store inputs as float (used as given), uint8 (pixels 0..255) "
            "or int64 token ids (N, L)"
        )
    if input_kind(x) == TOKEN_IDS and (x.ndim != 2 or (x.size and x.min() < 0)):
        raise DataError(
            f"{path}: x_{split} holds integers of shape {x.shape}; token ids are (N, L), each 0 or more "
            "(or store pixels as uint8 and other inputs as float)"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{path}: y_{split} is {y.dtype} of shape {y.shape}; labels must be one integer 0..C-1 per sample"
        )
    if len(x) != len(y):
        raise DataError(
            f"{path}: x_{split} holds {len(x)} samples but y_{split} {len(y)} labels; they must pair up"
        )
    if y.min() < 0:
        raise DataError(
            f"{path}: y_{split} has negative labels (smallest {int(y.min())}); labels must be 0..C-1"
        )
    if input_kind(x) == FLOATS:
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DataError(
                f"{path}: x_{split} holds {bad} NaN or infinite values; replace them before training"
            )


def input_kind(x: np.ndarray) -> str:
    """What an x array holds: uint8 pixels, floats used as given, or (other integers) token ids."""
    if x.dtype == np.uint8:
        return PIXELS
    return TOKEN_IDS if np.issubdtype(x.dtype, np.integer) else FLOATS


def token_arrays(
    path: Path, arrays: dict[str, np.ndarray], splits: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Each split's token ids with its mask (`mask_<split>`, 1 = a token, 0 = padding; all ones when
    absent) as the text layout (N, 2, L)."""
    inputs = {}
    for split in splits:
        ids = arrays[f"x_{split}"]
        mask = arrays.get(f"mask_{split}")
        if mask is None:
            mask = np.ones_like(ids)
        elif mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
            raise DataError(
                f"{path}: mask_{split} must be 0/1 of x_{split}'s shape {ids.shape} (it is {mask.dtype} "
                f"{mask.shape}); 1 marks a token, 0 padding"
            )
        inputs[split] = token_inputs(
            torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        )
    return inputs


def token_vocab_size(path: Path, arrays: dict[str, np.ndarray], inputs: dict[str, torch.Tensor]) -> int:
    """The file's `vocab_size` when given (above every id), else the largest id + 1."""
    largest = max(int(x[:, 0].max()) for x in inputs.values())
    if "vocab_size" not in arrays:
        return largest + 1
    vocab_size = int(np.asarray(arrays["vocab_size"]).reshape(-1)[0])
    if vocab_size <= largest:
        raise DataError(f"{path}: vocab_size {vocab_size} but a token id is {largest}; raise vocab_size")
    return vocab_size


def class_names(path: Path, names: np.ndarray | None, largest_label: int) -> tuple[str, ...]:
    """The `classes` array when given (at least one name per label), else '0' .. str(max label)."""
    if names is None:
        count = largest_label + 1
        if count < 2:
            raise DataError(f"{path}: every label is 0; a classifier needs at least two classes")
        return tuple(str(label) for label in range(count))
    names = np.atleast_1d(names)
    if names.ndim != 1 or len(names) <= largest_label:
        raise DataError(
            f"{path}: classes names {names.size} classes but the labels go up to {largest_label}; "
            f"give one name per class 0..{largest_label}"
        )
    return tuple(str(name) for name in names.tolist())


def _channels_first(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, ...) as (N, C, rest, 1), the image layout per-channel normalisation expects: axis 1 is
    the channel of images and sequences; vectors (N, D) are one channel."""
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    channels = 1 if x.ndim == 2 else x.shape[1]
    return tensor.reshape(len(x), channels, -1, 1)
