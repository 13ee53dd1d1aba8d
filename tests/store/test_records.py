"""A run's files as typed records: summary.json round-trips through its writer and readers, and a damaged one
is reported as unreadable, never half-read."""

import json
import re
from types import SimpleNamespace

import pytest

from kdtemp.report.results import load_results
from kdtemp.store.files import append_csv_row, is_completed, load_summary, write_summary
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.records import BASELINE, STUDENT_COLUMNS, TEACHER_COLUMNS, Status
from kdtemp.sweep import status
from kdtemp.sweep.recording import run_summary

SIZES = {
    "student_params": 1234,
    "teacher_params": 56789,
    "student_size_bytes": 4936,
    "teacher_size_bytes": 227156,
    "student_latency_ms": 0.125,
    "teacher_latency_ms": 1.5,
    "student_flops": 2468,
    "teacher_flops": None,
    "latency_batch_size": 256,
}
TEACHERS = [{"id": "teacher", "test_acc": 0.9, "fingerprint": "0123456789abcdef"}]


def sweep_state(root):
    """What `run_summary` reads of a sweep: the layout, epochs, device, footprint and teachers."""
    return SimpleNamespace(
        layout=ExperimentLayout(root),
        student_spec=SimpleNamespace(epochs=2),
        device="cpu",
        sizes=SIZES,
        teachers=[SimpleNamespace(record=record) for record in TEACHERS],
        data=SimpleNamespace(validation="0.1 of the training set", val_is_test=False),
    )


def run_spec(run_id, schedule="constant", t0=4.0, alpha=0.9):
    return SimpleNamespace(
        run_id=run_id,
        schedule_label=schedule,
        t0=t0,
        alpha=alpha,
        seed=3,
        generation=1,
        parent=None,
        is_baseline=schedule == BASELINE,
    )


def metrics_row(run, epoch, test_acc, val_acc=None):
    return {
        "run_id": run.run_id,
        "schedule": run.schedule_label,
        "t0": run.t0,
        "alpha": run.alpha,
        "seed": 3,
        "epoch": epoch,
        "temperature": run.t0,
        "lr": 0.1,
        "train_loss": 1.25,
        "train_ce": 1.0,
        "train_kd": 0.5,
        "train_acc": 0.5,
        "test_loss": 1.5,
        "test_acc": test_acc,
        "agreement": 0.75,
        "epoch_seconds": 0.25,
        "test_kl": None,
        "test_ece": 0.0625,
        "val_acc": val_acc,
        "generation": 1,
    }


def old_summary(run, status, rows, group_size, **extra):
    """summary.json as the dict literal before RunSummary wrote it, from the same inputs."""
    final = {column: rows[-1].get(column) for column in STUDENT_COLUMNS} if rows else {}
    val = [row["val_acc"] for row in rows]
    best = val.index(max(val)) if rows else None  # the epoch is chosen on validation
    return {
        "run_id": run.run_id,
        "status": status,
        "schedule": run.schedule_label,
        "t0": run.t0,
        "alpha": run.alpha,
        "seed": 3,
        "generation": 1,
        "parent": None,
        "epochs": 2,
        "epochs_done": len(rows),
        "final": final,
        "best_epoch": best,
        "best_val_acc": val[best] if rows else None,
        "test_acc_at_best_val": rows[best]["test_acc"] if rows else None,
        "validation": "0.1 of the training set",
        "val_is_test": False,
        "wall_seconds": sum(row["epoch_seconds"] for row in rows),
        "device": "cpu",
        "group_size": group_size,
        "teachers": [] if run.is_baseline else TEACHERS,
        **SIZES,
        **extra,
    }


@pytest.mark.parametrize("case", ["completed", "failed", "failed before an epoch", "baseline"])
def test_a_summary_round_trips_through_writer_and_reader_byte_for_byte(tmp_path, case):
    root = tmp_path / "exp"
    run = run_spec("baseline-s3", BASELINE, None, 0.0) if case == "baseline" else run_spec("constant-T4-s3")
    files = RunFiles(root / "students" / run.run_id)
    # validation and test disagree on the best epoch: the summary takes validation's (epoch 0)
    rows = (
        []
        if case == "failed before an epoch"
        else [metrics_row(run, 0, 0.625, val_acc=0.75), metrics_row(run, 1, 0.75, val_acc=0.5)]
    )
    for row in rows:
        append_csv_row(files.metrics, row, STUDENT_COLUMNS)
    extra = (
        {} if case in ("completed", "baseline") else {"reason": "training loss became nan", "failed_epoch": 0}
    )
    state = Status.COMPLETED if not extra else Status.FAILED
    write_summary(files, run_summary(sweep_state(root), run, files, state, 4, **extra))

    on_disk = json.loads(files.summary.read_text())
    expected = old_summary(run, str(state), rows, 4, **extra)
    assert on_disk == expected
    assert (
        files.summary.read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    )  # the same bytes
    summary = load_summary(files.dir)
    assert summary.to_json() == on_disk and summary.status is state
    assert summary.test_acc == (0.75 if rows else None) and summary.sizes() == {
        k: v for k, v in SIZES.items() if v
    }
    if not rows:
        assert isinstance(on_disk["wall_seconds"], int)  # 0, as before: a number keeps its JSON type


def write_run(root, run_id, schedule, t0, seed, summary_change):
    """A completed three-epoch run, its summary.json then changed by `summary_change`."""
    run = run_spec(run_id, schedule, t0, 0.0 if schedule == BASELINE else 0.9)
    files = RunFiles(root / "students" / run_id)
    for epoch in range(3):
        append_csv_row(
            files.metrics, {**metrics_row(run, epoch, 0.5 + 0.1 * epoch), "seed": seed}, STUDENT_COLUMNS
        )
    summary = {
        "run_id": run_id,
        "status": "completed",
        "schedule": schedule,
        "t0": t0,
        "alpha": run.alpha,
        "seed": seed,
        "epochs": 3,
        "student_params": 100,
    }
    summary_change(summary)
    files.summary.write_text(json.dumps(summary))
    return files.dir


