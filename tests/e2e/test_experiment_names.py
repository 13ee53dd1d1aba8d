"""`--name` keeps experiments apart, and the refusal of a teacher made for other data says so before --force."""

import re

import pandas as pd
import torch

from helpers import experiment


def test_name_keeps_two_experiments_apart(tiny_config, run_cli, tmp_path):
    config = tiny_config("named", student={"hidden": [16], "epochs": 1})
    runs = tmp_path / "runs"
    for name, temps, seed in (("first", "2", "0"), ("second", "3", "1")):
        assert run_cli("train-teacher", "--config", config, "--name", name).code == 0
        swept = run_cli("sweep", "--config", config, "--name", name, "--temps", temps, "--seeds", seed)
        assert swept.code == 0, swept.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["first", "second"]  # nothing under the config's own name
    for name, t0, seed in (("first", 2.0, 0), ("second", 3.0, 1)):
        run_ids = sorted(p.name for p in (runs / name / "students").iterdir())
        assert len(run_ids) == 2 and all(f"-s{seed}-" in run_id for run_id in run_ids)
        assert run_ids[0].startswith("baseline-") and run_ids[1].startswith(f"constant-T{t0:g}-")
        report = run_cli("report", "--config", config, "--name", name)
        assert report.code == 0, report.stderr
        summary = pd.read_csv(runs / name / "report" / "summary.csv")
        grid = summary[summary["schedule"] == "constant"]
        assert grid["t0"].tolist() == [t0] and grid["n"].tolist() == [1]
        assert summary.loc[summary["schedule"] == "none", "n"].tolist() == [1]
        assert f"T={t0:g}" in report.stdout
        exported = run_cli("export", "--config", config, "--name", name)
        assert exported.code == 0 and f"runs/{name}/students/" in exported.stdout.replace("\\", "/")
        best = pd.concat(pd.read_csv(path).tail(1) for path in (runs / name / "students").glob("*/metrics.csv"))
        chosen = best.sort_values("run_id").loc[lambda f: f["val_acc"] == f["val_acc"].max()].iloc[0]
        assert (f"highest last-epoch validation accuracy ({100 * chosen['val_acc']:.1f}%, "
                f"{100 * chosen['test_acc']:.1f}% on test)") in " ".join(exported.stdout.split())
    status = run_cli("status", "--config", config, "--name", "first", "--temps", "2", "--seeds", "0")
    assert "2 completed, 0 running, 0 failed, 0 interrupted, 0 pending" in status.stdout


def test_an_unsafe_name_is_refused_with_nothing_written(tiny_config, run_cli, tmp_path):
    config = tiny_config("unsafe")
    for command in ("train-teacher", "sweep", "status", "export"):
        result = run_cli(command, "--config", config, "--name", "../escape")
        assert result.code == 2 and "--name" in result.stderr and "not a safe directory name" in result.stderr, command
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_a_teacher_for_other_data_is_refused_suggesting_a_new_name_before_force(tiny_config, run_cli):
    config = tiny_config("refusal", student={"hidden": [16], "epochs": 1})
    assert run_cli("train-teacher", "--config", config).code == 0
    path = experiment(config) / "teacher" / "model.pt"
    torch.save({**torch.load(path, weights_only=True), "dataset": "fashion-mnist"}, path)
    for command in ("sweep", "train-teacher"):
        result = run_cli(command, "--config", config)
        assert result.code == 2, result.stderr
        message = " ".join(result.stderr.split())
        assert "fashion-mnist" in message
        name, force = message.find("--name <new>"), message.find("--force")
        assert 0 <= name < force, message  # a new experiment first; overwriting second
        assert re.search(r"--force`? overwrites it", message), message
    assert not (experiment(config) / "students").exists()
