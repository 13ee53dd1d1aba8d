"""Users' own temperature schedules (issue 15): `kd.schedules: [{name: "module:function", ...params}]` is
imported from the working directory, swept like a built-in, hashed into run ids with its source, and refused
in one line (exit 2, no run written) when it cannot give a temperature."""

import math
import re
import sys
import textwrap

import pandas as pd
import pytest
import torch
from helpers import experiment, write_experiment

from kdtemp.cli import progress
from kdtemp.config.loading import load_config
from kdtemp.config.schema import DataConfig
from kdtemp.data.registry import load_dataset
from kdtemp.engine.loop import steps_per_epoch
from kdtemp.errors import ConfigError
from kdtemp.sweep.plan import plan_runs
from kdtemp.temperature.base import temperature_table
from kdtemp.temperature.custom import UserSchedule

MY_SCHEDULES = '''
import math

CONSTANT = 3


def warm_restart(t0, progress, epoch, period, floor=1.0):
    """Cosine from t0 down to floor every `period` epochs, the restarts fading as training goes on."""
    phase = (epoch % period) / period
    return floor + (t0 - floor) * (1 - progress / 2) * (1 + math.cos(math.pi * phase)) / 2


class Halving:
    """Class form: built once per run with its params; counts the steps it was asked about."""

    def __init__(self, every):
        self.every = every
        self.calls = 0

    def temperature(self, t0, progress, epoch):
        self.calls += 1
        return t0 * 0.5 ** ((self.calls - 1) // self.every)


def broken(t0, progress, epoch):
    return t0 / progress


def negative(t0, progress, epoch):
    return -t0


def ending(t0, progress, epoch):
    return t0 * (1 - progress)  # fine until the last step, where it reaches 0


def infinite(t0, progress, epoch):
    return math.inf


def words(t0, progress, epoch):
    return "hot"


class NoMethod:
    pass
'''


def expected_warm_restart(t0, progress, epoch, period, floor=1.0):
    """The test's own copy of the formula, written out by hand."""
    return floor + (t0 - floor) * (1 - progress / 2) * (1 + math.cos(math.pi * (epoch % period) / period)) / 2


def write_module(directory, name, source=MY_SCHEDULES):
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def my_schedules(tmp_path, monkeypatch):
    """my_schedules.py in a fresh working directory, imported anew by each test."""
    write_module(tmp_path, "my_schedules")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, "my_schedules", raising=False)
    yield tmp_path
    sys.modules.pop("my_schedules", None)


