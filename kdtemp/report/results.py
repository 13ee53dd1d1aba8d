"""A report's input: every run of an experiment read back from its files, checked, and sorted into those
averaged (completed), listed (failed, unfinished, unreadable) and, with `partial`, shown as they stand.

kdtemp.report.build turns these results into tables; nothing here computes a statistic.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pandas as pd
import torch

from kdtemp.errors import KDTempError, RunsError
from kdtemp.report.settings import RunSetting, read_run_setting
from kdtemp.store.files import file_fingerprint, load_checkpoint, load_summary
from kdtemp.store.layout import ExperimentLayout, RunFiles
from kdtemp.store.records import BASELINE, Status

NUMERIC_COLUMNS = ["t0", "alpha", "seed", "epoch", "test_acc", "test_loss"]


@dataclass
class ExperimentResults:
    """Everything `report` knows about one experiment."""

    name: str
    root: Path
    final: pd.DataFrame
    """One row per completed run: its last epoch, plus test_acc_at_best_val, best_val_acc, val_is_test and
    its setting."""
    curves: pd.DataFrame
    """Every epoch of every completed run."""
    teacher: dict | None
    sizes: dict = field(default_factory=dict)
    """Parameters, bytes, latency and FLOPs of student and teacher, as the runs recorded them."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    settings: dict[str, RunSetting] = field(default_factory=dict)
    """run id -> its setting (kdtemp.report.settings), for every run with a summary."""
    failed_cells: dict[str, tuple] = field(default_factory=dict)
    """failed run id -> its (schedule, alpha, t0, generation)."""
    pruned: dict[str, tuple] = field(default_factory=dict)
    """run id of a run `kdtemp search` pruned -> its (schedule, alpha, t0, generation, epochs trained)."""
    setting_sizes: dict[str, dict] = field(default_factory=dict)
    """setting key -> the sizes its first completed run recorded."""
    partial: dict[str, int] = field(default_factory=dict)
    """With load_results(partial=True): unfinished run id -> epochs it completed (its `final` row, the
    latest)."""

    @property
    def cells_failed(self) -> dict[tuple, int]:
        """(schedule, alpha, t0, generation) -> number of failed runs in that cell."""
        return dict(Counter(self.failed_cells[run_id] for run_id, _ in self.failed))

    @property
    def generations(self) -> bool:
        return not self.final.empty and self.final["generation"].max() > 1

    @property
    def compression(self) -> float:
        return _ratio(self.sizes.get("teacher_params"), self.sizes.get("student_params"))

    @property
    def speedup(self) -> float:
        return _ratio(self.sizes.get("teacher_latency_ms"), self.sizes.get("student_latency_ms"))


def _ratio(numerator, denominator) -> float:
    return numerator / denominator if numerator and denominator else math.nan


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv, validated: the columns we need, numbers where numbers belong, epochs 0..n-1."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise RunsError(
            f"{path}: unreadable metrics ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    missing = [column for column in ("run_id", "schedule", *NUMERIC_COLUMNS) if column not in frame.columns]
    if missing:
        raise RunsError(f"{path}: missing columns {', '.join(missing)}")
    if frame.empty:
        raise RunsError(f"{path}: no rows")
    for column in [c for c in frame.columns if c not in ("run_id", "schedule")]:
        converted = pd.to_numeric(frame[column], errors="coerce")
        if converted.isna().sum() > frame[column].isna().sum():
            raise RunsError(
                f"{path}: column {column} holds text where numbers belong (a truncated or edited file)"
            )
        frame[column] = converted
    if list(frame["epoch"]) != list(range(len(frame))):
        raise RunsError(f"{path}: epochs are not 0..{len(frame) - 1} in order (a truncated or edited file)")
    if frame[["test_acc", "test_loss"]].isna().any().any():
        raise RunsError(f"{path}: empty test_acc/test_loss cells (a truncated file)")
    frame["generation"] = frame["generation"].fillna(1).astype(int) if "generation" in frame else 1
    return frame


