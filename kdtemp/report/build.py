"""Everything a report shows, built in one call: each setting's table, summary and cell tests, and the
soft-target entropy table. `build_report(experiment_dir)` is what the CLI and a notebook call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from kdtemp.config.schema import ReportConfig
from kdtemp.report import verdict
from kdtemp.report.results import ExperimentResults, cached_teacher_logits, load_results
from kdtemp.report.search_view import SearchView, split_confirmation
from kdtemp.report.selection import GridSelection, restrict
from kdtemp.report.settings import split_by_setting
from kdtemp.report.summary import entropy_table, summarize
from kdtemp.report.tables import (
    METRICS,
    TemperatureTable,
    check_metric,
    temperature_table,
)
from kdtemp.search.record import read_search_record
from kdtemp.store.layout import ExperimentLayout


def problem_lines(results: ExperimentResults) -> list[str]:
    lines = []
    for run_id, reason in results.failed:
        lines.append(f"- failed: {run_id}: {reason}")
    for run_id in results.unfinished:
        lines.append(f"- unfinished (not averaged): {run_id}")
    for run_id, reason in results.unreadable:
        lines.append(f"- skipped, unreadable: {run_id}: {reason}")
    return lines


@dataclass
class SettingReport:
    """The table, summary and headline of one setting of an experiment."""

    label: str | None
    """What tells this setting apart (`student.epochs = 5`); None when the experiment has one setting."""
    results: ExperimentResults
    summary: pd.DataFrame
    table: TemperatureTable
    tests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=verdict.TEST_COLUMNS))
    """verdict.cell_tests on the table's metric: what the markers and the verdict
    (kdtemp.report.text.headline) say."""
    statistics: ReportConfig = field(default_factory=ReportConfig)
    search: SearchView | None = None
    """The experiment's `kdtemp search`, when it had one: budget, choice and confirmation."""


@dataclass
class Report:
    results: ExperimentResults
    """Every run of the experiment, all settings together."""
    settings: list[SettingReport]
    entropy: pd.DataFrame | None
    entropy_split: str | None
    statistics: ReportConfig = field(default_factory=ReportConfig)
    """The equivalence margin and smallest effect the verdicts use."""
    left_out: int = 0
    """Completed runs on disk outside the grid the report was asked for."""
    search: SearchView | None = None

    @property
    def summary(self) -> pd.DataFrame:
        """Every setting's summary rows; a leading `setting` column (the label) when there are several."""
        if len(self.settings) == 1:
            return self.settings[0].summary
        return pd.concat(
            [s.summary.assign(setting=s.label)[["setting", *s.summary.columns]] for s in self.settings],
            ignore_index=True,
        )

    @property
    def metric(self) -> str:
        return self.settings[0].table.metric

    @property
    def table(self) -> TemperatureTable:
        """The table of a one-setting experiment; with several, each setting's is in `settings`."""
        if len(self.settings) > 1:
            raise ValueError(
                f"{self.results.name} holds {len(self.settings)} settings: "
                "take each one's table from .settings"
            )
        return self.settings[0].table


def build_report(
    root: Path,
    metric: str = "test_acc",
    partial: bool = False,
    statistics: ReportConfig | None = None,
    selection: GridSelection | None = None,
) -> Report:
    """Every setting's table, summary and tests for the experiment at `root`; `statistics`: the
    equivalence margin and smallest effect the verdict uses (the config's `report:`); `selection`: keep
    only the runs of one grid (the sweep's options)."""
    check_metric(metric)
    statistics = statistics or ReportConfig()
    results = load_results(root, partial)
    search = None
    record = read_search_record(ExperimentLayout(Path(root)).search_dir)
    if record is not None:  # the confirmation's fresh seeds are quoted apart, never averaged into the table
        final, confirmation = split_confirmation(results.final, record, set(results.partial))
        kept = results.curves["run_id"].isin(final["run_id"]) if not results.curves.empty else None
        curves = results.curves[kept] if kept is not None else results.curves
        results = replace(results, final=final, curves=curves)
        search = SearchView(record, confirmation)
    left_out = 0
    if selection is not None:
        results, left_out = restrict(results, selection)
    column, percent, higher_better = METRICS[metric]

    settings = []
    for label, part in split_by_setting(results):
        accuracy_tests = verdict.cell_tests(
            part.final, "test_acc", True, verdict.in_table_units(statistics.equivalence_margin, True)
        )
        tests = (
            accuracy_tests
            if column == "test_acc"
            else verdict.cell_tests(
                part.final,
                column,
                higher_better,
                verdict.in_table_units(statistics.equivalence_margin, percent),
            )
        )
        own_search = search if search is not None and search.covers(part.final["run_id"]) else None
        if own_search is not None and own_search.confirmation is not None:
            tests = tests.assign(confirmatory=False)  # the confirmation at fresh seeds is the one
        summary = summarize(part, accuracy_tests)
        table = temperature_table(part, metric, tests)
        settings.append(SettingReport(label, part, summary, table, tests, statistics, own_search))
    logits, split = cached_teacher_logits(results)
    entropy = None
    if logits is not None:
        grid = [float(t) for t in results.final["t0"].dropna().unique()] if not results.final.empty else []
        weights = (results.teacher or {}).get("weights")
        entropy = entropy_table(
            logits,
            grid,
            (results.teacher or {}).get("ensemble") or "mean_probs",
            None if weights is None else torch.tensor(weights, dtype=torch.float64),
        )
    return Report(results, settings, entropy, split, statistics, left_out, search)
