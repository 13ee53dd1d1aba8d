"""`kdtemp report --partial` tabulates each run's latest completed epoch while a sweep runs, labelled as such."""

import json

import pandas as pd
import pytest

from kdtemp.report.build import build_report
from kdtemp.store.files import atomic_write_yaml, write_csv
from kdtemp.store.records import STUDENT_COLUMNS

IDENTITY = {"format": 1, "dataset": "mnist1d", "student": {"arch": "mlp", "epochs": 3}}


def write_run(root, run_id, schedule, t0, seed, accuracies, completed=True):
    """A run as a sweep leaves it: config.yaml, one metrics row per finished epoch, summary.json once done."""
    run_dir = root / "students" / run_id
    run_dir.mkdir(parents=True)
    alpha = 0.0 if schedule == "none" else 0.9
    grid = {"schedule": None if schedule == "none" else {"name": schedule}, "t0": t0, "seed": seed, "alpha": alpha}
    atomic_write_yaml(run_dir / "config.yaml", {"identity": {**IDENTITY, **grid}, "experiment": {"name": root.name}})
    rows = [{"run_id": run_id, "schedule": schedule, "t0": t0, "alpha": alpha, "seed": seed, "epoch": epoch,
             "temperature": t0, "lr": 0.1, "train_loss": 1.0, "train_ce": 1.0, "train_kd": None, "train_acc": 0.9,
             "test_loss": 1.5 - accuracy, "test_acc": accuracy, "agreement": accuracy, "epoch_seconds": 0.1}
            for epoch, accuracy in enumerate(accuracies)]
    write_csv(run_dir / "metrics.csv", rows, STUDENT_COLUMNS)
    if completed:
        (run_dir / "summary.json").write_text(json.dumps(
            {"run_id": run_id, "status": "completed", "schedule": schedule, "t0": t0, "alpha": alpha, "seed": seed,
             "epochs": len(accuracies), "student_params": 100}))


@pytest.fixture
def running_sweep(tmp_path):
    """Seeds 0 and 1 finished; seed 2 of T = 4 after 2 of 3 epochs; seed 2 of T = 1 started, no epoch yet."""
    root = tmp_path / "runs" / "live"
    for seed, (base, kd) in enumerate([(0.60, 0.70), (0.62, 0.74)]):
        write_run(root, f"baseline-s{seed}", "none", None, seed, [base - 0.1, base - 0.05, base])
        write_run(root, f"constant-T4-s{seed}", "constant", 4.0, seed, [kd - 0.2, kd - 0.1, kd])
        write_run(root, f"constant-T1-s{seed}", "constant", 1.0, seed, [kd - 0.3, kd - 0.2, kd - 0.1])
    write_run(root, "baseline-s2", "none", None, 2, [0.5, 0.55, 0.61])
    write_run(root, "constant-T4-s2", "constant", 4.0, 2, [0.41, 0.53], completed=False)
    write_run(root, "constant-T1-s2", "constant", 1.0, 2, [], completed=False)
    return root


def latest_epoch_means(root) -> pd.DataFrame:
    """Independent recomputation: each run's last metrics row, averaged per (schedule, t0)."""
    frames = [pd.read_csv(path) for path in sorted(root.glob("students/*/metrics.csv"))]
    rows = pd.concat([frame.iloc[[-1]] for frame in frames if len(frame)], ignore_index=True)
    return rows.groupby(["schedule", "t0"], dropna=False)["test_acc"].agg(["mean", "count"])


def test_partial_cells_use_each_runs_latest_completed_epoch(running_sweep):
    expected = latest_epoch_means(running_sweep)
    report = build_report(running_sweep, partial=True)
    results = report.results
    assert results.partial == {"constant-T4-s2": 2}
    assert results.unfinished == ["constant-T1-s2"]  # no epoch finished: nothing to show
    summary = report.settings[0].summary.set_index(["schedule", "t0"])
    cell = summary.loc[("constant", 4.0)]
    assert cell["n"] == expected.loc[("constant", 4.0), "count"] == 3
    assert cell["mean_test_acc"] == pytest.approx(expected.loc[("constant", 4.0), "mean"], abs=1e-12)
    assert report.settings[0].table.rows["constant"][4.0].n == 3

    completed_only = build_report(running_sweep)  # without --partial the running run is only listed
    assert completed_only.settings[0].table.rows["constant"][4.0].n == 2
    assert "constant-T4-s2" in completed_only.results.unfinished and not completed_only.results.partial


def test_partial_report_is_labelled_and_writes_nothing(running_sweep, run_cli):
    result = run_cli("report", "--runs-dir", running_sweep.parent, "--name", "live", "--partial")
    assert result.code == 0, result.stderr
    assert "partial: latest completed epoch" in " ".join(result.stdout.split())  # the title wraps to the table
    expected = latest_epoch_means(running_sweep).loc[("constant", 4.0)]
    assert f"{100 * expected['mean']:.1f} ±" in result.stdout and "(3)" in result.stdout
    assert "7 completed runs, 1 still training" in result.stdout and "constant-T4-s2 after 2 epochs" in result.stdout
    assert "unfinished (not averaged): constant-T1-s2" in result.stderr
    assert not (running_sweep / "report").exists()
