"""Which runs the report may average and pair: a run's *setting* is what it recorded, less the grid axes.

Two sweeps into one experiment folder (say `--epochs 5`, then `--epochs 10`) leave runs that share a
cell and a seed but not their numbers. The run id's hash covers "everything that changes the run's
numbers" (kdtemp.sweep.plan.shared_identity) and each run records that identity in config.yaml; its setting
is that identity less the grid axes (plan.GRID_AXES: schedule, t0, alpha, seed, generation, parent).
Grid lists, names, paths, launcher and environment never enter, so growing a grid keeps one setting.

A no-KD baseline ignores the KD-only keys (plan.KD_ONLY: the hint), so it pairs with every distilled
run whose setting equals its own once those keys are dropped: distilled runs with and without hints
are two settings sharing one baseline. The teacher's fingerprint stays in both (the baseline's id
carries it too), so a new teacher is a new setting.

Runs whose config.yaml is missing or predates the recorded identity share one "not recorded" setting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdtemp.store.files import read_summary
from kdtemp.store.layout import RunFiles
from kdtemp.store.records import BASELINE, RunSummary
from kdtemp.sweep import plan

if TYPE_CHECKING:
    from kdtemp.report.results import ExperimentResults

UNRECORDED = "unrecorded"
UNRECORDED_LABEL = "setting not recorded (runs without config.yaml)"
DISPLAY_NAMES = {
    # identity key -> the config key a user wrote
    "format": "run format",
    "dataset": "data.dataset",
    "augment": "data.augment",
    "batch_size": "student batch size",
    "clip_grad_norm": "train.clip_grad_norm",
    "amp": "train.amp",
    "hint.weight": "kd.feature_weight",
    "hint.layers": "kd.feature_layers",
    "teacher": "teacher fingerprint",
}
ABSENT = "off"


@dataclass(frozen=True)
class RunSetting:
    key: str
    """Canonical JSON of the run's setting, or UNRECORDED."""
    baseline_key: str
    """The key of the no-KD baseline setting this run pairs with (a baseline's own key)."""
    values: dict[str, Any]
    """The setting as {dotted config key: value}, for titles."""


def from_identity(identity: dict | None) -> RunSetting:
    if not isinstance(identity, dict):
        return RunSetting(UNRECORDED, UNRECORDED, {})
    setting = plan.run_setting(identity)
    return RunSetting(_canonical(setting), _canonical(plan.baseline_setting(setting)), _dotted(setting))


def read_run_setting(run_dir: Path, summary: RunSummary | None, depth: int = 0) -> RunSetting:
    """The setting run_dir recorded; a failed born-again child that never started has none of its own,
    so it takes its parent's (same setting by construction)."""
    identity = _recorded_identity(run_dir)
    parent = summary.parent if summary is not None else None
    if identity is None and isinstance(parent, str) and depth < 64:
        parent_dir = run_dir.parent / parent
        if parent_dir.parent == run_dir.parent and parent_dir != run_dir:
            return read_run_setting(parent_dir, read_summary(parent_dir), depth + 1)
    return from_identity(identity)


def _recorded_identity(run_dir: Path) -> dict | None:
    try:
        record = yaml.safe_load(RunFiles(run_dir).config.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    identity = record.get("identity") if isinstance(record, dict) else None
    return identity if isinstance(identity, dict) else None


def _canonical(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, separators=(",", ":"))


def _dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return {_display_name(key): value for key, value in flat.items()}


def _display_name(dotted: str) -> str:
    for identity_key, name in DISPLAY_NAMES.items():
        if dotted == identity_key or dotted.startswith(identity_key + "."):
            return name + dotted[len(identity_key) :]
    return dotted


def differing_keys(settings: list[RunSetting]) -> list[str]:
    """The dotted keys whose value is not the same in every recorded setting.

    A key that is only ever unset or absent (kd.feature_layers: None beside a setting with no hint) says
    nothing a reader needs, so it is left out unless nothing else tells the settings apart.
    """
    recorded = [s for s in settings if s.key != UNRECORDED]
    keys = sorted({key for s in recorded for key in s.values})
    values = {key: {json.dumps(s.values.get(key, ABSENT), sort_keys=True) for s in recorded} for key in keys}
    differing = [key for key in keys if len(values[key]) > 1]
    telling = [key for key in differing if values[key] - {json.dumps(ABSENT), "null"}]
    return telling or differing


def label(setting: RunSetting, keys: list[str]) -> str:
    """`student.epochs = 5`: the setting's values of the keys that tell the settings apart."""
    if setting.key == UNRECORDED:
        return UNRECORDED_LABEL
    if not keys:
        return "setting recorded in config.yaml"
    return ", ".join(f"{key} = {_value_text(key, setting.values.get(key, ABSENT))}" for key in keys)


def order_key(setting: RunSetting, keys: list[str]) -> tuple:
    """Settings sorted by their differing values, numbers as numbers (epochs 5 before 10)."""
    return (setting.key == UNRECORDED, *(_sortable(setting.values.get(key, ABSENT)) for key in keys))


def _sortable(value) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, math.inf, json.dumps(value, sort_keys=True))


