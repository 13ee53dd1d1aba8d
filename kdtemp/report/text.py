"""A setting's results in words: the table's caption, its one-line footer (teacher, sizes, run counts)
and the verdict that names the best cell and how the others stand against it (kdtemp.report.wording).
The CLI prints them under each table; report.md and report.html carry the same text (kdtemp.report.render).
"""

from __future__ import annotations

import math

import pandas as pd

from kdtemp.report.build import SettingReport
from kdtemp.report.summary import cells_matching
from kdtemp.report.tables import (
    BASELINE_LABEL,
    METRICS,
    TemperatureTable,
)
from kdtemp.report.verdict import in_table_units, measured_on_validation
from kdtemp.report.wording import Wording, best_text, clauses, planning_line


def caption(table: TemperatureTable) -> str:
    """What the table's cells hold and what its marks mean: the same for every setting's table of one
    metric."""
    return f"{table.heading}; {table.legend}"


def footer(report: SettingReport) -> str:
    """Teacher accuracy, sizes and run counts of one setting in one line, then its best cell in words."""
    results = report.results
    teacher, sizes = results.teacher or {}, results.sizes
    parts = []
    if teacher.get("test_acc") is not None:
        parts.append(f"teacher {100 * teacher['test_acc']:.2f}%")
    if sizes.get("student_params") and sizes.get("teacher_params"):
        parts.append(f"parameters: student {sizes['student_params']:,}, teacher {sizes['teacher_params']:,}")
    shown_twice = results.final["same_as"].notna() if "same_as" in results.final else None
    trained = len(results.final) - (int(shown_twice.sum()) if shown_twice is not None else 0)
    runs = f"{trained} completed runs"
    extras = [
        f"{len(items)} {label}"
        for items, label in (
            (results.failed, "failed"),
            (results.unfinished, "unfinished"),
            (results.unreadable, "unreadable"),
        )
        if items
    ]
    parts.append(runs + (f" ({', '.join(extras)}; not averaged)" if extras else ""))
    line = "; ".join(parts)
    same = same_curve_note(results.final)
    if same:
        line = f"{line}\n{same}"
    if report.search is not None:
        line = f"{line}\n{report.search.budget_line}\n{report.search.verdict_line()}"
    best = headline(report)
    return f"{line}\n{best}" if best else line


def same_curve_note(final: pd.DataFrame) -> str | None:
    """Which cells show another schedule's runs: their temperature curves are equal, so they were trained
    once (and are tested once, under the first label)."""
    if "same_as" not in final or final["same_as"].isna().all():
        return None
    shown = final[final["same_as"].notna()].drop_duplicates(["schedule", "t0", "alpha"])
    several_alphas = final["alpha"].nunique() > 1
    items = []
    for row in shown.itertuples():
        alpha = f" alpha {row.alpha:g}" if several_alphas else ""
        items.append(f"{row.schedule} T={row.t0:g}{alpha} is {row.same_as} T={row.t0:g}")
    return f"same temperature curve, trained once and shown under each label: {'; '.join(items)}"


def headline(section: SettingReport) -> str | None:
    """The verdict: the best cell (chosen on validation) with its test value, what it closes of the
    teacher's gap and at how much smaller and faster; its confirmatory test against no-KD; how every other
    cell stands against it; where KD hurt; then the seed plan, and a warning when the choice was made on
    the test set itself."""
    tests, results, table = section.tests, section.results, section.table
    if tests.empty:
        return None
    wording = Wording(
        table.percent,
        table.higher_better,
        len(set(tests["alpha"])) > 1,
        results.generations,
        len(set(tests["schedule"])) > 1,
        "validation" if measured_on_validation(METRICS[table.metric][0]) else "test",
    )
    best = tests[tests["best"]].iloc[0]
    text = f"best: {best_text(best, wording)}"
    extras = []
    gap = cells_matching(section.summary, best)["gap_closed"]
    if table.metric == "test_acc" and len(gap) and not pd.isna(gap.iloc[0]):
        extras.append(f"{round(100 * gap.iloc[0])}% of the teacher's accuracy gap over no-KD closed")
    sizes = [
        f"{value:.1f}x {word}" if value >= 1 else f"{1 / value:.1f}x {opposite}"
        for value, word, opposite in (
            (results.compression, "smaller", "larger"),
            (results.speedup, "faster", "slower"),
        )
        if not math.isnan(value) and value > 0
    ]
    if sizes:
        extras.append("at " + ", ".join(sizes))
    text += f" ({', '.join(extras)})" if extras else ""
    has_baseline = BASELINE_LABEL in table.references
    in_units = in_table_units(section.statistics.equivalence_margin, table.percent)
    lines = ["; ".join([text, *clauses(tests, has_baseline, wording, in_units)])]
    plan = planning_line(
        results.final, METRICS[table.metric][0], tests, wording, section.statistics.min_effect
    )
    if plan:
        lines.append(plan)
    confirmed = section.search is not None and section.search.confirmation is not None
    if bool(best["chosen_on_val"]) and not bool(best["confirmatory"]) and not confirmed:
        lines.append(
            "chosen and tested on validation: these tests explore; the test_acc table holds the "
            "confirmatory one"
        )
    if not bool(best["chosen_on_val"]):
        lines.append(
            "warning: chosen on the test set it reports (no validation split: data.val_fraction 0, or runs "
            "written before kdtemp had one), so the best cell's number is biased upwards"
        )
    return "\n".join(lines)


def footprint_rows(report: SettingReport) -> list[tuple[str, str, str, str]]:
    """(measure, student, teacher, teacher / student) rows of what the student saves."""
    sizes = report.results.sizes
    rows = []
    for label, key, unit in (
        ("parameters", "params", ""),
        ("size", "size_bytes", " bytes"),
        (f"latency, batch of {sizes.get('latency_batch_size')}", "latency_ms", " ms"),
        ("forward FLOPs per sample", "flops", ""),
    ):
        student, teacher = sizes.get(f"student_{key}"), sizes.get(f"teacher_{key}")
        if student and teacher:
            # `unit` bound as a default (B023), though fmt is only called in the iteration that makes it
            fmt = (
                (lambda v, unit=unit: f"{v:.3f}{unit}")
                if key == "latency_ms"
                else (lambda v, unit=unit: f"{int(v):,}{unit}")
            )
            rows.append((label, fmt(student), fmt(teacher), f"{teacher / student:.1f}x"))
    return rows


def titled(name: str, section: SettingReport) -> str:
    return f"{name} ({section.label})" if section.label else name
