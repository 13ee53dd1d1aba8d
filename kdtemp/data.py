"""Dataset registry: name -> normalised tensors, offline sources first.

Every dataset is small enough to sit on the run's device as one tensor, so the hot loop indexes a
tensor instead of decoding images item by item. Augmentation (random crop + flip) is drawn for a
whole epoch at once and applied to each batch on the device.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from kdtemp.config import DataConfig
from kdtemp.errors import DataError

# Debian's dataset-fashion-mnist installs the four idx files here.
SYSTEM_FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# Per-channel (mean, std) of the training images in [0, 1], the usual published values.
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


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


Loader = Callable[[DataConfig], Dataset]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return decorate


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(config: DataConfig) -> Dataset:
    """Load `config.dataset` on the CPU; the caller moves it to the run's device."""
    try:
        loader = _LOADERS[config.dataset]
    except KeyError:
        raise DataError(
            f"unknown dataset {config.dataset!r}; choose one of {', '.join(dataset_names())}"
        ) from None
    return loader(config)


# --- MNIST-1D ------------------------------------------------------------------------------------


@register_dataset("mnist1d")
def load_mnist1d(config: DataConfig) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally with the package's reference arguments.

    4000 train / 1000 test sequences of length 40, seed 42; cached as an .npz under the data root.
    """
    cache = Path(config.root) / "mnist1d" / "mnist1d-reference-5000-seed42.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as arrays:
                tensors = {key: arrays[key] for key in ("x", "y", "x_test", "y_test")}
            source = str(cache)
        except (OSError, ValueError, KeyError):
            tensors, source = None, ""
    else:
        tensors, source = None, ""
    if tensors is None:
        tensors = _generate_mnist1d()
        _save_npz_atomically(cache, tensors)
        source = f"generated by mnist1d, cached at {cache}"
    return Dataset(
        name="mnist1d",
        train_x=torch.from_numpy(tensors["x"]).float().unsqueeze(1),
        train_y=torch.from_numpy(tensors["y"]).long(),
        test_x=torch.from_numpy(tensors["x_test"]).float().unsqueeze(1),
        test_y=torch.from_numpy(tensors["y_test"]).long(),
        classes=tuple(str(digit) for digit in range(10)),
        source=source,
    )


def _generate_mnist1d() -> dict[str, np.ndarray]:
    # make_dataset reseeds numpy's and Python's global generators; leave them as we found them.
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        generated = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {key: np.asarray(generated[key]) for key in ("x", "y", "x_test", "y_test")}


def _save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from kdtemp.runs import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **cast(dict[str, Any], arrays))  # numpy's stub matches **kwargs to allow_pickle
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # an unwritable data root only costs regenerating next time


# --- MNIST and Fashion-MNIST (idx files) ---------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), plain or gzipped, as a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file; expected MNIST-format data")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header} bytes of data, its header promises {expected}; "
            "the file is truncated"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for directory in candidates:
        if all(_idx_file(directory, stem) is not None for stem in IDX_FILES.values()):
            return directory
    return None


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _images_from_idx(name: str, directory: Path, classes: tuple[str, ...]) -> Dataset:
    # _find_idx_dir chose a directory holding every file
    arrays = {key: read_idx(cast(Path, _idx_file(directory, stem))) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise DataError(
                f"{directory}: {split} images and labels differ in count; the files do not belong together"
            )
    return standardised_images(
        name,
        arrays["train_x"][:, None],
        torch.from_numpy(arrays["train_y"].astype(np.int64)),
        arrays["test_x"][:, None],
        torch.from_numpy(arrays["test_y"].astype(np.int64)),
        classes,
        str(directory),
        NORMALISATION[name],
    )


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


def _download(name: str, config: DataConfig, fetch: Callable[[], None], how_to_get: str) -> None:
    if not config.download:
        raise DataError(f"{name} not found offline; {how_to_get}")
    try:
        fetch()
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError... all mean "no data"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{name} not found offline and the download failed ({reason}); {how_to_get}"
        ) from None


def _idx_dataset(
    name: str,
    config: DataConfig,
    candidates: list[Path],
    download_class: str,
    how: str,
    classes: tuple[str, ...],
) -> Dataset:
    """An idx dataset from the first folder that has all four files, else torchvision's download."""
    directory = _find_idx_dir(candidates)
    if directory is None:
        import torchvision.datasets

        root = str(config.root)
        _download(
            name, config, lambda: getattr(torchvision.datasets, download_class)(root, download=True), how
        )
        directory = _find_idx_dir(candidates)
        if directory is None:
            raise DataError(f"{name} download left no idx files under {config.root}; {how}")
    return _images_from_idx(name, directory, classes)


