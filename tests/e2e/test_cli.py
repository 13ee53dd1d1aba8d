"""The three jobs end to end through the CLI, as a user runs them, and every refusal the issue lists."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from helpers import experiment, write_experiment
from rich.console import Console

from kdtemp.cli import progress
from kdtemp.store.records import STUDENT_COLUMNS

FIRST_COLUMNS = ["run_id", "schedule", "t0", "alpha", "seed", "epoch", "temperature", "lr", "train_loss", "train_ce",
                 "train_kd", "train_acc", "test_loss", "test_acc", "agreement", "epoch_seconds"]


@pytest.fixture
def wide_output(monkeypatch):
    monkeypatch.setattr(progress, "out", Console(width=200))
    monkeypatch.setattr(progress, "err", Console(stderr=True, width=200))


@pytest.fixture
def trained(tiny_config, run_cli, wide_output):
    config = tiny_config()
    result = run_cli("train-teacher", "--config", config)
    assert result.code == 0, result.stderr
    return config


def test_train_teacher_writes_a_safe_checkpoint(trained):
    teacher = experiment(trained) / "teacher"
    checkpoint = torch.load(teacher / "model.pt", weights_only=True)
    assert checkpoint["architecture"]["arch"] == "cnn" and checkpoint["dataset"] == "mnist1d"
    assert checkpoint["num_classes"] == 10 and checkpoint["input_shape"] == [1, 40]
    metrics = pd.read_csv(teacher / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    assert checkpoint["test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1])
    assert (teacher / "config.yaml").exists() and not (teacher / "checkpoint.pt").exists()


def test_train_teacher_again_keeps_the_finished_teacher(trained, run_cli):
    before = (experiment(trained) / "teacher" / "model.pt").read_bytes()
    result = run_cli("train-teacher", "--config", trained)
    assert result.code == 0 and "already trained" in result.stdout
    assert "was trained for" not in result.stdout + result.stderr
    other = run_cli("train-teacher", "--config", trained, "--epochs", "5")
    assert other.code == 0 and "was trained for 2 epochs, kept as it is (this config asks for 5)" in \
        " ".join((other.stdout + other.stderr).split())
    assert (experiment(trained) / "teacher" / "model.pt").read_bytes() == before


def test_train_teacher_epochs_applies_to_every_teacher_of_an_ensemble(tmp_path, data_root, run_cli, wide_output):
    # issue 12.8: the override set teacher.epochs, which a `teachers:` config refused
    members = [{"channels": [4], "hidden": 16, "epochs": 3}, {"arch": "mlp", "hidden": [16], "epochs": 3}]
    config = write_experiment(tmp_path, data_root, "ensemble", teachers=members)
    tree = {key: value for key, value in yaml.safe_load(config.read_text()).items() if key != "teacher"}
    config.write_text(yaml.safe_dump(tree))
    result = run_cli("train-teacher", "--config", config, "--epochs", "1")
    assert result.code == 0, result.stderr
    for index in range(2):
        frame = pd.read_csv(experiment(config) / "teacher" / f"teacher-{index}" / "metrics.csv")
        assert frame["epoch"].tolist() == [0]  # one epoch, not the file's three


def test_sweep_and_report_end_to_end(trained, run_cli):
    result = run_cli("sweep", "--config", trained)
    assert result.code == 0, result.stderr
    assert "6 runs: 0 skipped (complete), 0 resumed, 6 started, 6 completed, 0 failed" in result.stdout
    # the suggested next command names this experiment: a bare `kdtemp report` would read runs/default
    assert f"next: kdtemp report --config {trained}" in " ".join(result.stdout.split())
    students = experiment(trained) / "students"
    run_dirs = sorted(p for p in students.iterdir())
    assert len(run_dirs) == 6  # 2 temperatures x 2 seeds + a baseline per seed
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        metrics = pd.read_csv(run_dir / "metrics.csv")
        assert list(metrics.columns[:16]) == FIRST_COLUMNS and list(metrics.columns) == STUDENT_COLUMNS
        assert list(metrics["epoch"]) == [0, 1]
        assert metrics["test_acc"].between(0, 1).all() and metrics["agreement"].between(0, 1).all()
        if summary["schedule"] == "none":
            assert metrics["t0"].isna().all() and metrics["temperature"].isna().all() and (metrics["alpha"] == 0).all()
        else:
            assert (metrics["temperature"] == metrics["t0"]).all()
            assert run_dir.name.startswith(f"constant-T{metrics['t0'][0]:g}-a0.9-s{metrics['seed'][0]}-")

    report = run_cli("report", "--config", trained)
    assert report.code == 0, report.stderr
    # The printed cells equal what pandas computes from the per-run CSVs.
    frames = [pd.read_csv(d / "metrics.csv") for d in run_dirs]
    final = pd.concat([f.iloc[[-1]] for f in frames])
    grid = final[final["schedule"] == "constant"].groupby("t0")["test_acc"]
    for t0, mean in grid.mean().items():
        std = grid.std(ddof=1)[t0]
        assert f"{100 * mean:.1f} ± {100 * std:.1f} (2)" in report.stdout
    baseline = final[final["schedule"] == "none"]["test_acc"]
    assert f"{100 * baseline.mean():.1f} ± {100 * baseline.std():.1f} (2)" in report.stdout
    assert "teacher" in report.stdout and "T=1" in report.stdout and "T=4" in report.stdout
    summary_csv = pd.read_csv(experiment(trained) / "report" / "summary.csv")
    constant = summary_csv[summary_csv["schedule"] == "constant"].set_index("t0")
    assert constant["mean_test_acc"].to_dict() == pytest.approx(grid.mean().to_dict())
    assert (experiment(trained) / "report" / "report.md").read_text().startswith("# kdtemp report")

    again = run_cli("sweep", "--config", trained)
    assert "6 runs: 6 skipped (complete), 0 resumed, 0 started" in again.stdout


def test_same_config_and_seed_give_the_same_numbers(tiny_config, run_cli, wide_output, tmp_path):
    results = []
    for name in ("first", "second"):
        config = tiny_config(name, kd={"temperatures": [2], "seeds": [3]})
        assert run_cli("train-teacher", "--config", config).code == 0
        assert run_cli("sweep", "--config", config).code == 0
        frames = [pd.read_csv(d / "metrics.csv").drop(columns=["epoch_seconds", "run_id"])
                  for d in sorted((experiment(config) / "students").iterdir())]
        results.append(pd.concat(frames, ignore_index=True))
    pd.testing.assert_frame_equal(results[0], results[1])


ERROR_CASES = [
    (["sweep", "--temps", "1,x,3"], r"--temps: 'x' is not a number"),
    (["sweep", "--temps", "0"], r"--temps: input should be greater than 0"),
    (["sweep", "--temps=-1"], r"--temps: input should be greater than 0"),
    (["sweep", "--temps", ""], r"--temps: empty list"),
    (["sweep", "--alpha", "1.5"], r"--alpha: input should be less than or equal to 1"),
    (["sweep", "--alpha", "-0.1"], r"--alpha: input should be greater than or equal to 0"),
    (["sweep", "--dataset", "imagenet"], r"--dataset: input should be 'mnist1d'"),
    (["sweep", "--seeds", "0,a"], r"--seeds: 'a' is not a whole number"),
    (["sweep", "--tmps", "3"], r"No such option: --tmps"),
]


@pytest.mark.parametrize("args, message", ERROR_CASES)
def test_bad_command_lines_are_refused_in_one_line(tiny_config, run_cli, wide_output, args, message):
    config = tiny_config()
    result = run_cli(*args, "--config", config)
    assert_refused(result, message)
    assert not experiment(config).exists()


def assert_refused(result, message):
    import re

    assert result.code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_config_files_are_refused(tmp_path, run_cli, wide_output):
    assert_refused(run_cli("sweep", "--config", tmp_path / "missing.yaml"), r"config file not found: .*missing.yaml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("kd:\n  temperature: [1, 2]\n")
    assert_refused(run_cli("sweep", "--config", unknown), r"unknown.yaml: unknown key 'kd.temperature'; did you mean 'temperatures'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kd: [1, 2\n")
    assert_refused(run_cli("train-teacher", "--config", broken), r"broken.yaml: cannot parse YAML")
    alpha = tmp_path / "alpha.yaml"
    alpha.write_text("kd:\n  alpha: 2\n")
    assert_refused(run_cli("sweep", "--config", alpha), r"alpha.yaml: kd.alpha: input should be less than or equal to 1")
    assert not (tmp_path / "runs").exists()


def test_sweep_before_any_teacher_names_the_command(tiny_config, run_cli, wide_output):
    config = tiny_config()
    result = run_cli("sweep", "--config", config)
    assert_refused(result, r"no teacher at .*model.pt; train it first \(`kdtemp train-teacher` with the --config, --name and --runs-dir given here\)")
    assert f"copy a trained teacher/ folder into {experiment(config)}" in " ".join(result.stderr.split())
    assert not experiment(config).exists()


def test_report_without_runs(tiny_config, run_cli, wide_output):
    config = tiny_config()
    assert_refused(run_cli("report", "--config", config), r"no runs under .*students; run `kdtemp sweep` or `kdtemp search` first")


def test_console_script_help_shows_an_example():
    result = subprocess.run([sys.executable, "-m", "kdtemp", "sweep", "--help"], capture_output=True, text=True,
                            env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    assert "kdtemp sweep --temps 1,3,5,10" in result.stdout
    assert "--schedules" in result.stdout


def test_set_overrides_any_key_and_its_flags_plan_the_same_runs(trained, run_cli):
    # issue 15: --set KEY=VALUE, VALUE read as YAML: a number, lists, null
    tree = yaml.safe_load(trained.read_text())
    trained.write_text(yaml.safe_dump({**tree, "train": {"clip_grad_norm": 1.0}}))
    sets = ["student.epochs=1", "kd.temperatures=[3]", "kd.seeds=[0]", "kd.schedules=[constant,linear]",
            "train.clip_grad_norm=null", "kd.alpha=0.5"]
    result = run_cli("sweep", "--config", trained, *[arg for text in sets for arg in ("--set", text)])
    assert result.code == 0, result.stderr
    run_dirs = sorted((experiment(trained) / "students").iterdir())
    # one epoch: linear T=3 trains at T=3 throughout, as constant T=3 does, so that run is trained once
    assert [d.name.split("-")[0] for d in run_dirs] == ["baseline", "constant"]
    for run_dir in run_dirs:
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["experiment"]
        assert recorded["student"]["epochs"] == 1 and recorded["train"]["clip_grad_norm"] is None
        assert recorded["kd"]["temperatures"] == [3.0] and recorded["kd"]["alpha"] == 0.5
        metrics = pd.read_csv(run_dir / "metrics.csv")
        assert list(metrics["epoch"]) == [0]  # one student epoch: one row, not the file's two
        assert (metrics["alpha"] == (0 if run_dir.name.startswith("baseline") else 0.5)).all()
    # the flags are shorthands: the same values through them name the same two runs, both found on disk
    status = run_cli("status", "--config", trained, "--epochs", "1", "--temps", "3", "--seeds", "0",
                     "--schedules", "constant,linear", "--alpha", "0.5", "--set", "train.clip_grad_norm=null")
    assert "2 completed, 0 running, 0 failed, 0 interrupted, 0 pending" in status.stdout, status.stdout
    # a --set of a key a flag also sets wins, whichever comes first on the line
    status = run_cli("status", "--config", trained, "--set", "kd.alpha=0.5", "--alpha", "0.9",
                     "--epochs", "1", "--temps", "3", "--seeds", "0", "--schedules", "constant,linear",
                     "--set", "train.clip_grad_norm=null")
    assert "2 completed, 0 running, 0 failed, 0 interrupted, 0 pending" in status.stdout, status.stdout


SET_REFUSALS = [
    (["--set", "student.lrr=0.01"],
     r"^error: --set student.lrr=0.01: unknown key 'student.lrr'; did you mean 'lr'\?"),
    (["--set", "studnet.lr=0.01"], r"--set studnet.lr=0.01: unknown key 'studnet'; did you mean 'student'\?"),
    (["--set", "lr"], r"--set lr: expected KEY=VALUE, e.g. --set student.lr=0.01"),
    (["--set", "=0.01"], r"--set =0.01: empty key"),
    (["--set", "kd..alpha=0.5"], r"--set kd..alpha=0.5: empty key"),
    (["--set", "kd.alpha.x=1"], r"--set kd.alpha.x=1: 'kd.alpha' holds a value, not a section"),
    (["--set", "seeds.x=1"], r"--set seeds.x=1: unknown key 'seeds'"),
    (["--set", "kd.alpha=2"], r"--set kd.alpha=2: input should be less than or equal to 1 \(got 2\)"),
    (["--set", "kd.temperatures=[1,x]"], r"--set kd.temperatures=\[1,x\]: input should be a valid number"),
    (["--set", "kd.temperatures=[1,2"], r"--set kd.temperatures=\[1,2: cannot read the value as YAML"),
    (["--set", "kd.schedules=[warmup]"], r"--set kd.schedules=\[warmup\]: unknown name 'warmup'"),
    (["--epochs", "x"], r"--epochs: input should be a valid integer, unable to parse string as an integer"),
    (["--epochs", "0"], r"--epochs: input should be greater than 0"),
    (["--workers", "2.5"], r"--workers: input should be a valid integer"),
    (["--alpha", "x"], r"--alpha: input should be a valid number"),
]


@pytest.mark.parametrize("args, message", SET_REFUSALS)
def test_bad_overrides_are_refused_in_one_line_with_exit_2(tiny_config, run_cli, wide_output, args, message):
    config = tiny_config()
    result = run_cli("sweep", "--config", config, *args)
    assert_refused(result, message)
    assert result.code == 2 and not experiment(config).exists()


@pytest.mark.parametrize("command", ["train-teacher", "status", "report", "export"])
def test_every_command_that_reads_a_config_takes_set(tiny_config, run_cli, wide_output, command):
    config = tiny_config()
    result = run_cli(command, "--config", config, "--set", "student.lrr=0.01")
    assert_refused(result, r"--set student.lrr=0.01: unknown key 'student.lrr'; did you mean 'lr'\?")
    assert result.code == 2 and not experiment(config).exists()


def test_help_shows_typed_options_and_set(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    shown = {}
    for command in ("sweep", "train-teacher"):
        result = run_cli(command, "--help")
        assert result.code == 0
        shown[command] = {line.split()[1]: line.split()[2] for line in result.stdout.splitlines()
                          if len(line.split()) > 2 and line.split()[1].startswith("--")}
    assert shown["sweep"]["--epochs"] == shown["train-teacher"]["--epochs"] == "<int>"
    assert shown["sweep"]["--alpha"] == "<float>" and shown["sweep"]["--workers"] == "<int>"
    assert all(shown["sweep"][f"--slurm-{name}"] == "<int>"
               for name in ("gpus-per-job", "cpus-per-job", "mem-gb", "time", "array-parallelism"))
    assert shown["sweep"]["--set"] == shown["train-teacher"]["--set"] == "<key=value>"
