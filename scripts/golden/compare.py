#!/usr/bin/env python3
"""Compare two golden outputs of make_golden.sh, byte for byte except for masked timing fields.

    python compare.py BEFORE_DIR AFTER_DIR

Compared (under each OUT_DIR):
  * the set of experiments and, per experiment, the set of student run-id directory names;
  * every metrics.csv (students and teachers), summary.json, ensemble.json, and the run and
    teacher config.yaml files under runs/;
  * every experiment's report/summary.csv, report/entropy.csv and report*.md (the comparison's too);
  * reports/*.txt (the captured stdout of `report` and `status`).
Text is compared after replacing the absolute OUT_DIR by <OUT_DIR>. CSV cells and JSON leaves are
compared as their exact text (JSON floats through Python's round-trip repr), so any change in any
digit is a mismatch. Masked fields (MASKED below) are printed first; nothing else is ignored.
Not compared: model.pt / checkpoint / cache / PNG / HTML files, owner.json (host and
pid), logs/ (stdout of train-teacher and sweep, which print wall times).

Exit status: 0 when everything matches, 1 on any mismatch.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

# --- what is not compared, and why --------------------------------------------------------------

MASKED_CSV_COLUMNS = {
    "metrics.csv": {"epoch_seconds": "wall time of the epoch (students and teachers)"},
    "summary.csv": {"speedup": "teacher/student latency ratio (from *_latency_ms, a timing)"},
}
MASKED_JSON_KEYS = {
    "summary.json": {
        "wall_seconds": "wall time of the run",
        "student_latency_ms": "measured forward latency",
        "teacher_latency_ms": "measured forward latency",
        "final.epoch_seconds": "wall time of the last epoch (copy of the metrics.csv column)",
    },
}
MASKED_TEXT = [
    # (pattern, replacement, why): applied to reports/*.txt
    (re.compile(r"\d+(?:\.\d+)?x faster"), "<N>x faster", "report verdict's latency speed-up ('5.2x faster')"),
]
MASKED_MARKDOWN = MASKED_TEXT + [
    # applied to runs/*/report/report*.md (and runs/comparison/report*.md) besides MASKED_TEXT
    (re.compile(r"^\| latency, batch of (\d+) \|.*$", re.M), r"| latency, batch of \1 | <masked> |",
     "report.md's latency row (student ms, teacher ms, ratio)"),
]
TIMING_LOOKING = re.compile(r"(second|latency|_ms$|time|duration|elapsed|host|pid|date)", re.I)
"""Field names that look like they vary run to run: flagged if found unmasked (still compared)."""

OUT_DIR_PLACEHOLDER = "<OUT_DIR>"
MAX_PER_FILE = 15


class Comparison:
    def __init__(self, before: Path, after: Path):
        self.before, self.after = before, after
        self.mismatches = 0
        self.files = 0
        self.masked_counts: dict[str, int] = {}
        self.unmasked_timing: set[str] = set()

    # --- reporting ---
    def mismatch(self, rel: str, where: str, a, b) -> None:
        self.mismatches += 1
        print(f"MISMATCH {rel}: {where}: before={a!r} after={b!r}")

    def masked(self, what: str) -> None:
        self.masked_counts[what] = self.masked_counts.get(what, 0) + 1

    # --- reading ---
    def text(self, root: Path, rel: str) -> str:
        return (root / rel).read_text(encoding="utf-8").replace(str(root), OUT_DIR_PLACEHOLDER)

    # --- file kinds ---
    def compare_csv(self, rel: str) -> None:
        masked = MASKED_CSV_COLUMNS.get(Path(rel).name, {})
        tables = [list(csv.reader(io.StringIO(self.text(root, rel)))) for root in (self.before, self.after)]
        a, b = tables
        if not a or not b:
            if a != b:
                self.mismatch(rel, "emptiness", len(a), len(b))
            return
        if a[0] != b[0]:
            self.mismatch(rel, "header", a[0], b[0])
            return
        header = a[0]
        for column in header:
            if column not in masked and TIMING_LOOKING.search(column):
                self.unmasked_timing.add(f"{Path(rel).name}:{column}")
        if len(a) != len(b):
            self.mismatch(rel, "row count", len(a) - 1, len(b) - 1)
        shown = 0
        for index, (row_a, row_b) in enumerate(zip(a[1:], b[1:], strict=False), start=1):
            label = self.row_label(header, row_a, index)
            if len(row_a) != len(row_b):
                self.mismatch(rel, f"{label}: cell count", len(row_a), len(row_b))
                continue
            for column, cell_a, cell_b in zip(header, row_a, row_b, strict=True):
                if column in masked:
                    self.masked(f"{Path(rel).name}:{column}")
                    continue
                if cell_a != cell_b:
                    shown += 1
                    if shown <= MAX_PER_FILE:
                        self.mismatch(rel, f"{label} column {column}", cell_a, cell_b)
                    else:
                        self.mismatches += 1
        if shown > MAX_PER_FILE:
            print(f"  ... {shown - MAX_PER_FILE} more mismatching cells in {rel}")

    @staticmethod
    def row_label(header: list[str], row: list[str], index: int) -> str:
        parts = [f"row {index}"]
        for key in ("run_id", "setting", "schedule", "t0", "generation", "epoch", "temperature"):
            if key in header and header.index(key) < len(row):
                parts.append(f"{key}={row[header.index(key)]}")
        return " ".join(parts)

    def compare_json(self, rel: str) -> None:
        masked = MASKED_JSON_KEYS.get(Path(rel).name, {})
        flats = []
        for root in (self.before, self.after):
            try:
                flats.append(flatten(json.loads(self.text(root, rel))))
            except json.JSONDecodeError as exc:
                self.mismatch(rel, "not JSON", str(root), str(exc))
                return
        a, b = flats
        for key in sorted(set(a) | set(b)):
            if key in masked:
                self.masked(f"{Path(rel).name}:{key}")
                continue
            if TIMING_LOOKING.search(key.rsplit(".", 1)[-1]):
                self.unmasked_timing.add(f"{Path(rel).name}:{key}")
            if key not in a or key not in b:
                self.mismatch(rel, f"key {key}", a.get(key, "<absent>"), b.get(key, "<absent>"))
            elif a[key] != b[key]:
                self.mismatch(rel, f"key {key}", a[key], b[key])

    def compare_text(self, rel: str, masks=()) -> None:
        texts = []
        for root in (self.before, self.after):
            text = self.text(root, rel)
            for pattern, replacement, _why in masks:
                text, count = pattern.subn(replacement, text)
                kind = "reports/*.txt" if rel.startswith("reports/") else "report*.md"
                for _ in range(count):
                    self.masked(f"{kind}:{replacement}")
            texts.append(text.splitlines())
        a, b = texts
        if a == b:
            return
        shown = 0
        for number in range(max(len(a), len(b))):
            line_a = a[number] if number < len(a) else "<no line>"
            line_b = b[number] if number < len(b) else "<no line>"
            if line_a != line_b:
                shown += 1
                if shown <= MAX_PER_FILE:
                    self.mismatch(rel, f"line {number + 1}", line_a, line_b)
                else:
                    self.mismatches += 1
        if shown > MAX_PER_FILE:
            print(f"  ... {shown - MAX_PER_FILE} more mismatching lines in {rel}")

    # --- the walk ---
    def compared_files(self, root: Path) -> set[str]:
        runs = root / "runs"
        found = set()
        for path in runs.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            parts = path.relative_to(runs).parts
            if path.name in ("metrics.csv", "summary.json", "ensemble.json"):
                found.add(rel)
            elif path.name == "config.yaml" and ("students" in parts or "teacher" in parts):
                found.add(rel)
            elif ("report" in parts or parts[0] == "comparison") and (
                path.name in ("summary.csv", "entropy.csv")
                or (path.name.startswith("report") and path.suffix == ".md")
            ):
                found.add(rel)
        for path in (root / "reports").glob("*.txt"):
            found.add(path.relative_to(root).as_posix())
        return found

    def run_ids(self, root: Path) -> dict[str, set[str]]:
        return {
            experiment.name: {d.name for d in (experiment / "students").iterdir() if d.is_dir()}
            for experiment in sorted((root / "runs").iterdir())
            if (experiment / "students").is_dir()
        }

    def run(self) -> int:
        for root in (self.before, self.after):
            if not (root / "runs").is_dir():
                print(f"error: {root}/runs does not exist", file=sys.stderr)
                return 2
        ids_a, ids_b = self.run_ids(self.before), self.run_ids(self.after)
        if set(ids_a) != set(ids_b):
            self.mismatch("runs/", "experiments", sorted(ids_a), sorted(ids_b))
        for experiment in sorted(set(ids_a) & set(ids_b)):
            only_a, only_b = ids_a[experiment] - ids_b[experiment], ids_b[experiment] - ids_a[experiment]
            if only_a or only_b:
                self.mismatch(f"runs/{experiment}/students/", "run ids", sorted(only_a), sorted(only_b))
        files_a, files_b = self.compared_files(self.before), self.compared_files(self.after)
        for rel in sorted(files_a - files_b):
            self.mismatch(rel, "file", "present", "<absent>")
        for rel in sorted(files_b - files_a):
            self.mismatch(rel, "file", "<absent>", "present")
        for rel in sorted(files_a & files_b):
            self.files += 1
            name = Path(rel).name
            if name.endswith(".csv"):
                self.compare_csv(rel)
            elif name.endswith(".json"):
                self.compare_json(rel)
            elif rel.startswith("reports/"):
                self.compare_text(rel, MASKED_TEXT)
            elif name.endswith(".md"):
                self.compare_text(rel, MASKED_MARKDOWN)
            else:
                self.compare_text(rel)
        runs = sum(len(v) for v in ids_a.values())
        print()
        print("masked values skipped: " + (", ".join(f"{k} x{v}" for k, v in sorted(self.masked_counts.items())) or "none"))
        if self.unmasked_timing:
            print("note: compared, but named like a varying field: " + ", ".join(sorted(self.unmasked_timing)))
        verdict = "MATCH" if self.mismatches == 0 else f"{self.mismatches} MISMATCHES"
        print(f"{verdict}: {self.files} files compared, {len(ids_a)} experiments, {runs} student runs")
        return 0 if self.mismatches == 0 else 1


def flatten(value, prefix: str = "") -> dict[str, str]:
    """Dotted path -> the leaf's exact JSON text (lists by index)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        if not value:
            out[prefix] = "{}"
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        if not value:
            out[prefix] = "[]"
        return out
    return {prefix: json.dumps(value)}


def print_masks() -> None:
    print("NOT COMPARED (masked as legitimately varying between runs):")
    for file, columns in MASKED_CSV_COLUMNS.items():
        for column, why in columns.items():
            print(f"  {file} column {column!r}: {why}")
    for file, keys in MASKED_JSON_KEYS.items():
        for key, why in keys.items():
            print(f"  {file} key {key!r}: {why}")
    for pattern, replacement, why in MASKED_TEXT:
        print(f"  reports/*.txt and report*.md text /{pattern.pattern}/ -> {replacement!r}: {why}")
    for pattern, replacement, why in MASKED_MARKDOWN[len(MASKED_TEXT):]:
        print(f"  report*.md text /{pattern.pattern}/ -> {replacement!r}: {why}")
    print(f"  everywhere: the absolute OUT_DIR path -> {OUT_DIR_PLACEHOLDER!r}")
    print("  files never compared: model.pt, checkpoint.pt, cache/, *.png, *.html, owner.json, logs/")
    print()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (Path(arg).resolve() for arg in sys.argv[1:])
    print(f"before: {before}\nafter:  {after}\n")
    print_masks()
    return Comparison(before, after).run()


if __name__ == "__main__":
    sys.exit(main())
