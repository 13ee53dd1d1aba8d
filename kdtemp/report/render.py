"""Write a report to files: summary.csv, entropy.csv, the figures, report.md and a self-contained
report.html."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from kdtemp.store.records import BASELINE, TEACHER
from kdtemp.report import plots
from kdtemp.report.tables import Report, SettingReport, TemperatureTable, problem_lines, table_rows
from kdtemp.report.text import caption, footer, footprint_rows, titled
from kdtemp.store.files import ExperimentLayout, atomic_write_text

FIGURES = {
    "accuracy_vs_temperature": "Test accuracy against the grid temperature",
    "learning_curves": "Learning curves",
    "temperature_schedules": "Temperature schedules as trained",
    "entropy_vs_temperature": "How soft the teacher's targets are",
}


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
        figures[f"learning_curves{suffix}"] = plots.learning_curves(
            curves, name, out / f"learning_curves{suffix}.png"
        )
        if (curves["schedule"] != BASELINE).any():
            figures[f"temperature_schedules{suffix}"] = plots.temperature_schedules(
                curves, name, out / f"temperature_schedules{suffix}.png"
            )
    if report.entropy is not None:
        classes = (results.teacher or {}).get("num_classes") or 10
        figures["entropy_vs_temperature"] = plots.entropy_vs_temperature(
            report.entropy, classes, results.name, out / "entropy_vs_temperature.png"
        )
    return figures


def figure_caption(report: Report, key: str) -> str:
    """FIGURES' caption of `key`, with its setting's label for a per-setting file (key-<i>)."""
    if key in FIGURES:
        return FIGURES[key]
    base, index = key.rsplit("-", 1)
    return f"{FIGURES[base]} ({report.settings[int(index) - 1].label})"


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


SUMMARY_SHOWN = [
    "setting",
    "schedule",
    "alpha",
    "t0",
    "generation",
    "n",
    "mean_test_acc",
    "std_test_acc",
    "ci95_test_acc",
    "mean_best_test_acc",
    "delta_vs_baseline",
    "p_value",
    "holm_p_value",
    "p_vs_best",
    "p_vs_constant",
    "mean_agreement",
    "mean_kl_to_teacher",
    "mean_ece",
    "gap_closed",
    "failed",
]
P_COLUMNS = ("p_value", "holm_p_value", "p_vs_best", "p_vs_constant")
PERCENT_COLUMNS = {
    "mean_test_acc",
    "std_test_acc",
    "ci95_test_acc",
    "mean_best_test_acc",
    "delta_vs_baseline",
    "mean_agreement",
    "mean_ece",
    "gap_closed",
}


def _summary_text(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in PERCENT_COLUMNS:
        return f"{100 * value:.2f}%"
    if column in P_COLUMNS:
        return value if isinstance(value, str) else f"{value:.3g}"
    if column == "mean_kl_to_teacher":
        return f"{value:.3f}"
    if column in ("t0", "alpha"):
        return f"{value:g}"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def summary_shown(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary columns a report shows; a grid cell's missing p-value against no-KD reads "n/a" (n < 2,
    or every seed's difference to the baseline the same), the baseline's and teacher's stay blank, as do
    p_vs_best of the best cell and p_vs_constant where there is no constant cell to compare with."""
    shown = summary[[c for c in SUMMARY_SHOWN if c in summary]].astype(object)
    grid = ~summary["schedule"].isin([BASELINE, TEACHER]) & (summary["n"] > 0)
    for column in ("p_value", "holm_p_value"):
        shown.loc[grid & summary[column].isna(), column] = "n/a"
    return shown


def summary_markdown(summary: pd.DataFrame) -> str:
    shown = summary_shown(summary)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(_summary_text(c, row[c]) for c in shown.columns) + " |")
    return "\n".join(lines)