@register_dataset("fashion-mnist")
def load_fashion_mnist(config: DataConfig) -> Dataset:
    root = Path(config.root)
    how = (
        "install it with `apt-get install dataset-fashion-mnist`, or copy the four idx files "
        f"(train-images-idx3-ubyte.gz, ...) into {root / 'fashion-mnist'}"
    )
    candidates = [*SYSTEM_FASHION_MNIST_DIRS, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return _idx_dataset("fashion-mnist", config, candidates, "FashionMNIST", how, FASHION_CLASSES)


@register_dataset("mnist")
def load_mnist(config: DataConfig) -> Dataset:
    root = Path(config.root)
    how = (
        f"run once on a machine with internet (torchvision downloads it into {root / 'MNIST'}), "
        f"or copy the four idx files into {root / 'mnist'}"
    )
    candidates = [root / "mnist", root / "MNIST" / "raw"]
    return _idx_dataset("mnist", config, candidates, "MNIST", how, tuple(str(digit) for digit in range(10)))


# --- CIFAR (python pickles, read without executing code) ---------------------------------------


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickle CIFAR batches: dicts, lists, bytes and numpy arrays, nothing that could run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only arrays")


def read_cifar_batch(path: Path) -> dict[str, Any]:
    """One CIFAR python batch as a dict with str keys."""
    try:
        with open(path, "rb") as handle:
            entry = _ArrayOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: not a readable CIFAR batch ({exc}); delete the folder and download it again"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(
            f"{path}: not a CIFAR batch (expected a dict); delete the folder and download it again"
        )
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}


CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def _load_cifar(name: str, config: DataConfig) -> Dataset:
    folder, train_files, test_files, label_key, meta_file, names_key = CIFAR_LAYOUT[name]
    root = Path(config.root)
    directory = root / folder
    how = (
        f"run once on a machine with internet (torchvision downloads it into {root}), "
        f"or copy the extracted {folder}/ folder there"
    )
    needed = [*train_files, *test_files]
    if not all((directory / file).is_file() for file in needed):
        from torchvision.datasets import CIFAR10, CIFAR100

        dataset_class = CIFAR10 if name == "cifar10" else CIFAR100
        _download(name, config, lambda: dataset_class(str(root), download=True), how)

    def read(files: list[str]) -> tuple[np.ndarray, torch.Tensor]:
        images: list[np.ndarray]
        labels: list[int]
        images, labels = [], []
        for file in files:
            entry = read_cifar_batch(directory / file)
            try:
                data = np.asarray(entry["data"], dtype=np.uint8)
                images.append(data.reshape(-1, 3, 32, 32))
                labels.extend(int(label) for label in entry[label_key])
            except (KeyError, ValueError) as exc:
                raise DataError(
                    f"{directory / file}: missing or malformed field ({exc}); download it again"
                ) from None
        stacked = np.concatenate(images)
        if len(stacked) != len(labels):
            raise DataError(f"{directory}: image and label counts differ; download it again")
        return stacked, torch.tensor(labels, dtype=torch.int64)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    classes: tuple[str, ...]
    if (directory / meta_file).is_file():
        names = read_cifar_batch(directory / meta_file).get(names_key, [])
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    else:
        classes = ()
    num_classes = 10 if name == "cifar10" else 100
    if len(classes) != num_classes:
        classes = tuple(str(i) for i in range(num_classes))
    return standardised_images(
        name, train_x, train_y, test_x, test_y, classes, str(directory), NORMALISATION[name]
    )


@register_dataset("cifar10")
def load_cifar10(config: DataConfig) -> Dataset:
    return _load_cifar("cifar10", config)


@register_dataset("cifar100")
def load_cifar100(config: DataConfig) -> Dataset:
    return _load_cifar("cifar100", config)


# Users' own data registers itself here, after the registry above exists.
from kdtemp import user_data  # noqa: E402, F401
