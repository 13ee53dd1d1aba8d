"""Run a script's checks one by one, each in its own try/except, and keep a JSON of what each reached.

A GPU session is short and may be cut off: every check's outcome (pass, fail, error with its message,
or skipped with the reason) is written to the JSON as soon as it is known, so a timeout still leaves
every finished check on disk. One check that breaks never stops the next one.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PASS, FAIL, ERROR, SKIPPED = "pass", "fail", "error", "skipped"


class Skip(Exception):
    """Raised by a check that cannot run here (no CUDA, an API this version lacks, missing data)."""


@dataclass
class Outcome:
    status: str
    message: str = ""
    details: dict = field(default_factory=dict)


def verdict(ok: bool, message: str, **details) -> Outcome:
    """PASS or FAIL with one line saying what was measured."""
    return Outcome(PASS if ok else FAIL, message, details)


def default_out(name: str) -> Path:
    """--out's default: $OUT when set (the GPU machine's result folder), else runs/NAME."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("runs") / name


def _plain(value):
    """JSON-safe: non-finite floats as strings, anything unknown as its str."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Checklist:
    """The checks of one script run, saved to `path` after each one."""

    def __init__(self, script: str, path: Path, meta: dict, budget_s: float | None = None,
                 cleanup: Callable[[], None] | None = None):
        self.path = path
        self.record = {"script": script, "meta": meta, "checks": [], "finished": False}
        self.deadline = None if budget_s is None else time.perf_counter() + budget_s
        self.cleanup = cleanup
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def run(self, name: str, check: Callable[[], Outcome]) -> Outcome:
        started = time.perf_counter()
        if self.deadline is not None and started > self.deadline:
            outcome = Outcome(SKIPPED, "skipped: the script's time budget is spent")
        else:
            try:
                outcome = check()
            except Skip as reason:
                outcome = Outcome(SKIPPED, f"skipped: {reason}")
            except Exception as exc:  # a broken check is recorded, and the next one runs
                outcome = Outcome(ERROR, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                  {"traceback": traceback.format_exc(limit=-6)})
            finally:
                if self.cleanup is not None:
                    self.cleanup()
        entry = {"name": name, "status": outcome.status, "message": outcome.message,
                 "seconds": round(time.perf_counter() - started, 2), "details": outcome.details}
        self.record["checks"].append(_plain(entry))
        self.save()
        print(f"{name}: {outcome.status} ({entry['seconds']:.1f}s) {outcome.message}", flush=True)
        return outcome

    def note(self, key: str, value) -> None:
        """A result outside any check (a script's summary figures), saved at once."""
        self.record[key] = _plain(value)
        self.save()

    def finish(self) -> None:
        self.record["finished"] = True
        self.save()

    def save(self) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.record, indent=2))
        os.replace(temporary, self.path)

    @property
    def broken(self) -> bool:
        """Whether any check failed or errored: the script's exit code."""
        return any(c["status"] in (FAIL, ERROR) for c in self.record["checks"])

    def table(self) -> str:
        lines = ["| check | status | seconds | message |", "|---|---|---:|---|"]
        for c in self.record["checks"]:
            message = c["message"].replace("|", "/")
            lines.append(f"| {c['name']} | {c['status']} | {c['seconds']:.1f} | {message} |")
        return "\n".join(lines)
