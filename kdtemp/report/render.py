"""Write a report to files: summary.csv, entropy.csv, the figures, report.md, and report.html (built by
kdtemp.report.html); and a side-by-side comparison of several experiments."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdtemp.report import plots
from kdtemp.report.build import Report, problem_lines
from kdtemp.report.html import html_page, html_section
from kdtemp.report.shown import figure_caption, summary_cell_text, summary_shown
from kdtemp.report.tables import TemperatureTable, table_rows
from kdtemp.report.text import caption, footer, footprint_rows, titled
from kdtemp.store.files import atomic_write_text
from kdtemp.store.layout import ExperimentLayout
from kdtemp.store.records import BASELINE


def report_stem(metric: str) -> str:
    """report for test_acc, report-<metric> for the others: one metric's report never overwrites another's."""
    return "report" if metric == "test_acc" else f"report-{metric}"


def write_figures(report: Report, out: Path) -> dict[str, Path]:
    """The figures, never mixing settings: with several, each setting gets its own files (name-<i>.png)."""
    results, figures = report.results, {}
    for index, section in enumerate(report.settings, start=1):
        suffix = f"-{index}" if len(report.settings) > 1 else ""
        name, final, curves = titled(results.name, section), section.results.final, section.results.curves
        if final.empty:
            continue
        figures[f"accuracy_vs_temperature{suffix}"] = plots.accuracy_vs_temperature(
            section.summary, name, out / f"accuracy_vs_temperature{suffix}.png"
        )
        if section.summary["alpha"][section.summary["n"] > 0].nunique() > 2:  # baseline's 0 and 2+ alphas
            figures[f"temperature_alpha{suffix}"] = plots.temperature_alpha_heatmap(
                section.summary, name, out / f"temperature_alpha{suffix}.png"
            )
        figures[f"learning_curves{suffix}"] = plots.learning_curves(
            curves, name, out / f"learning_curves{suffix}.png"
        )
        if (curves["schedule"] != BASELINE).any():
            figures[f"temperature_schedules{suffix}"] = plots.temperature_schedules(
                curves, name, out / f"temperature_schedules{suffix}.png"
            )
    if report.search is not None and report.search.record.trials:
        figures["search_curves"] = plots.search_curves(
            report.search.record.trials, results.name, out / "search_curves.png"
        )
    if report.entropy is not None:
        classes = (results.teacher or {}).get("num_classes") or 10
        figures["entropy_vs_temperature"] = plots.entropy_vs_temperature(
            report.entropy, classes, results.name, out / "entropy_vs_temperature.png"
        )
    return figures


def write_report(report: Report, out: Path | None = None) -> dict[str, Path]:
    """Every report file under runs/<name>/report/ (or `out`), each written atomically."""
    out = out or ExperimentLayout(report.results.root).report_dir
    stem = report_stem(report.metric)
    paths = {"summary": out / "summary.csv", "markdown": out / f"{stem}.md", "html": out / f"{stem}.html"}
    atomic_write_text(paths["summary"], report.summary.to_csv(index=False))
    if report.entropy is not None:
        paths["entropy"] = out / "entropy.csv"
        atomic_write_text(paths["entropy"], report.entropy.to_csv(index=False))
    figures = write_figures(report, out)
    paths.update(figures)
    atomic_write_text(paths["markdown"], markdown(report, figures))
    atomic_write_text(
        paths["html"], html_page(f"kdtemp report: {report.results.name}", [html_section(report, figures)])
    )
    return paths


# --- markdown ------------------------------------------------------------------------------------


def table_markdown(table: TemperatureTable) -> str:
    header = ["schedule", *[f"T={t:g}" for t in table.temperatures]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells, _ in table_rows(table):
        texts = [text.replace("*", r"\*") for text, _ in cells]  # the marker, not emphasis
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    *(f"**{text}**" if best else text for text, (_, best) in zip(texts, cells, strict=False)),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def entropy_markdown(entropy: pd.DataFrame) -> str:
    lines = [
        "| T | mean entropy (nats) | mean top probability | entropy / entropy at T=1 |",
        "|---|---|---|---|",
    ]
    for row in entropy.itertuples():
        mark = " (grid)" if row.in_grid else ""
        lines.append(
            f"| {row.temperature:g}{mark} | {row.mean_entropy:.3f} | {100 * row.mean_max_prob:.1f}% "
            f"| {row.relative_entropy:.2f} |"
        )
    return "\n".join(lines)


def markdown(report: Report, figures: dict[str, Path]) -> str:
    results = report.results
    lines = [
        f"# kdtemp report: {results.name}",
        "",
        f"Metric `{report.metric}`: {caption(report.settings[0].table)}.",
        "",
    ]
    for section in report.settings:
        if section.label:
            lines += [f"## {section.label}", ""]
        lines += [table_markdown(section.table), "", footer(section), ""]
    for section in report.settings:
        rows = footprint_rows(section)
        if rows:
            lines += [
                titled("## What the student saves", section),
                "",
                "| | student | teacher | teacher / student |",
                "|---|---|---|---|",
            ]
            lines += [f"| {' | '.join(row)} |" for row in rows] + [""]
    if report.entropy is not None:
        lines += [
            "## Soft targets vs temperature",
            "",
            f"The teacher's soft targets on the {report.entropy_split} set.",
            "",
            entropy_markdown(report.entropy),
            "",
        ]
    if figures:
        lines += (
            ["## Figures", ""]
            + [f"![{figure_caption(report, key)}]({path.name})" for key, path in figures.items()]
            + [""]
        )
    lines += [
        "## Summary",
        "",
        "Per schedule × alpha × t0; `summary.csv` holds the same numbers unrounded.",
        "",
        summary_markdown(report.summary),
        "",
    ]
    problems = problem_lines(results)
    if problems:
        lines += ["## Runs not averaged", "", *problems, ""]
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame) -> str:
    shown = summary_shown(summary)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(summary_cell_text(c, row[c]) for c in shown.columns) + " |")
    return "\n".join(lines)


# --- html ----------------------------------------------------------------------------------------


# --- several experiments side by side ------------------------------------------------------------


def write_comparison(reports: list[Report], out: Path) -> dict[str, Path]:
    """One summary.csv with an `experiment` column, and report.md/html with every experiment in turn."""
    stem = report_stem(reports[0].metric)
    paths = {"summary": out / "summary.csv", "markdown": out / f"{stem}.md", "html": out / f"{stem}.html"}
    frames = [r.summary.assign(experiment=r.results.name) for r in reports]
    combined = pd.concat(frames, ignore_index=True)
    combined = combined[["experiment", *[c for c in combined.columns if c != "experiment"]]]
    atomic_write_text(paths["summary"], combined.to_csv(index=False))
    sections, markdown_parts = (
        [],
        [
            f"# kdtemp comparison: {', '.join(r.results.name for r in reports)}",
            "",
            f"Metric `{reports[0].metric}`: {caption(reports[0].settings[0].table)}.",
            "",
        ],
    )
    for report in reports:
        figures = write_figures(report, out / report.results.name)
        sections.append(html_section(report, figures))
        markdown_parts += [f"## {report.results.name}", ""]
        for section in report.settings:
            markdown_parts += [
                *([f"### {section.label}", ""] if section.label else []),
                table_markdown(section.table),
                "",
                footer(section),
                "",
            ]
    atomic_write_text(paths["markdown"], "\n".join(markdown_parts))
    atomic_write_text(paths["html"], html_page("kdtemp comparison", sections))
    return paths
