"""Users' own arrays in one file (`tensors`): an .npz or a .pt dict of x_train, y_train, x_test, y_test.

x may be channels-first images, sequences or vectors (float, used as given; uint8 pixels, standardised
like an image folder) or int64 token ids for the text archs. Every malformed input is refused with one
line naming the file and the fix, before any run writes a file.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kdtemp.config.schema import DataConfig
from kdtemp.data.custom import images_dataset
from kdtemp.data.dataset import Dataset, token_inputs
from kdtemp.data.registry import register_dataset
from kdtemp.errors import DataError, first_line
from kdtemp.store.files import file_fingerprint

TENSOR_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
PIXELS, FLOATS, TOKEN_IDS = "pixels", "floats", "token ids"
VAL_ARRAYS = ("x_val", "y_val")
"""Optional in a tensors file: the user's own validation split, which then wins over data.val_fraction."""


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
    vocab_size = None
    if input_kind(arrays["x_train"]) == TOKEN_IDS:
        inputs = token_arrays(path, arrays, splits)
        vocab_size = token_vocab_size(path, arrays, inputs)
    else:
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
        vocab_size=vocab_size,
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
