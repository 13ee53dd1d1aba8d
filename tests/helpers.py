"""Helpers the test modules share: tiny experiment configs, their directories, final metrics, the CLI in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import yaml

from kdtemp.store.layout import ExperimentLayout, RunFiles

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