def load_results(root: Path, partial: bool = False) -> ExperimentResults:
    """Read every run under `root`/students; raise RunsError when there is none at all.

    partial: a run still training (no summary.json, >= 1 metrics row) enters `final` with its latest
    completed epoch and is listed in `results.partial`, so tables of a running sweep say what they hold.
    """
    layout = ExperimentLayout(Path(root))
    run_dirs = layout.run_dirs()
    if not run_dirs:
        raise RunsError(f"no runs under {layout.students_dir}; run `kdtemp sweep` or `kdtemp search` first")
    finals, curves = [], []
    results = ExperimentResults(
        layout.root.name, layout.root, pd.DataFrame(), pd.DataFrame(), _teacher_info(layout)
    )
    for run_dir in run_dirs:
        run = _load_run(run_dir, results, partial)
        if run is not None:
            finals.append(run[0])
            curves.append(run[1])
    if finals:
        results.final = pd.DataFrame(finals)
        results.curves = pd.concat(curves, ignore_index=True)
        check_one_run_per_seed(results.final)
        _show_same_curves(results, layout)
    return results


def _show_same_curves(results: ExperimentResults, layout: ExperimentLayout) -> None:
    """Completed runs shown again under the labels of the cells that share their temperature curve
    (same_curves.json, written by the sweep), with `same_as` naming the schedule that trained them: the
    tables show both cells, the tests count one."""
    results.final["same_as"] = None
    try:
        entries = json.loads(layout.same_curves.read_text()) if layout.same_curves.exists() else []
    except (OSError, ValueError):
        entries = []
    final, curves = [results.final], [results.curves]
    for entry in entries:
        for run_id, (schedule, alpha, t0, generation, epoch) in list(results.pruned.items()):
            if (schedule, float(alpha), float(t0)) == (
                entry["same_as"],
                float(entry["alpha"]),
                float(entry["t0"]),
            ):
                results.pruned[f"{run_id} as {entry['schedule']}"] = (
                    entry["schedule"],
                    alpha,
                    t0,
                    generation,
                    epoch,
                )
        trained = results.final[
            (results.final["schedule"] == entry["same_as"])
            & (results.final["t0"].astype(float) == float(entry["t0"]))
            & (results.final["alpha"].astype(float) == float(entry["alpha"]))
            & (results.final["epoch"] + 1 == int(entry["epochs"]))
            & results.final["same_as"].isna()
            & ~results.final["run_id"].isin(results.partial)
        ]
        if trained.empty:
            continue
        final.append(trained.assign(schedule=entry["schedule"], same_as=entry["same_as"]))
        shown = results.curves[results.curves["run_id"].isin(trained["run_id"])]
        curves.append(shown.assign(schedule=entry["schedule"]))
    results.final = pd.concat(final, ignore_index=True)
    results.curves = pd.concat(curves, ignore_index=True)


def _load_run(run_dir: Path, results: ExperimentResults, partial: bool) -> tuple[dict, pd.DataFrame] | None:
    """One run's last row and curve, when it completed (or, with `partial`, has an epoch); else it is listed
    in `results` as failed, unfinished or unreadable."""
    try:
        summary = load_summary(run_dir)
    except RunsError as exc:
        results.unreadable.append((run_dir.name, str(exc)))
        return None
    if summary is not None:
        results.settings[run_dir.name] = read_run_setting(run_dir, summary)
    if summary is not None and summary.status == Status.FAILED:
        results.failed.append((run_dir.name, summary.reason or str(Status.FAILED)))
        results.failed_cells[run_dir.name] = (summary.schedule, summary.alpha, summary.t0, summary.generation)
        return None
    if summary is not None and summary.status == Status.PRUNED:
        results.pruned[run_dir.name] = (
            summary.schedule,
            summary.alpha,
            summary.t0,
            summary.generation,
            summary.pruned_epoch,
        )
        return None
    if summary is None and not (partial and _has_epochs(run_dir)):
        results.unfinished.append(run_dir.name)
        return None
    try:
        frame = read_metrics(RunFiles(run_dir).metrics)
    except RunsError as exc:
        results.unreadable.append((run_dir.name, str(exc)))
        return None
    if summary is None:
        results.settings[run_dir.name] = read_run_setting(run_dir, None)
        results.partial[run_dir.name] = len(frame)
    elif len(frame) != summary.epochs:
        results.unreadable.append(
            (run_dir.name, f"metrics.csv has {len(frame)} epochs, summary.json says {summary.epochs}")
        )
        return None
    setting = results.settings[run_dir.name]
    sizes = (
        summary.sizes() if summary is not None else {}
    )  # a partial run has no summary.json: nothing to record
    results.sizes = results.sizes or sizes
    if sizes:
        results.setting_sizes.setdefault(setting.key, sizes)
    last = frame.iloc[-1].to_dict()
    last.update(
        at_best_val(frame),
        val_is_test=(summary.val_is_test if summary is not None else None) is True or not has_val(frame),
        setting=setting.key,
        baseline_setting=setting.baseline_key,
    )
    return last, frame


