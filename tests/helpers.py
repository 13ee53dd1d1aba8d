"""Helpers the test modules share: tiny experiment configs, their directories, final metrics, the CLI in a subprocess."""

from __future__ import annotations

import gzip
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

import kdtemp.data.builtin
from kdtemp.store.files import atomic_write_yaml, write_csv
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.records import STUDENT_COLUMNS

REPO = Path(__file__).resolve().parent.parent


def write_experiment(directory: Path, data_root: Path, name: str = "tiny", **sections) -> Path:
    """A small MNIST-1D experiment config at directory/NAME.yaml (runs under directory/runs); sections merge in."""
    tree = {
        "runs_dir": str(directory / "runs"),
        "data": {"root": str(data_root), "batch_size": 256},
        "teacher": {"channels": [8, 16], "hidden": 32, "epochs": 2},
        "student": {"hidden": [32], "epochs": 2},
        "kd": {"temperatures": [1, 4], "seeds": [0, 1]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key] = {**tree[key], **value}
        else:
            tree[key] = value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def experiment(config: Path) -> Path:
    """The experiment directory of a config written by `write_experiment`."""
    return config.parent / "runs" / config.stem


def train_experiment(config: Path) -> Path:
    """train-teacher then sweep, in this process, through the library."""
    from kdtemp.config.loading import load_config
    from kdtemp.sweep.runner import sweep
    from kdtemp.teachers.training import train_teacher

    for job in (train_teacher, sweep):
        job(load_config(config))
    return config


def job_events(job, *args, **kwargs) -> list:
    """Run a library job: the events it emitted, in order, then what it returned (each result of a list)."""
    events: list = []
    returned = job(*args, emit=events.append, **kwargs)
    return events + (returned if isinstance(returned, list) else [returned])


def final_metrics(root: Path) -> pd.DataFrame:
    """Every run's metrics.csv under experiment `root` (wall times dropped), checking no epoch is missing or doubled."""
    frames = []
    for run_dir in ExperimentLayout(root).run_dirs():
        frame = pd.read_csv(RunFiles(run_dir).metrics)
        assert list(frame["epoch"]) == list(range(len(frame))), run_dir.name
        frames.append(frame.drop(columns=["epoch_seconds"]))
    return pd.concat(frames, ignore_index=True).sort_values(["run_id", "epoch"]).reset_index(drop=True)


def kdtemp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdtemp", *map(str, args)]


def kdtemp_env(extra: dict | None = None) -> dict:
    """The environment for `python -m kdtemp` in a subprocess: this checkout first, wide tables."""
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(extra or {})}


# --- writers several test packages share ------------------------------------------------------


def write_idx(path, array, compress=False):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_idx_set(directory, train_count=6, test_count=4, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (train_count, 28, 28)), "train_y": rng.integers(0, 10, train_count),
        "test_x": rng.integers(0, 256, (test_count, 28, 28)), "test_y": rng.integers(0, 10, test_count),
    }
    for key, stem in kdtemp.data.builtin.IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if compress else "")), arrays[key], compress)
    return arrays


def write_run(root, run_id, schedule, t0, seed, final_acc, epochs=3, status="completed", alpha=0.9, identity=None,
              val_acc=None, val_is_test=None):
    """A run's metrics.csv and summary.json; with `identity`, a config.yaml recording it as a sweep does.
    Validation accuracy climbs to `val_acc` (default: the test accuracy's `final_acc`) as test's does; with
    `val_is_test` (no validation split, as data.val_fraction 0 writes) the val_ cells stay empty."""
    val_final = final_acc if val_acc is None else val_acc
    run_dir = root / "students" / run_id
    run_dir.mkdir(parents=True)
    if identity is not None:
        grid = {"schedule": None if schedule == "none" else {"name": schedule}, "t0": t0, "seed": seed,
                "alpha": 0.0 if schedule == "none" else alpha}
        atomic_write_yaml(run_dir / "config.yaml", {"identity": {**identity, **grid}, "experiment": {"name": "x"}})
    rows = []
    for epoch in range(epochs):
        accuracy = final_acc - 0.05 * (epochs - 1 - epoch)
        rows.append({"run_id": run_id, "schedule": schedule, "t0": t0, "alpha": 0.0 if schedule == "none" else alpha,
                     "seed": seed, "epoch": epoch, "temperature": t0, "lr": 0.1, "train_loss": 1.0, "train_ce": 1.0,
                     "train_kd": None, "train_acc": 0.9, "test_loss": 1.5 - accuracy, "test_acc": accuracy,
                     "agreement": accuracy + 0.01, "epoch_seconds": 0.1, "test_kl": 0.5, "test_ece": 0.05,
                     "val_acc": None if val_is_test else val_final - 0.05 * (epochs - 1 - epoch),
                     "val_loss": None if val_is_test else 1.5 - accuracy})
    write_csv(run_dir / "metrics.csv", rows, STUDENT_COLUMNS)
    summary = {"run_id": run_id, "status": status, "schedule": schedule, "t0": t0, "alpha": rows[0]["alpha"],
               "seed": seed, "epochs": epochs, "student_params": 1000}
    if status == "failed":
        summary["reason"] = "training loss became nan in epoch 1"
    if val_is_test is not None:
        summary["val_is_test"] = val_is_test
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


IMAGE_FOLDER_CLASSES = ("apple", "kiwi", "plum")


def write_image_folder(root: Path, seed: int = 0, size: tuple[int, int] = (14, 12), mode: str = "RGB",
                       train: int = 8, val: int = 4) -> Path:
    """3 classes, each brightest in its own colour channel (separable); width x height = `size`."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(IMAGE_FOLDER_CLASSES):
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., label] += 170
                image = Image.fromarray(pixels)
                (image.convert("L") if mode == "L" else image).save(directory / f"{index}.png")
    return root
