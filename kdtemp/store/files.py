"""Run storage: how a run's files are written and read, atomically; where they are is kdtemp.store.layout.

Every whole-file write is atomic (temp file in the same directory, fsync, rename); metrics rows are
appended whole and fsynced per epoch. A reader therefore sees a file either before or after a
write, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from kdtemp.errors import CheckpointError, RunsError, first_line
from kdtemp.store.layout import RunFiles
from kdtemp.store.records import RunSummary, Status, summary_problem

_UMASK = os.umask(0)
os.umask(_UMASK)
_RETRAINED = "the next sweep retrains the run"


# --- atomic writes -----------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any other file
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save with every tensor on the CPU, so a file written on a GPU loads anywhere without
    map_location."""
    buffer = io.BytesIO()
    torch.save(on_cpu(obj), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def on_cpu(value: Any) -> Any:
    """`value` with every tensor inside its dicts, lists and tuples moved to the CPU; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [on_cpu(item) for item in value]
    if isinstance(value, tuple):
        return tuple(on_cpu(item) for item in value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(directory: Path) -> None:
    """Fail up front, with one line, when the runs directory cannot take files."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise RunsError(
            f"cannot write to runs directory {directory} ({exc.strerror or exc}); "
            "choose another with --runs-dir"
        ) from None


# --- CSV -----------------------------------------------------------------------------------------


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def append_csv_row(path: Path, row: dict[str, Any], columns: list[str]) -> None:
    """Append one whole row (header first if the file is new), flushed and fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if new:
        writer.writerow(columns)
    writer.writerow([format_cell(row.get(column)) for column in columns])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(column)) for column in columns])
    atomic_write_text(path, buffer.getvalue())


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def keep_epochs_before(path: Path, epoch: int, columns: list[str]) -> None:
    """Drop rows of `epoch` and later, so a resumed run never shows an epoch twice.

    The file's own header decides the columns (a user's KD method adds its fields after `columns`)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) < epoch]
        header = list(reader.fieldnames or columns)
    write_csv(path, rows, header)


# --- summaries ---------------------------------------------------------------------------------


def write_summary(files: RunFiles, summary: RunSummary) -> None:
    """summary.json, written atomically, last of a run's files."""
    atomic_write_json(files.summary, summary.to_json())


def load_summary(run_dir: Path) -> RunSummary | None:
    """The run's summary.json; None when there is none (an unfinished run).

    Raises RunsError, in one line, when the file is there but is not JSON or not a RunSummary
    (a missing key, a wrong type): what `kdtemp report` and `kdtemp status` list as unreadable."""
    path = RunFiles(run_dir).summary
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunsError(f"summary.json is unreadable ({first_line(exc, 120)}); {_RETRAINED}") from None
    try:
        return RunSummary.model_validate(data)
    except ValidationError as exc:
        raise RunsError(f"summary.json is unreadable ({summary_problem(exc)}); {_RETRAINED}") from None


def read_summary(run_dir: Path) -> RunSummary | None:
    """The run's summary, or None when absent or unreadable: for the sweep and launchers, which rerun both."""
    try:
        return load_summary(run_dir)
    except RunsError:
        return None


def is_completed(run_dir: Path) -> bool:
    """summary.json says completed and metrics.csv holds every epoch, intact; anything less is rerun."""
    summary = read_summary(run_dir)
    return summary is not None and summary_is_complete(RunFiles(run_dir), summary)


def summary_is_complete(files: RunFiles, summary: RunSummary) -> bool:
    """`summary` says completed and the run's metrics.csv holds each of its epochs."""
    return summary.status == Status.COMPLETED and metrics_are_complete(files.metrics, summary.epochs)


def metrics_are_complete(path: Path, epochs) -> bool:
    """Rows for epochs 0..epochs-1, in order, each with a test accuracy: what a finished run leaves."""
    try:
        rows = read_csv_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if not isinstance(epochs, int) or len(rows) != epochs:
        return False
    for expected, row in enumerate(rows):
        try:
            if int(row.get("epoch") or -1) != expected or not 0 <= float(row.get("test_acc") or "nan") <= 1:
                return False
        except ValueError:
            return False
    return True


# --- checkpoints -------------------------------------------------------------------------------


def load_checkpoint(path: Path, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True: tensors and plain data load, anything executable is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; name only what the file asked for
        global_name = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f" (it asks for {global_name.group(1)})" if global_name else ""
        raise CheckpointError(
            f"refused to load {what} {path}: "
            "it holds Python objects beyond tensors and plain data, which could run code"
            f"{detail}; delete it and recreate it with kdtemp"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"cannot read {what} {path} ({first_line(exc, 160)}); "
            "it is truncated or not a checkpoint: delete it and recreate it"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{what} {path} is not a kdtemp checkpoint (expected a dict); delete it and recreate it"
        )
    return data


def file_fingerprint(path: Path) -> str:
    """Short content hash of a file: identifies a checkpoint whatever its path."""
    return file_sha256(path)[:16]


def file_sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks (a teacher checkpoint may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