def has_val(frame: pd.DataFrame) -> bool:
    """Whether every epoch of the run was evaluated on a validation split (runs of kdtemp before it had
    one were not)."""
    return "val_acc" in frame and bool(frame["val_acc"].notna().all())


def at_best_val(frame: pd.DataFrame) -> dict[str, float]:
    """test_acc_at_best_val and best_val_acc: the test accuracy of the epoch with the highest validation
    accuracy (the first of equals), so the epoch is not chosen on the accuracy it reports. NaN without a
    validation split."""
    if not has_val(frame):
        return {"test_acc_at_best_val": math.nan, "best_val_acc": math.nan}
    best = int(frame["val_acc"].to_numpy().argmax())  # argmax takes the first of equals
    return {
        "test_acc_at_best_val": float(frame["test_acc"].iloc[best]),
        "best_val_acc": float(frame["val_acc"].iloc[best]),
    }


def _has_epochs(run_dir: Path) -> bool:
    """A metrics.csv with a header and at least one row: a run that completed an epoch."""
    try:
        with open(RunFiles(run_dir).metrics, "rb") as handle:
            return len(handle.read().splitlines()) >= 2
    except OSError:
        return False


def check_one_run_per_seed(final: pd.DataFrame) -> None:
    """Each (setting, cell, seed) holds one run, so pairing by seed is never ambiguous.

    Equal settings and grid axes give equal run ids, so a repeat means runs whose settings were not
    recorded, or one schedule label given to different schedule parameters."""
    pairing = final["setting"].where(final["schedule"] != BASELINE, final["baseline_setting"])
    cells = final.assign(_pairing=pairing).groupby(
        ["_pairing", "schedule", "alpha", "t0", "generation", "seed"], dropna=False, sort=False
    )
    for (_, schedule, _, _, _, seed), runs in cells:
        if len(runs) > 1:
            what = (
                "no-KD baselines"
                if schedule == BASELINE
                else f"runs of one schedule ({schedule}), t0 and alpha"
            )
            raise RunsError(
                f"{' and '.join(runs['run_id'])} are {what} of one setting and seed {int(seed)}: the "
                "report cannot tell which to pair; move all but one out of students/ "
                "(or give differing schedules distinct labels)"
            )


def _teacher_info(layout: ExperimentLayout) -> dict | None:
    """Accuracy, size and fingerprints of the teacher, or of the ensemble (teacher/ensemble.json)."""
    if layout.ensemble_record.exists():
        try:
            record = json.loads(layout.ensemble_record.read_text())
            return {**record, "fingerprints": [t["fingerprint"] for t in record["teachers"]]}
        except (OSError, ValueError, KeyError):
            return None
    if not layout.teacher_model.exists():
        return None
    try:
        checkpoint = load_checkpoint(layout.teacher_model, "teacher checkpoint")
    except KDTempError:
        return None
    info = {
        key: checkpoint.get(key)
        for key in ("test_acc", "test_loss", "parameters", "architecture", "dataset", "epochs", "num_classes")
    }
    info["fingerprints"] = [file_fingerprint(layout.teacher_model)]
    return info


def cached_teacher_logits(results: ExperimentResults):
    """The sweep's cached teacher logits (n, N, C), of the training set when cached, else the test set:
    (logits, split)."""
    if not results.teacher:
        return None, None
    layout = ExperimentLayout(results.root)
    for transform, split in (("none", "train"), ("augment", "test")):
        stacked = []
        for fingerprint in results.teacher["fingerprints"]:
            path = layout.teacher_logits_cache(fingerprint, transform)
            try:
                logits = load_checkpoint(path, "teacher-logits cache").get(split) if path.exists() else None
            except KDTempError:
                logits = None
            stacked.append(logits)
        if stacked and all(logits is not None for logits in stacked):
            return torch.stack(cast("list[torch.Tensor]", stacked)), split
    return None, None