def _value_text(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if key == DISPLAY_NAMES["teacher"] and value != ABSENT:
        return str(value)[:8]  # the first 8 hex digits of a fingerprint tell teachers apart
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


# --- an experiment's runs, one setting at a time --------------------------------------------------


def split_by_setting(results: ExperimentResults) -> list[tuple[str | None, ExperimentResults]]:
    """(title, results) per setting: its distilled runs and the no-KD baselines they pair with.

    With one setting, `results` itself and no title, so a one-setting experiment reports as it always did.
    """
    settings = _report_settings(results)
    if len(settings) <= 1:
        return [(None, results)]
    keys = differing_keys(settings)
    ordered = sorted(settings, key=lambda setting: order_key(setting, keys))
    return [(label(setting, keys), _restrict(results, setting)) for setting in ordered]


def _members(results: ExperimentResults) -> list[tuple[str, str]]:
    """(run id, schedule) of every completed and failed run."""
    completed = (
        list(zip(results.final["run_id"], results.final["schedule"], strict=False))
        if not results.final.empty
        else []
    )
    return completed + [(run_id, results.failed_cells[run_id][0]) for run_id, _ in results.failed]


def _report_settings(results: ExperimentResults) -> list[RunSetting]:
    """Every distilled run's setting, then each baseline setting that no distilled setting pairs with."""
    members = [(results.settings[run_id], schedule) for run_id, schedule in _members(results)]
    distilled = {setting.key: setting for setting, schedule in members if schedule != BASELINE}
    paired = {setting.baseline_key for setting in distilled.values()}
    alone = {
        setting.key: setting
        for setting, schedule in members
        if schedule == BASELINE and setting.key not in paired
    }
    return [*distilled.values(), *alone.values()]


def _belongs(run: RunSetting, schedule: str, setting: RunSetting) -> bool:
    return run.key == setting.key if schedule != BASELINE else run.baseline_key == setting.baseline_key


def pruned_run(key: str) -> str:
    """The run id of a results.pruned key (a cell shown under a second label is `<run id> as <label>`)."""
    return key.split(" as ", 1)[0]


def _restrict(results: ExperimentResults, setting: RunSetting) -> ExperimentResults:
    """The part of `results` one setting reports; unfinished and unreadable runs stay with the experiment."""
    final, curves = results.final, results.curves
    if not final.empty:
        final = final[
            [
                _belongs(results.settings[r], s, setting)
                for r, s in zip(final["run_id"], final["schedule"], strict=False)
            ]
        ]
        curves = curves[curves["run_id"].isin(final["run_id"])]
    failed = [
        (run_id, reason)
        for run_id, reason in results.failed
        if _belongs(results.settings[run_id], results.failed_cells[run_id][0], setting)
    ]
    pruned = {
        key: cell
        for key, cell in results.pruned.items()
        if _belongs(results.settings[pruned_run(key)], cell[0], setting)
    }
    sizes = results.setting_sizes.get(setting.key) or results.setting_sizes.get(setting.baseline_key) or {}
    return replace(
        results,
        final=final.reset_index(drop=True),
        curves=curves.reset_index(drop=True),
        failed=failed,
        pruned=pruned,
        unfinished=[],
        unreadable=[],
        sizes=sizes,
    )
