"""The validation split (issue 22): stratified, seeded, disjoint from everything the teacher and the students
train on, identical across runs, and the user's own split honoured."""

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import IMAGE_FOLDER_CLASSES, write_image_folder

from kdtemp.config.loading import load_config
from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import Dataset
from kdtemp.data.registry import load_dataset
from kdtemp.data.validation import stratified_split
from kdtemp.engine import loop
from kdtemp.errors import DataError
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.sweep.runner import sweep
from kdtemp.teachers.training import train_teacher


def test_the_split_is_stratified_seeded_and_a_partition_of_the_training_set():
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((size,), label) for label, size in enumerate([500, 120, 37, 3, 1])])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    train, val = stratified_split(labels, 0.1, seed=7)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(labels)))  # a partition
    assert not set(train.tolist()) & set(val.tolist())
    assert len(val) == round(0.1 * len(labels))
    for label in range(5):
        size, held = int((labels == label).sum()), int((labels[val] == label).sum())
        assert abs(held - 0.1 * size) < 1  # stratified: each class's share within one sample of 10%
        assert int((labels[train] == label).sum()) >= 1  # every class keeps a sample to train on
    again, _ = stratified_split(labels, 0.1, seed=7)
    other, _ = stratified_split(labels, 0.1, seed=8)
    assert torch.equal(train, again) and not torch.equal(train, other)


def unique_rows(n: int, features: int = 4, classes: int = 3, seed: int = 0):
    """Float rows whose first feature is the row's id, so any training batch can be traced to its rows."""
    generator = np.random.default_rng(seed)
    x = generator.normal(size=(n, features)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x, np.arange(n) % classes


def test_teacher_and_students_never_train_on_the_validation_split(tmp_path, monkeypatch):
    x, y = unique_rows(120)
    x_test, y_test = unique_rows(30, seed=1)
    np.savez(tmp_path / "rows.npz", x_train=x, y_train=y, x_test=x_test + 1000, y_test=y_test)
    seen: set[int] = set()
    original = loop.EpochBatches.__iter__

    def recording(self):
        for indices, inputs, targets in original(self):
            seen.update(int(v) for v in inputs.reshape(-1, inputs.shape[-1])[:, 0].tolist())
            yield indices, inputs, targets

    monkeypatch.setattr(loop.EpochBatches, "__iter__", recording)
    config_path = tmp_path / "rows.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "rows", "runs_dir": str(tmp_path / "runs"),
        "data": {"dataset": "tensors", "root": str(tmp_path / "rows.npz"), "batch_size": 16, "val_fraction": 0.25},
        "teacher": {"arch": "mlp", "hidden": [16], "epochs": 1}, "student": {"hidden": [8], "epochs": 1},
        "kd": {"temperatures": [2], "seeds": [0, 1]}}))
    config = load_config(config_path)
    data = load_dataset(config.data)
    val_ids = set(int(v) for v in data.val_x[:, 0].tolist())
    assert len(val_ids) == 30 and set(int(v) for v in data.train_x[:, 0].tolist()) == set(range(120)) - val_ids
    train_teacher(config)
    teacher_saw = set(seen)
    assert teacher_saw == set(range(120)) - val_ids  # every training row, and not one validation row
    seen.clear()
    sweep(config)
    assert seen == set(range(120)) - val_ids  # the students (several seeds, stacked) likewise
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    run_dir = layout.run_dirs()[0]
    recorded = yaml.safe_load(RunFiles(run_dir).config.read_text())["experiment"]["data"]
    assert (recorded["val_fraction"], recorded["split_seed"]) == (0.25, 0)
    summary = json.loads(RunFiles(run_dir).summary.read_text())
    assert summary["val_is_test"] is False and "stratified" in summary["validation"]
    metrics = (RunFiles(run_dir).metrics).read_text().splitlines()[0].split(",")
    assert {"val_acc", "val_loss", "val_agreement", "val_kl", "val_ece"} <= set(metrics)