@pytest.fixture
def wide_output(monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(progress, "out", Console(width=200))
    monkeypatch.setattr(progress, "err", Console(stderr=True, width=200))


def grid(*schedules, epochs=4):
    overrides = {"kd.schedules": list(schedules), "kd.temperatures": [4.0], "kd.seeds": [0],
                 "kd.baseline": False, "student.epochs": epochs}
    return load_config(None, {key: (value, key) for key, value in overrides.items()})


# --- through the CLI ---------------------------------------------------------------------------------


def test_a_users_schedule_sweeps_like_a_built_in(my_schedules, data_root, run_cli, wide_output):
    spe = steps_per_epoch(len(load_dataset(DataConfig(root=data_root)).train_y), 256)
    schedules = [{"name": "my_schedules:warm_restart", "period": 2},
                 {"name": "my_schedules:Halving", "every": spe, "t_min": 1.5}]
    kd = {"temperatures": [4], "seeds": [0], "schedules": schedules, "baseline": False}
    student = {"hidden": [16], "epochs": 4}
    config = write_experiment(my_schedules, data_root, teacher={"epochs": 1}, student=student, kd=kd)
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 0, result.stderr
    frames = {frame["schedule"][0]: frame for frame in
              (pd.read_csv(run / "metrics.csv") for run in (experiment(config) / "students").iterdir())}
    assert set(frames) == {"warm_restart", "Halving"}  # tables name it by its function
    warm = frames["warm_restart"]
    assert warm["t0"].tolist() == [4.0] * 4
    expected = [expected_warm_restart(4.0, epoch / 3, epoch, period=2) for epoch in range(4)]
    assert warm["temperature"].tolist() == pytest.approx(expected, rel=1e-6)
    assert warm["temperature"].tolist() != pytest.approx([4.0] * 4)
    # the class form counts its calls, one per step: every `spe` calls (an epoch) T halves, clamped at t_min
    assert frames["Halving"]["temperature"].tolist() == pytest.approx([4.0, 2.0, 1.5, 1.5], rel=1e-6)


REFUSALS = [
    ("no_such_schedules:f", r"kd.schedules: no_such_schedules:f: cannot import 'no_such_schedules' "
                            r"\(ModuleNotFoundError: .*\); put it in the working directory or on PYTHONPATH"),
    ("my_schedules:missing", r"my_schedules:missing: module 'my_schedules' has no attribute 'missing'"),
    ("my_schedules:CONSTANT", r"my_schedules:CONSTANT: 'CONSTANT' is a int, not a class or function"),
    ("my_schedules:broken", r"my_schedules:broken raised ZeroDivisionError \(float division by zero\) "
                            r"at t0=1, progress=0, epoch=0; fix the function"),
    ("my_schedules:negative", r"my_schedules:negative returned -1.0 at t0=1, progress=0, epoch=0; "
                              r"return a finite temperature > 0"),
    ("my_schedules:ending", r"my_schedules:ending returned 0.0 at t0=1, progress=1, .*; "
                            r"return a finite temperature > 0"),
    ("my_schedules:infinite", r"my_schedules:infinite returned inf at .*; return a finite temperature > 0"),
    ("my_schedules:words", r"my_schedules:words returned a str at .*; return a float > 0"),
    ("my_schedules:NoMethod", r"my_schedules:NoMethod a class needs a method temperature\(self, t0, "),
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data_root):
    """One trained teacher for every refusal: a refused sweep writes nothing, so they can share it."""
    from kdtemp.teachers.training import train_teacher

    directory = tmp_path_factory.mktemp("refusals")
    config = write_experiment(directory, data_root, student={"hidden": [8], "epochs": 2})
    for _ in train_teacher(load_config(config)):
        pass
    return directory


@pytest.mark.parametrize("name, message", REFUSALS, ids=[name for name, _ in REFUSALS])
def test_a_bad_schedule_is_refused_in_one_line_before_any_run_is_written(
        name, message, teacher_dir, my_schedules, data_root, run_cli, wide_output):
    config = write_experiment(teacher_dir, data_root, student={"hidden": [8], "epochs": 2},
                              kd={"temperatures": [4], "seeds": [0], "schedules": [{"name": name}]})
    result = run_cli("sweep", "--config", config)
    assert result.code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (experiment(config) / "students").exists()


# --- through the library ---------------------------------------------------------------------------


def test_params_reach_the_function_and_step_granularity_gives_fractional_epochs(my_schedules):
    entry = {"name": "my_schedules:warm_restart", "period": 3, "floor": 0.5, "granularity": "step"}
    schedule = grid(entry).kd.schedules[0]
    assert isinstance(schedule, UserSchedule) and schedule.params == {"period": 3, "floor": 0.5}
    epochs, steps_per_epoch = 4, 5
    total = epochs * steps_per_epoch
    expected = [expected_warm_restart(4.0, step / (total - 1), step / steps_per_epoch, period=3, floor=0.5)
                for step in range(total)]
    table = temperature_table(schedule, 4.0, epochs, steps_per_epoch)
    assert table.tolist() == pytest.approx(expected, rel=1e-6)
    assert table.dtype == torch.float32


def test_clamps_apply_and_a_class_form_starts_afresh_each_run(my_schedules):
    entry = {"name": "my_schedules:warm_restart", "period": 2, "t_min": 2.5, "t_max": 3.5}
    warm = grid(entry).kd.schedules[0]
    raw = [expected_warm_restart(4.0, e / 3, e, period=2) for e in range(4)]
    assert temperature_table(warm, 4.0, 4, 1).tolist() == pytest.approx([min(max(t, 2.5), 3.5) for t in raw])
    halving = grid({"name": "my_schedules:Halving", "every": 2}).kd.schedules[0]
    first, second = temperature_table(halving, 8.0, 3, 2), temperature_table(halving, 8.0, 3, 2)
    assert first.tolist() == [8, 8, 4, 4, 2, 2] and torch.equal(first, second)


def test_run_ids_hash_the_functions_source(my_schedules):
    schedules = [{"name": "my_schedules:warm_restart", "period": 2}]
    before = [run.run_id for run in plan_runs(grid(*schedules), "fp")]
    assert before[0].startswith("warm_restart-T4-a0.9-s0-")
    assert [run.run_id for run in plan_runs(grid(*schedules), "fp")] == before  # stable while nothing changes
    other_params = plan_runs(grid({"name": "my_schedules:warm_restart", "period": 3}), "fp")
    assert other_params[0].run_id != before[0]
    edited = MY_SCHEDULES.replace("(1 - progress / 2)", "(1 - progress / 3)")
    write_module(my_schedules, "my_schedules", edited)
    sys.modules.pop("my_schedules")
    after = [run.run_id for run in plan_runs(grid(*schedules), "fp")]
    assert after[0] != before[0] and after[0].rsplit("-", 1)[0] == before[0].rsplit("-", 1)[0]


def test_a_malformed_name_and_bad_params_are_refused(my_schedules):
    with pytest.raises(ConfigError, match=r"kd.schedules\[0\].name: a schedule of your own is module:"):
        load_config(None, {"kd.schedules": ([{"name": "my-schedules:f"}], "kd.schedules[0].name")})
    config = grid({"name": "my_schedules:warm_restart", "perod": 2})
    refusal = r"^kd.schedules: my_schedules:warm_restart raised TypeError \(.*'perod'.*\) at t0=1, "
    with pytest.raises(ConfigError, match=refusal + r"progress=0, epoch=0; fix the function or its keys"):
        plan_runs(config, "fp")
    with pytest.raises(ConfigError, match=r"Halving building it with \['rate'\] failed \(TypeError"):
        plan_runs(grid({"name": "my_schedules:Halving", "rate": 2}), "fp")


def test_report_refuses_to_pair_two_versions_of_an_edited_schedule(
        tmp_path, my_schedules, data_root, run_cli, wide_output):
    """README: after an edit, old and new runs share a label; the report names both instead of mixing them."""
    config = write_experiment(tmp_path, data_root, student={"hidden": [8], "epochs": 1}, kd={
        "temperatures": [4], "seeds": [0], "baseline": False,
        "schedules": [{"name": "my_schedules:warm_restart", "period": 2}]})
    assert run_cli("train-teacher", "--config", config).code == 0
    assert run_cli("sweep", "--config", config).code == 0
    (first,) = [run.name for run in (experiment(config) / "students").iterdir()]
    write_module(my_schedules, "my_schedules", MY_SCHEDULES.replace("(1 - progress / 2)", "(1 - progress / 3)"))
    sys.modules.pop("my_schedules")
    assert run_cli("sweep", "--config", config).code == 0
    (second,) = {run.name for run in (experiment(config) / "students").iterdir()} - {first}
    result = run_cli("report", "--config", config)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.code == 2 and len(errors) == 1
    assert first in errors[0] and second in errors[0] and "runs of one schedule (warm_restart)" in errors[0]