# --- html ----------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: bold; background: #e8f5e9; }
td.reference { color: #555; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.caption, .footer { color: #555; font-size: 0.9em; }
"""


def _esc(text) -> str:
    return html.escape(str(text))


def table_html(table: TemperatureTable) -> str:
    head = "".join(f"<th>T={t:g}</th>" for t in table.temperatures)
    rows = []
    for label, cells, reference in table_rows(table):
        kind = ' class="reference"' if reference else ""
        tds = "".join(
            f'<td class="best">{_esc(text)}</td>' if best else f"<td{kind}>{_esc(text)}</td>"
            for text, best in cells
        )
        rows.append(f"<tr><td{kind}>{_esc(label)}</td>{tds}</tr>")
    return (
        f'<table class="temperature-table"><thead><tr><th>schedule</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def frame_html(frame: pd.DataFrame, columns: list[str], text) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(text(c, row[c]))}</td>" for c in columns) + "</tr>"
        for _, row in frame.iterrows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _entropy_text(column: str, value) -> str:
    if column == "temperature":
        return f"{value:g}"
    if column == "mean_max_prob":
        return f"{100 * value:.1f}%"
    if column == "in_grid":
        return "yes" if value else ""
    return f"{value:.3f}"


def image_html(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'
        f'<figcaption class="caption">{_esc(alt)}</figcaption></figure>'
    )


def html_section(report: Report, figures: dict[str, Path]) -> str:
    results = report.results
    parts = [
        f"<h2>{_esc(results.name)}</h2>",
        f'<p class="caption">Metric <code>{_esc(report.metric)}</code>: '
        f"{_esc(caption(report.settings[0].table))}.</p>",
    ]
    for index, section in enumerate(report.settings, start=1):
        suffix = f"-{index}" if len(report.settings) > 1 else ""
        parts += _setting_html(section, figures.get(f"accuracy_vs_temperature{suffix}"))
    if report.entropy is not None:
        parts += [
            "<h3>Soft targets vs temperature</h3>",
            f'<p class="caption">The teacher\'s soft targets on the {_esc(report.entropy_split)} set.</p>',
            frame_html(
                report.entropy,
                ["temperature", "mean_entropy", "mean_max_prob", "relative_entropy", "in_grid"],
                _entropy_text,
            ),
        ]
    for key, path in figures.items():
        if not key.startswith("accuracy_vs_temperature"):
            parts.append(image_html(path, figure_caption(report, key)))
    shown = summary_shown(report.summary)
    parts += ["<h3>Summary</h3>", frame_html(shown, list(shown.columns), _summary_text)]
    problems = problem_lines(results)
    if problems:
        parts += [
            "<h3>Runs not averaged</h3>",
            "<ul>" + "".join(f"<li>{_esc(p[2:])}</li>" for p in problems) + "</ul>",
        ]
    return "\n".join(parts)


def _setting_html(section: SettingReport, accuracy_figure: Path | None) -> list[str]:
    """One setting's table, footer, footprint and accuracy-vs-temperature figure."""
    parts = [f"<h3>{_esc(section.label)}</h3>"] if section.label else []
    parts += [
        table_html(section.table),
        f'<p class="footer">{_esc(footer(section)).replace(chr(10), "<br>")}</p>',
    ]
    rows = footprint_rows(section)
    if rows:
        body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
        parts += [
            f"<h3>{_esc(titled('What the student saves', section))}</h3>",
            "<table><thead><tr><th></th><th>student</th><th>teacher</th><th>teacher / student</th>"
            "</tr></thead>"
            f"<tbody>{body}</tbody></table>",
        ]
    if accuracy_figure is not None:
        parts.append(image_html(accuracy_figure, titled(FIGURES["accuracy_vs_temperature"], section)))
    return parts


def html_page(title: str, sections: list[str]) -> str:
    """One self-contained file: styles inline, figures as base64 PNG, opens offline."""
    body = "\n".join(sections)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{_esc(title)}</h1>\n{body}\n</body></html>\n"
    )


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