def test_the_split_is_the_same_for_every_run_and_enters_the_fingerprint(data_root):
    first, second = (load_dataset(DataConfig(root=data_root)) for _ in range(2))
    assert torch.equal(first.val_x, second.val_x) and torch.equal(first.train_y, second.train_y)
    assert first.fingerprint() == second.fingerprint()
    other = load_dataset(DataConfig(root=data_root, split_seed=1))
    assert other.fingerprint() != first.fingerprint() and not torch.equal(other.val_x, first.val_x)
    whole = load_dataset(DataConfig(root=data_root, val_fraction=0))
    assert whole.val_is_test and len(whole.train_y) == len(first.train_y) + len(first.val_y)
    # without a split the fingerprint is the one a Dataset of the four arrays always had (older teachers load)
    plain = Dataset(whole.name, whole.train_x, whole.train_y, whole.test_x, whole.test_y, whole.classes, "")
    assert whole.fingerprint() == plain.fingerprint()


def test_a_tensors_files_own_validation_split_wins(tmp_path):
    x, y = unique_rows(40)
    x_val, y_val = unique_rows(9, seed=2)
    np.savez(tmp_path / "own.npz", x_train=x, y_train=y, x_val=x_val, y_val=y_val, x_test=x[:5], y_test=y[:5])
    data = load_dataset(DataConfig(dataset="tensors", root=tmp_path / "own.npz"))
    assert torch.equal(data.val_x, torch.from_numpy(x_val)) and torch.equal(data.val_y, torch.from_numpy(y_val))
    assert len(data.train_y) == 40 and data.validation == "x_val/y_val of own.npz"
    np.savez(tmp_path / "half.npz", x_train=x, y_train=y, x_val=x_val, x_test=x[:5], y_test=y[:5])
    with pytest.raises(DataError, match=r"half.npz holds x_val but not y_val; save both for your own validation split"):
        load_dataset(DataConfig(dataset="tensors", root=tmp_path / "half.npz"))


def test_an_image_folders_val_beside_test_is_the_validation_split(tmp_path):
    root = write_image_folder(tmp_path / "three", train=8, val=3)
    for name in IMAGE_FOLDER_CLASSES:  # test/ beside train/ and val/: val/ is validation now
        (root / "test" / name).mkdir(parents=True)
        for image in sorted((root / "train" / name).glob("*.png"))[:2]:
            (root / "test" / name / image.name).write_bytes(image.read_bytes())
    data = load_dataset(DataConfig(dataset="image-folder", root=root, image_size=6))
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (24, 9, 6) and not data.notices
    assert data.validation.endswith("(the folder's own)")


def test_the_old_train_val_layout_keeps_val_as_test_and_says_so(tmp_path):
    root = write_image_folder(tmp_path / "two", train=10, val=3)
    data = load_dataset(DataConfig(dataset="image-folder", root=root, image_size=6))
    assert len(data.test_y) == 9 and len(data.train_y) + len(data.val_y) == 30 and len(data.val_y) == 3
    (notice,) = data.notices
    assert "val/ is read as the test split" in notice and "put the test images in test/" in notice


def test_val_fraction_0_writes_no_validation_numbers_and_the_report_says_it_chose_on_test(tmp_path):
    from kdtemp.report.build import build_report
    from kdtemp.report.text import headline

    x, y = unique_rows(90)
    np.savez(tmp_path / "rows.npz", x_train=x, y_train=y, x_test=x[:30] + 1000, y_test=y[:30])
    config_path = tmp_path / "whole.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "whole", "runs_dir": str(tmp_path / "runs"),
        "data": {"dataset": "tensors", "root": str(tmp_path / "rows.npz"), "batch_size": 16, "val_fraction": 0},
        "teacher": {"arch": "mlp", "hidden": [16], "epochs": 1}, "student": {"hidden": [8], "epochs": 2},
        "kd": {"temperatures": [1, 4], "seeds": [0, 1, 2]}}))
    config = load_config(config_path)
    train_teacher(config)
    sweep(config)
    layout = ExperimentLayout.of(config.runs_dir, config.name)
    for run_dir in layout.run_dirs():
        rows = (RunFiles(run_dir).metrics).read_text().splitlines()
        header = rows[0].split(",")
        assert all(row.split(",")[header.index("val_acc")] == "" for row in rows[1:])
        summary = json.loads(RunFiles(run_dir).summary.read_text())
        assert summary["val_is_test"] is True and summary["best_epoch"] is None
    section = build_report(layout.root).settings[0]
    assert headline(section).splitlines()[-1].startswith("warning: chosen on the test set it reports")
    assert "no validation split" in section.table.legend
