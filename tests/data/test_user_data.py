"""Users' own data: `dataset: image-folder` and `dataset: tensors` (.npz / .pt), loading, caching,
refusals, and train-teacher -> sweep -> report on each."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import IMAGE_FOLDER_CLASSES, experiment, write_experiment, write_image_folder
from PIL import Image
from rich.console import Console

import kdtemp.data.custom
from kdtemp.cli import progress
from kdtemp.config.loading import load_config
from kdtemp.config.schema import DataConfig
from kdtemp.data.registry import load_dataset
from kdtemp.errors import DataError
from kdtemp.sweep.plan import planned_runs

CLASSES = IMAGE_FOLDER_CLASSES


@pytest.fixture
def wide_output(monkeypatch):
    monkeypatch.setattr(progress, "out", Console(width=300))
    monkeypatch.setattr(progress, "err", Console(stderr=True, width=300))


def write_npz(path: Path, seed: int = 0, **replace) -> Path:
    """uint8 (N, 3, 6, 6) images of 3 separable classes; `replace` swaps or drops (None) arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", 24), ("test", 9)):
        labels = np.arange(count) % 3
        images = rng.integers(0, 80, (count, 3, 6, 6), dtype=np.uint8)
        images[np.arange(count), labels] += 170
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    arrays.update(replace)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def user_experiment(tmp_path: Path, data: dict, name: str = "own") -> Path:
    return write_experiment(
        tmp_path, tmp_path / "data", name, data={**data, "batch_size": 8},
        teacher={"channels": [4, 8], "hidden": 16, "epochs": 1},
        student={"hidden": [16], "epochs": 1}, kd={"temperatures": [4], "seeds": [0, 1]})


def assert_refused(result, message: str, runs: Path) -> None:
    assert result.code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not [path for path in runs.rglob("*") if path.is_file()]


# --- image-folder --------------------------------------------------------------------------------


def test_image_folder_matches_torchvision_imagefolder(tmp_path):
    """Classes, labels and pixels as torchvision's ImageFolder + Resize + CenterCrop give them, then
    standardised with the train split's per-channel mean/std recomputed here in float64."""
    from torchvision import datasets, transforms

    root = write_image_folder(tmp_path / "images")
    data = load_dataset(DataConfig(val_fraction=0, dataset="image-folder", root=root, image_size=8))
    to_pixels = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.PILToTensor()])
    reference = {split: datasets.ImageFolder(str(root / split), transform=to_pixels) for split in ("train", "val")}
    assert data.classes == tuple(reference["train"].classes) == CLASSES
    pixels = {split: torch.stack([image for image, _ in reference[split]]).double() / 255 for split in reference}
    mean = pixels["train"].mean(dim=(0, 2, 3), keepdim=True)
    std = pixels["train"].std(dim=(0, 2, 3), keepdim=True, correction=0)
    for split, x, y in (("train", data.train_x, data.train_y), ("val", data.test_x, data.test_y)):
        assert y.tolist() == [label for _, label in reference[split].samples]
        torch.testing.assert_close(x.double(), (pixels[split] - mean) / std, atol=1e-5, rtol=0)
    assert data.input_shape == (3, 8, 8) and data.num_classes == 3
    assert data.pad_value == pytest.approx((-mean / std).flatten().tolist())


def test_grayscale_folder_keeps_one_channel_unless_any_image_has_colour(tmp_path):
    gray = load_dataset(DataConfig(val_fraction=0, dataset="image-folder", root=write_image_folder(tmp_path / "gray", mode="L"), image_size=6))
    assert gray.input_shape == (1, 6, 6)
    mixed_root = write_image_folder(tmp_path / "mixed", mode="L")
    Image.new("RGB", (12, 12), (200, 10, 10)).save(mixed_root / "val" / "apple" / "colour.png")
    mixed = load_dataset(DataConfig(val_fraction=0, dataset="image-folder", root=mixed_root, image_size=6))
    assert mixed.input_shape == (3, 6, 6)
    # a grayscale image in an RGB dataset is its gray level repeated in every channel
    cached = torch.load(next((mixed_root / kdtemp.data.custom.CACHE_DIR).glob("*.pt")), weights_only=True)
    assert torch.equal(cached["train_x"][:, 0], cached["train_x"][:, 1])
    assert torch.equal(cached["train_x"][:, 0], cached["train_x"][:, 2])
    assert not torch.equal(cached["test_x"][:, 0], cached["test_x"][:, 1])  # the colour image


