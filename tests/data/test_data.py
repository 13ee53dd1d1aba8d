"""Dataset loading on files the tests write in the real formats; nothing touches the network."""

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch

from helpers import write_idx, write_idx_set
import kdtemp.data.builtin
from kdtemp.config.schema import DataConfig
from kdtemp.data import augmentation
from kdtemp.errors import DataError


def test_mnist1d_reference_split_and_cache(data_root):
    config = DataConfig(root=data_root)
    first = kdtemp.data.registry.load_dataset(config)
    # the reference 4000 train / 1000 test, less the default 10% validation split held out of train
    assert first.train_x.shape == (3600, 1, 40) and first.test_x.shape == (1000, 1, 40)
    assert first.val_x is not None and first.val_x.shape == (400, 1, 40)
    assert first.num_classes == 10 and first.train_x.dtype == torch.float32
    assert sorted(first.train_y.unique().tolist()) == list(range(10))
    second = kdtemp.data.registry.load_dataset(config)
    assert "mnist1d-reference" in second.source  # read back from the cache
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)


def test_mnist1d_matches_the_package_reference(data_root):
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    ours = kdtemp.data.registry.load_dataset(DataConfig(root=data_root, val_fraction=0))
    assert np.allclose(ours.train_x.squeeze(1).numpy(), reference["x"], atol=1e-6)
    assert np.array_equal(ours.test_y.numpy(), reference["y_test"])


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx(tmp_path, compress):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "x", array, compress)
    assert np.array_equal(kdtemp.data.builtin.read_idx(tmp_path / "x"), array)


def test_truncated_idx_is_refused(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 4, 4)))
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        kdtemp.data.builtin.read_idx(tmp_path / "x")


def test_fashion_mnist_from_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setattr(kdtemp.data.builtin, "SYSTEM_FASHION_MNIST_DIRS", [tmp_path / "absent"])
    arrays = write_idx_set(tmp_path / "data" / "fashion-mnist")
    dataset = kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="fashion-mnist", root=tmp_path / "data"))
    assert dataset.train_x.shape == (6, 1, 28, 28) and dataset.test_x.shape == (4, 1, 28, 28)
    expected = (arrays["train_x"][2, 5, 7] / 255.0 - 0.2860) / 0.3530
    assert float(dataset.train_x[2, 0, 5, 7]) == pytest.approx(expected, abs=1e-5)
    assert dataset.train_y.tolist() == arrays["train_y"].tolist()
    assert dataset.classes[9] == "Ankle boot"


def test_fashion_mnist_system_directory_comes_first(tmp_path, monkeypatch):
    system = tmp_path / "system"
    write_idx_set(system, train_count=3, seed=1)
    write_idx_set(tmp_path / "data" / "fashion-mnist", train_count=5)
    monkeypatch.setattr(kdtemp.data.builtin, "SYSTEM_FASHION_MNIST_DIRS", [system])
    dataset = kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="fashion-mnist", root=tmp_path / "data"))
    assert len(dataset.train_y) == 3 and dataset.source == str(system)


def test_fashion_mnist_missing_offline_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(kdtemp.data.builtin, "SYSTEM_FASHION_MNIST_DIRS", [tmp_path / "absent"])
    with pytest.raises(DataError) as excinfo:
        kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="fashion-mnist", root=tmp_path, download=False))
    assert "apt-get install dataset-fashion-mnist" in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(kdtemp.data.builtin, "SYSTEM_FASHION_MNIST_DIRS", [tmp_path / "absent"])
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match=r"not found offline and the download failed \(.*name resolution.*\); install"):
        kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="fashion-mnist", root=tmp_path))


def test_mnist_in_torchvision_layout(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", compress=False)
    dataset = kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="mnist", root=tmp_path, download=False))
    expected = (arrays["test_x"][1, 0, 3] / 255.0 - 0.1307) / 0.3081
    assert float(dataset.test_x[1, 0, 0, 3]) == pytest.approx(expected, abs=1e-5)


def test_mnist_missing_offline(tmp_path):
    with pytest.raises(DataError, match=r"mnist not found offline; run once on a machine with internet"):
        kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="mnist", root=tmp_path, download=False))


def write_cifar(root, name, count=4, seed=0):
    """Tiny CIFAR python batches as the official tarballs hold them (pickled dicts, uint8 rows)."""
    rng = np.random.default_rng(seed)
    folder, train_files, test_files, label_key, meta_file, names_key = kdtemp.data.builtin.CIFAR_LAYOUT[name]
    directory = root / folder
    directory.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    written = {}
    for file in [*train_files, *test_files]:
        batch = {"batch_label": f"{file} of 1", "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, classes, count).tolist(), "filenames": [f"img{i}.png" for i in range(count)]}
        with open(directory / file, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        written[file] = batch
    with open(directory / meta_file, "wb") as handle:
        pickle.dump({names_key: [f"class{i}" for i in range(classes)]}, handle, protocol=2)
    return written


def test_cifar10_batches(tmp_path):
    written = write_cifar(tmp_path, "cifar10")
    dataset = kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="cifar10", root=tmp_path, download=False))
    assert dataset.train_x.shape == (20, 3, 32, 32) and dataset.test_x.shape == (4, 3, 32, 32)
    first = written["data_batch_1"]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    green_pixel = first["data"][1, 1024 + 32 * 5 + 9]
    assert float(dataset.train_x[1, 1, 5, 9]) == pytest.approx((green_pixel / 255 - 0.4822) / 0.2435, abs=1e-5)
    assert dataset.train_y[:4].tolist() == first["labels"]
    assert dataset.classes[3] == "class3"


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar(tmp_path, "cifar100")
    dataset = kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="cifar100", root=tmp_path, download=False))
    assert dataset.num_classes == 100
    assert dataset.test_y.tolist() == written["test"]["fine_labels"]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": payload, "labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        kdtemp.data.registry.load_dataset(DataConfig(val_fraction=0, dataset="cifar10", root=tmp_path, download=False))
    assert not marker.exists()


def reference_augment(images, offsets, flips, pad_value, padding=4):
    """Per-sample pad, crop and flip, the way torchvision's RandomCrop + RandomHorizontalFlip do."""
    results = []
    for image, (row, col), flip in zip(images, offsets.tolist(), flips.tolist()):
        channels, height, width = image.shape
        padded = torch.empty(channels, height + 2 * padding, width + 2 * padding)
        for c in range(channels):
            padded[c].fill_(pad_value[c])
        padded[:, padding:padding + height, padding:padding + width] = image
        crop = padded[:, row:row + height, col:col + width]
        results.append(crop.flip(-1) if flip else crop)
    return torch.stack(results)


def test_augmentation_matches_per_sample_reference():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(10, 3, 8, 8, generator=generator)
    pad_value = (-1.0, -2.0, -3.0)
    plan = augmentation.draw_augmentation(10, generator, torch.device("cpu"), pad_value)
    indices = torch.tensor([3, 0, 9, 9, 5])
    ours = augmentation.augment_batch(images[indices], indices, plan)
    expected = reference_augment(images[indices], plan.offsets[indices], plan.flips[indices], pad_value)
    assert torch.equal(ours, expected)
    assert plan.flips.any() and (~plan.flips).any()
