"""TensorBoard logging: the event files read back with TensorBoard's own reader match metrics.csv and the
temperature tables; a resumed run repeats no step; a missing package is refused before anything is written."""

import math
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import experiment, write_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from kdtemp.cli import app
from kdtemp.config.loading import load_config
from kdtemp.engine.loop import StopRequested
from kdtemp.events import Progress
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.loggers import MISSING_TENSORBOARD, STEP_TEMPERATURE
from kdtemp.sweep.runner import sweep
from kdtemp.teachers.training import train_teacher
from kdtemp.temperature.base import temperature_table

pytest.importorskip("tensorboard")

TRAIN_SIZE = 3600  # MNIST-1D's reference 4000 training examples, less the default 10% validation split
BATCH = 256  # tests/helpers.py's tiny experiments
TEACHER = {"channels": [8, 16], "hidden": 32, "epochs": 1}


def logged(root, run: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard shows for a run of experiment `root`: {tag: [(step, value), ...]}."""
    layout = ExperimentLayout(root)
    accumulator = EventAccumulator(str(layout.tensorboard_dir(run)), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def assert_matches_csv(series: dict, metrics_csv) -> None:
    """Each non-empty numeric column (but epoch, the step) is one tag holding the column at every epoch."""
    frame = pd.read_csv(metrics_csv)
    numeric = [column for column in frame.columns if column != "epoch"
               and pd.api.types.is_numeric_dtype(frame[column]) and frame[column].notna().any()]
    assert set(series) - {STEP_TEMPERATURE} == set(numeric)
    for column in numeric:
        steps, values = zip(*series[column])
        assert list(steps) == list(frame["epoch"]), column
        # TensorBoard stores float32
        np.testing.assert_allclose(values, frame[column].to_numpy(np.float32), rtol=1e-6, err_msg=column)


def run_all(job, config, **kwargs) -> None:
    job(config, **kwargs)


@pytest.fixture(scope="module")
def teacher_experiment(tmp_path_factory, data_root):
    """One teacher, trained once with TensorBoard logging on, for every test here (each copies it)."""
    path = write_experiment(tmp_path_factory.mktemp("teacher"), data_root, teacher=TEACHER, logging={"tensorboard": True})
    run_all(train_teacher, load_config(path))
    return experiment(path)


@pytest.fixture
def with_teacher(tiny_config, teacher_experiment):
    """A tiny experiment config whose teacher is already trained."""

    def write(**sections):
        path = tiny_config(teacher=TEACHER, **sections)
        shutil.copytree(teacher_experiment / "teacher", experiment(path) / "teacher")
        return path

    return write


def test_teacher_event_files_match_its_metrics_csv(teacher_experiment):
    assert_matches_csv(logged(teacher_experiment, "teacher"), teacher_experiment / "teacher" / "metrics.csv")


def test_event_files_match_metrics_csv_and_temperature_tables(with_teacher):
    path = with_teacher(kd={"temperatures": [4], "seeds": [0],
                            "schedules": [{"name": "linear", "granularity": "step"}, "learnable"]},
                        logging={"tensorboard": True})
    config = load_config(path)
    run_all(sweep, config)
    layout = ExperimentLayout(experiment(path))
    epochs = config.student.epochs
    spe = math.ceil(TRAIN_SIZE / BATCH)
    schedules = {schedule.name: schedule for schedule in config.kd.schedules}
    kinds = set()
    for run_dir in layout.run_dirs():
        series = logged(layout.root, run_dir.name)
        assert_matches_csv(series, RunFiles(run_dir).metrics)
        label = pd.read_csv(RunFiles(run_dir).metrics)["schedule"][0]
        kinds.add(label)
        if label == "linear":  # T per step: the run's whole temperature table
            steps, values = zip(*series[STEP_TEMPERATURE])
            assert list(steps) == list(range(epochs * spe))
            expected = temperature_table(schedules["linear"], 4.0, epochs, spe).numpy()
            np.testing.assert_allclose(values, expected, rtol=1e-6)
            assert len(set(values)) == epochs * spe  # at step granularity T really changes every step
        else:  # learnable: only the epoch mean (`temperature`); the baseline: no temperature at all
            assert STEP_TEMPERATURE not in series
    assert kinds == {"linear", "learnable", "none"}


def test_a_resumed_sweep_logs_each_epoch_once(with_teacher):
    path = with_teacher(student={"hidden": [32], "epochs": 2}, kd={"temperatures": [4], "seeds": [0], "baseline": False},
                        logging={"tensorboard": True})
    config = load_config(path)
    stop = {"requested": False}

    def emit(event):
        if isinstance(event, Progress) and event.task == "epochs" and event.completed == 1:
            stop["requested"] = True  # interrupted in epoch 1, after epoch 0 was saved

    with pytest.raises(StopRequested):
        sweep(config, should_stop=lambda: stop["requested"], emit=emit)
    (run_dir,) = ExperimentLayout(experiment(path)).run_dirs()
    assert len(pd.read_csv(RunFiles(run_dir).metrics)) == 1
    run_all(sweep, config)
    series = logged(experiment(path), run_dir.name)
    assert [step for step, _ in series["test_acc"]] == [0, 1]
    per_step = [step for step, _ in series[STEP_TEMPERATURE]]
    assert per_step == list(range(2 * math.ceil(TRAIN_SIZE / BATCH)))
    assert len(list((ExperimentLayout(experiment(path)).tensorboard_dir(run_dir.name)).glob("events.out.tfevents.*"))) == 2
    assert_matches_csv(series, RunFiles(run_dir).metrics)


@pytest.fixture
def without_tensorboard(monkeypatch):
    """As if the tensorboard package were not installed: importing it fails."""
    for module in ("torch.utils.tensorboard", "tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)


def test_train_teacher_refuses_tensorboard_without_the_package(tiny_config, run_cli, without_tensorboard):
    config = tiny_config()
    result = run_cli("train-teacher", "--config", config, "--tensorboard")
    assert result.code == 2
    assert result.stderr.strip() == f"error: {MISSING_TENSORBOARD}"
    assert not experiment(config).exists()


def test_sweep_refuses_tensorboard_without_the_package(with_teacher, run_cli, without_tensorboard):
    config = with_teacher()
    before = sorted(p.relative_to(experiment(config)) for p in experiment(config).rglob("*"))
    result = run_cli("sweep", "--config", config, "--tensorboard")
    assert result.code == 2
    assert result.stderr.strip() == f"error: {MISSING_TENSORBOARD}"
    assert sorted(p.relative_to(experiment(config)) for p in experiment(config).rglob("*")) == before


@pytest.mark.parametrize("command, job", [("train-teacher", "train_teacher"), ("sweep", "run_sweep")])
def test_the_flag_sets_logging_tensorboard(tiny_config, run_cli, monkeypatch, command, job):
    seen = []

    def job_stub(config, **kwargs):
        seen.append(config.logging.tensorboard)
        return iter(())

    monkeypatch.setattr(app, job, job_stub)
    plain, on_in_yaml = tiny_config(), tiny_config("on", logging={"tensorboard": True})
    for args in (["--config", plain], ["--config", plain, "--tensorboard"], ["--config", on_in_yaml],
                 ["--config", on_in_yaml, "--no-tensorboard"]):
        assert run_cli(command, *args).code == 0
    assert seen == [False, True, True, False]
