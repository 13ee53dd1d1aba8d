"""A setting's results in words: the table's caption, its one-line footer (teacher, sizes, run counts)
and the verdict line that names the best cell and what it beats or ties with (kdtemp.report.verdict's tests).
The CLI prints them under each table; report.md and report.html carry the same text (kdtemp.report.render).
"""

from __future__ import annotations

import math

import pandas as pd

from kdtemp.report import verdict
from kdtemp.report.build import SettingReport
from kdtemp.report.summary import cells_matching
from kdtemp.report.tables import (
    BASELINE_LABEL,
    LEGEND,
    METRICS,
    TemperatureTable,
)


def caption(table: TemperatureTable) -> str:
    """What the table's cells hold and what its marks mean: the same for every setting's table of one
    metric."""
    return f"{table.heading}; {LEGEND}"


def footer(report: SettingReport) -> str:
    """Teacher accuracy, sizes and run counts of one setting in one line, then its best cell in words."""
    results = report.results
    teacher, sizes = results.teacher or {}, results.sizes
    parts = []
    if teacher.get("test_acc") is not None:
        parts.append(f"teacher {100 * teacher['test_acc']:.2f}%")
    if sizes.get("student_params") and sizes.get("teacher_params"):
        parts.append(f"parameters: student {sizes['student_params']:,}, teacher {sizes['teacher_params']:,}")
    runs = f"{len(results.final)} completed runs"
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
    best = headline(report)
    return f"{line}\n{best}" if best else line


def headline(section: SettingReport) -> str | None:
    """The verdict: the best cell in words (with the share of the teacher's gap closed, at how much smaller
    and faster), the cells it cannot be told from, whether they beat no-KD, where KD hurt; then, when the
    top two tie, how many more seeds would separate them."""
    tests, results, table = section.tests, section.results, section.table
    if tests.empty:
        return None
    wording = verdict.Wording(
        table.percent,
        table.higher_better,
        len(set(tests["alpha"])) > 1,
        results.generations,
        len(set(tests["schedule"])) > 1,
    )
    best = tests[tests["best"]].iloc[0]
    text = f"best: {wording.name(best)}, {wording.value(best['mean'])}"
    extras = []
    gap = cells_matching(section.summary, best)["gap_closed"]
    if table.metric == "test_acc" and len(gap) and not pd.isna(gap.iloc[0]):
        extras.append(f"{100 * gap.iloc[0]:.0f}% of the teacher's accuracy gap over no-KD closed")
    sizes = [
        f"{value:.1f}x {word}"
        for value, word in ((results.compression, "smaller"), (results.speedup, "faster"))
        if not math.isnan(value)
    ]
    if sizes:
        extras.append("at " + ", ".join(sizes))
    text += f" ({', '.join(extras)})" if extras else ""
    baseline = table.references.get(BASELINE_LABEL)
    lines = ["; ".join([text, *verdict.clauses(tests, baseline.mean if baseline else math.nan, wording)])]
    separation = verdict.separation_line(results.final, METRICS[table.metric][0], tests, wording)
    return "\n".join(lines + ([separation] if separation else []))


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
