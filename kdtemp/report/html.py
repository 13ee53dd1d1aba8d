"""report.html: the report's tables, summary and figures (embedded as data URIs) in one self-contained page
that opens offline.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from kdtemp.report.build import Report, SettingReport, problem_lines
from kdtemp.report.shown import (
    FIGURES,
    figure_caption,
    summary_cell_text,
    summary_shown,
)
from kdtemp.report.tables import TemperatureTable, table_rows
from kdtemp.report.text import caption, footer, footprint_rows, titled

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
    parts += ["<h3>Summary</h3>", frame_html(shown, list(shown.columns), summary_cell_text)]
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