DAMAGE = {
    "constant-T4-s1": (lambda s: s.pop("status"), r"status: Field required"),
    "constant-T4-s2": (lambda s: s.update(epochs="three"), r"epochs: Input should be a valid integer"),
    "constant-T4-s3": (lambda s: s.pop("epochs"), r"epochs: a completed run's summary records its epochs"),
    "constant-T4-s4": (lambda s: s.update(final=[0.7]), r"final: Input should be a valid dictionary"),
    "constant-T4-s5": (
        lambda s: s.update(status="finished"),
        r"status: a summary records completed or failed or pruned, not 'finished'",
    ),
}


def test_a_summary_missing_a_key_or_of_a_wrong_type_is_unreadable_to_report_and_status(tmp_path):
    root = tmp_path / "damaged"
    write_run(root, "constant-T4-s0", "constant", 4.0, 0, lambda s: None)
    run_dirs = {
        run_id: write_run(root, run_id, "constant", 4.0, seed, change)
        for seed, (run_id, (change, _)) in enumerate(DAMAGE.items(), 1)
    }
    results = load_results(root)
    assert (
        list(results.final["run_id"]) == ["constant-T4-s0"] and not results.unfinished and not results.failed
    )
    unreadable = dict(results.unreadable)
    assert sorted(unreadable) == sorted(DAMAGE)
    for run_id, (_, message) in DAMAGE.items():
        pattern = rf"^summary\.json is unreadable \({message}.*\); the next sweep retrains the run$"
        assert re.search(pattern, unreadable[run_id]), unreadable[run_id]
        state = status.run_status(run_dirs[run_id], 3)
        assert state.state == Status.INTERRUPTED and re.search(pattern, state.detail), state
        assert not is_completed(run_dirs[run_id])  # and the sweep retrains it
    assert status.run_status(root / "students" / "constant-T4-s0", 3).state == Status.COMPLETED


def test_an_older_summary_without_newer_keys_reads_as_before(tmp_path):
    """No generation, parent, final or footprint (an older kdtemp); a failed run's status and reason alone."""
    root = tmp_path / "older"
    write_run(root, "constant-T4-s0", "constant", 4.0, 0, lambda s: s.pop("student_params"))
    failed = write_run(
        root,
        "constant-T8-s0",
        "constant",
        8.0,
        0,
        lambda s: (s.clear(), s.update(status="failed", reason="training loss became nan in epoch 2")),
    )
    results = load_results(root)
    assert list(results.final["run_id"]) == ["constant-T4-s0"] and results.final["generation"].tolist() == [1]
    assert (
        results.failed == [("constant-T8-s0", "training loss became nan in epoch 2")]
        and not results.unreadable
    )
    assert status.run_status(failed, 3).state == Status.FAILED


def test_run_files_name_every_file_of_a_run_and_of_a_teacher(tmp_path):
    layout = ExperimentLayout.of(tmp_path, "exp")
    files = layout.run_files("constant-T4-s0")
    run_dir = tmp_path / "exp" / "students" / "constant-T4-s0"
    assert files.dir == run_dir
    assert [
        p.name
        for p in (files.config, files.metrics, files.checkpoint, files.model, files.summary, files.owner)
    ] == ["config.yaml", "metrics.csv", "checkpoint.pt", "model.pt", "summary.json", "owner.json"]
    assert all(
        p.parent == run_dir for p in (files.config, files.metrics, files.model, files.summary, files.owner)
    )
    assert (
        files.lock == tmp_path / "exp" / "locks" / "constant-T4-s0.lock" == layout.lock_path("constant-T4-s0")
    )
    assert (
        layout.teacher_files(0, 1).model == layout.teacher_model == tmp_path / "exp" / "teacher" / "model.pt"
    )
    assert layout.teacher_models(2) == [
        tmp_path / "exp" / "teacher" / f"teacher-{i}" / "model.pt" for i in (0, 1)
    ]
    assert status.STATES == (
        "completed",
        "running",
        "failed",
        "pruned",
        "interrupted",
        "pending",
    )  # `kdtemp status` order


def test_the_best_epoch_is_the_first_of_highest_validation_accuracy_and_never_a_nan():
    from kdtemp.sweep.recording import best_epoch

    rows = [{"val_acc": "nan"}, {"val_acc": "0.5"}, {"val_acc": ""}, {"val_acc": "0.75"}, {"val_acc": "0.75"}]
    assert best_epoch(rows) == 3
    assert best_epoch([{"val_acc": ""}, {"test_acc": "0.9"}]) is None  # no validation split: no epoch chosen


def test_the_metrics_row_models_keep_the_csv_columns_in_order():
    assert STUDENT_COLUMNS == [
        "run_id", "schedule", "t0", "alpha", "seed", "epoch", "temperature", "lr", "train_loss", "train_ce",
        "train_kd", "train_acc", "test_loss", "test_acc", "agreement", "epoch_seconds", "test_kl", "test_ece",
        "val_loss", "val_acc", "val_agreement", "val_kl", "val_ece", "effective_temperature", "train_penalty", "train_feature", "generation",
    ]  # fmt: skip
    assert TEACHER_COLUMNS == [
        "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "test_ece", "val_loss", "val_acc",
        "val_ece", "epoch_seconds",
    ]  # fmt: skip
