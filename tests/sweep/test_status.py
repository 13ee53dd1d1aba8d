"""`kdtemp status` shows what was swept (the runs on disk) and, apart, what the config plans that is missing."""

import re

from helpers import experiment

from kdtemp.config.loading import load_config
from kdtemp.store.layout import ExperimentLayout
from kdtemp.sweep.plan import planned_runs


def rows_of(stdout: str) -> list[tuple[str, str]]:
    """(run id, state) of every table row the CLI printed, in order."""
    return re.findall(r"│ ((?:constant|baseline)-\S+) +│ (\w+)", stdout)


def test_status_after_a_temps_sweep_shows_the_swept_runs_and_lists_missing_planned_ones(tiny_config, run_cli):
    config = tiny_config("status-temps", student={"hidden": [16], "epochs": 1})  # plans T = 1, 4 over seeds 0, 1
    assert run_cli("train-teacher", "--config", config).code == 0
    assert run_cli("sweep", "--config", config, "--temps", "3,10", "--seeds", "0").code == 0
    on_disk = sorted(d.name for d in ExperimentLayout(experiment(config)).run_dirs())
    assert len(on_disk) == 3  # T = 3 and 10 at seed 0, and the seed-0 baseline

    result = run_cli("status", "--config", config)
    assert result.code == 0, result.stderr
    swept_part, _, missing_part = result.stdout.partition("planned by the config, not on disk")
    swept = rows_of(swept_part)
    assert sorted(run_id for run_id, _ in swept) == on_disk and {state for _, state in swept} == {"completed"}
    assert "3 runs on disk" in swept_part
    planned = {run.run_id for run in planned_runs(load_config(config))}
    missing = rows_of(missing_part)
    assert sorted(run_id for run_id, _ in missing) == sorted(planned - set(on_disk)) and len(missing) == 5
    assert {state for _, state in missing} == {"pending"}
    assert "3 completed, 0 running, 0 failed, 0 interrupted, 5 pending (planned by the config, not on disk" in \
        " ".join(result.stdout.split())

    same_grid = run_cli("status", "--config", config, "--temps", "3,10", "--seeds", "0")
    assert same_grid.code == 0, same_grid.stderr
    assert "not on disk" not in same_grid.stdout
    assert "3 completed, 0 running, 0 failed, 0 interrupted, 0 pending" in same_grid.stdout
    shown = [run_id.split("-")[1] for run_id, _ in rows_of(same_grid.stdout) if run_id.startswith("constant")]
    assert shown == ["T3", "T10"]  # natural order, not the string order of the directory names


def test_status_refuses_a_bad_grid_option_like_sweep(tiny_config, run_cli):
    result = run_cli("status", "--config", tiny_config("status-bad"), "--temps", "1,x")
    assert result.code == 2 and "--temps" in result.stderr and "'x'" in result.stderr  # parsed, not an unknown option
    assert len(result.stderr.strip().splitlines()) == 1