def test_second_load_reads_the_cache_and_a_changed_folder_decodes_again(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images")
    config = DataConfig(val_fraction=0, dataset="image-folder", root=root, image_size=8)
    first = load_dataset(config)
    assert len(list((root / kdtemp.data.custom.CACHE_DIR).glob("*.pt"))) == 1

    def no_decoding(path, size):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(kdtemp.data.custom, "decode_image", no_decoding)
    second = load_dataset(config)
    assert "cached" in second.source
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert torch.load(next((root / kdtemp.data.custom.CACHE_DIR).glob("*.pt")), weights_only=True)["train_x"].dtype == torch.uint8

    Image.new("RGB", (12, 12)).save(root / "train" / "kiwi" / "new.png")
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(config)
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(DataConfig(val_fraction=0, dataset="image-folder", root=root, image_size=6))


def break_missing_val(root):
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()


def break_missing_train(root):
    (root / "train").rename(root / "training")


def break_class_lists(root):
    (root / "val" / "plum").rename(root / "val" / "pear")


def break_empty_class(root):
    for path in (root / "train" / "kiwi").iterdir():
        path.rename(path.with_suffix(".txt"))


def break_unreadable_image(root):
    (root / "train" / "plum" / "3.png").write_bytes(b"not a png")


@pytest.mark.parametrize("damage, message", [
    (break_missing_val, r"images has no test/ folder; image-folder expects root/train/<class>/"),
    (break_missing_train, r"images has no train/ folder; image-folder expects root/train/<class>/"),
    (break_class_lists, r"train/ and val/ hold different classes \(only in train: \['plum'\], only in val: \['pear'\]\)"),
    (break_empty_class, r"train/kiwi holds no images \(\.jpg"),
    (break_unreadable_image, r"train/plum/3\.png: not a readable image"),
])
def test_bad_image_folders_are_refused_before_anything_is_written(tmp_path, run_cli, wide_output, damage, message):
    root = write_image_folder(tmp_path / "images")
    damage(root)
    config = user_experiment(tmp_path, {"dataset": "image-folder", "root": str(root), "image_size": 8})
    assert_refused(run_cli("train-teacher", "--config", config), message, tmp_path / "runs")
    assert not (root / kdtemp.data.custom.CACHE_DIR).exists()


# --- tensors -------------------------------------------------------------------------------------


def test_uint8_npz_is_scaled_and_standardised_per_channel(tmp_path):
    path = write_npz(tmp_path / "data.npz", classes=np.array(list(CLASSES)))
    data = load_dataset(DataConfig(val_fraction=0, dataset="tensors", root=path))
    with np.load(path) as arrays:
        train, test = arrays["x_train"] / 255.0, arrays["x_test"] / 255.0
        mean, std = train.mean(axis=(0, 2, 3), keepdims=True), train.std(axis=(0, 2, 3), keepdims=True)
        np.testing.assert_allclose(data.train_x.numpy(), (train - mean) / std, atol=1e-5)
        np.testing.assert_allclose(data.test_x.numpy(), (test - mean) / std, atol=1e-5)
        assert data.train_y.tolist() == arrays["y_train"].tolist() and data.train_y.dtype == torch.int64
    assert data.classes == CLASSES and data.input_shape == (3, 6, 6)


def test_float_vectors_in_a_pt_file_are_used_as_given(tmp_path):
    arrays = {"x_train": torch.randn(10, 5, dtype=torch.float64), "y_train": torch.arange(10) % 4,
              "x_test": torch.randn(3, 5), "y_test": torch.tensor([0, 1, 2])}
    torch.save(arrays, tmp_path / "data.pt")
    data = load_dataset(DataConfig(val_fraction=0, dataset="tensors", root=tmp_path / "data.pt"))
    assert torch.equal(data.train_x, arrays["x_train"].float()) and torch.equal(data.test_x, arrays["x_test"])
    assert data.classes == ("0", "1", "2", "3") and data.input_shape == (5,)


TENSOR_CASES = [
    ({"y_test": None}, r"data.npz lacks y_test \(it holds x_test, x_train, y_train\); save x_train, y_train, x_test, y_test"),
    ({"y_train": np.arange(23) % 3}, r"x_train holds 24 samples but y_train 23 labels"),
    ({"x_test": np.zeros((9, 3, 6, 5), np.uint8)}, r"x_train samples have shape \(3, 6, 6\), x_test \(3, 6, 5\)"),
    ({"y_train": (np.arange(24) % 3).astype(np.float32)}, r"y_train is float32 of shape \(24,\); labels must be one integer"),
    ({"y_test": np.arange(9) % 3 - 1}, r"y_test has negative labels \(smallest -1\)"),
    ({"x_train": np.where(np.arange(24 * 108).reshape(24, 3, 6, 6) == 5, np.nan, 0.5)}, r"x_train holds 1 NaN or infinite values"),
    ({"x_test": np.where(np.arange(9 * 108).reshape(9, 3, 6, 6) == 7, np.inf, 0.5)}, r"x_test holds 1 NaN or infinite values"),
    ({"classes": np.array(["apple", "kiwi"])}, r"classes names 2 classes but the labels go up to 2"),
    ({"classes": np.array([{"a": 1}], dtype=object)}, r"holds object arrays"),
]


@pytest.mark.parametrize("arrays, message", TENSOR_CASES)
def test_bad_tensor_files_are_refused_before_anything_is_written(tmp_path, run_cli, wide_output, arrays, message):
    if "classes" in arrays and arrays["classes"].dtype == object:
        np.savez(tmp_path / "data.npz", **{**dict(np.load(write_npz(tmp_path / "data.npz"))), **arrays})
    else:
        write_npz(tmp_path / "data.npz", **arrays)
    config = user_experiment(tmp_path, {"dataset": "tensors", "root": str(tmp_path / "data.npz")})
    assert_refused(run_cli("train-teacher", "--config", config), message, tmp_path / "runs")


def test_tensor_file_that_is_missing_or_would_run_code(tmp_path, run_cli, wide_output):
    with pytest.raises(DataError, match=r"tensors file .*absent.npz not found; set data.root"):
        load_dataset(DataConfig(val_fraction=0, dataset="tensors", root=tmp_path / "absent.npz"))
    torch.save({"x_train": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match=r"refused to load .*evil.pt: it holds Python objects"):
        load_dataset(DataConfig(val_fraction=0, dataset="tensors", root=tmp_path / "evil.pt"))
    config = user_experiment(tmp_path, {"dataset": "tensors", "root": str(tmp_path / "evil.pt")})
    assert_refused(run_cli("train-teacher", "--config", config), r"refused to load .*evil.pt: it holds Python objects",
                   tmp_path / "runs")


# --- end to end ----------------------------------------------------------------------------------


def train_sweep_report(run_cli, config: Path) -> None:
    for command in ("train-teacher", "sweep", "report"):
        result = run_cli(command, "--config", config)
        assert result.code == 0, f"{command}: {result.stderr}"
    summary = (experiment(config) / "report" / "summary.csv").read_text()
    assert "constant" in summary and "none" in summary
    assert len(list((experiment(config) / "students").iterdir())) == 4  # T=4 and the baseline, 2 seeds each


def test_image_folder_end_to_end_and_a_teacher_for_another_folder_is_refused(tmp_path, run_cli, wide_output):
    folder_a = write_image_folder(tmp_path / "a", seed=0)
    config = user_experiment(tmp_path, {"dataset": "image-folder", "root": str(folder_a), "image_size": 8})
    train_sweep_report(run_cli, config)
    checkpoint = torch.load(experiment(config) / "teacher" / "model.pt", weights_only=True)
    assert checkpoint["dataset"] == "image-folder" and checkpoint["input_shape"] == [3, 8, 8]

    tree = yaml.safe_load(config.read_text())
    tree["data"]["root"] = str(write_image_folder(tmp_path / "b", seed=1))
    config.write_text(yaml.safe_dump(tree))
    result = run_cli("sweep", "--config", config)
    assert result.code == 2 and "was trained on different image-folder data" in result.stderr, result.stderr


def test_tensors_end_to_end_and_two_files_give_different_run_ids(tmp_path, run_cli, wide_output):
    config_a = user_experiment(tmp_path, {"dataset": "tensors", "root": str(write_npz(tmp_path / "a.npz", seed=0))}, "a")
    train_sweep_report(run_cli, config_a)
    config_b = user_experiment(tmp_path, {"dataset": "tensors", "root": str(write_npz(tmp_path / "b.npz", seed=1))}, "b")
    assert run_cli("train-teacher", "--config", config_b).code == 0
    ids_a = {run.run_id for run in planned_runs(load_config(config_a))}
    ids_b = {run.run_id for run in planned_runs(load_config(config_b))}
    assert len(ids_a) == len(ids_b) == 4 and not ids_a & ids_b


def test_a_teacher_cut_off_on_one_file_does_not_resume_on_another(tmp_path):
    """The teacher's epoch checkpoint records the data's fingerprint: same dataset name, other arrays -> from scratch."""
    from kdtemp.events import Note
    from kdtemp.teachers.training import train_teacher

    def notes(config: Path, stop_after: int | None) -> list[str]:
        checks = iter(range(10_000))
        stop = None if stop_after is None else (lambda: next(checks) >= stop_after)
        texts = []
        try:
            train_teacher(load_config(config), should_stop=stop,
                          emit=lambda event: texts.append(event.text) if isinstance(event, Note) else None)
        except Exception as exc:  # the stop request ends the job; what matters is the next run's notes
            if type(exc).__name__ != "StopRequested":
                raise
        return texts

    config = user_experiment(tmp_path, {"dataset": "tensors", "root": str(write_npz(tmp_path / "a.npz", seed=0))})
    tree = yaml.safe_load(config.read_text())
    tree["teacher"]["epochs"] = 3
    config.write_text(yaml.safe_dump(tree))
    notes(config, stop_after=4)  # cut off after its first epoch (3 steps an epoch)
    checkpoint = experiment(config) / "teacher" / "checkpoint.pt"
    assert checkpoint.exists()
    tree["data"]["root"] = str(write_npz(tmp_path / "b.npz", seed=1))
    config.write_text(yaml.safe_dump(tree))
    assert not any(text.startswith("resuming") for text in notes(config, stop_after=None))
