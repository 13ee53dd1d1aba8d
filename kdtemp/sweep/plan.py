"""The sweep's grid: which student runs exist, what identifies each one, and which train together.

A run id is a readable prefix plus a hash of everything that changes the run's numbers, and of
nothing else: growing the grid, renaming the experiment or moving the runs dir keeps every id, so
finished runs are recognised and skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, cast

from kdtemp.config.model_specs import training_identity
from kdtemp.config.schema import ExperimentConfig
from kdtemp.methods.registry import resolve_methods, source_digest
from kdtemp.store.files import file_fingerprint
from kdtemp.store.records import BASELINE
from kdtemp.teachers.loading import teacher_paths, teachers_fingerprint
from kdtemp.temperature.base import (
    CTKD,
    LOGIT_STD,
    PLAIN_KD,
    ScheduleBase,
    epoch_temperatures,
    temperature_table,
)
from kdtemp.temperature.schedules import LearnableSchedule

RUN_FORMAT = 2
"""2: every epoch evaluated on a validation split too (metrics.csv's val_ columns), the best epoch chosen
on it; runs of format 1 are not resumed into the new columns."""
GRID_AXES = ("schedule", "t0", "alpha", "seed", "generation", "parent")
"""Identity keys that place a run in the grid; the rest of its identity is its setting (what the report
may average over seeds and compare across temperatures)."""
KD_ONLY = ("hint", "methods")
"""Identity keys only distilled runs carry: the no-KD baseline trains without them, so a baseline pairs
with every distilled run whose setting differs from its own in these keys alone."""


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One student run of the grid."""

    run_id: str
    schedule: ScheduleBase | None
    """None for the no-KD baseline."""
    schedule_label: str
    t0: float | None
    alpha: float
    seed: int
    identity: dict[str, Any] = field(repr=False)
    generation: int = 1
    parent: str | None = None
    """The run whose student this one distils from (born-again generations 2 and later)."""
    prefix: str = ""
    """The readable part of run_id, without the hash."""

    @property
    def is_baseline(self) -> bool:
        return self.schedule is None

    def columns(self) -> dict[str, Any]:
        """The run-describing columns of its metrics rows."""
        return {
            "run_id": self.run_id,
            "schedule": self.schedule_label,
            "t0": self.t0,
            "alpha": self.alpha,
            "seed": self.seed,
            "generation": self.generation,
        }


def schedule_labels(schedules: list[ScheduleBase]) -> list[str]:
    """A table name per schedule: its label, else its name (a user's function: the function's name),
    plus its parameters when the name repeats."""
    names = [s.display_name for s in schedules]
    labels = []
    for schedule in schedules:
        name = schedule.display_name
        if schedule.label:
            labels.append(schedule.label)
        elif names.count(name) == 1:
            labels.append(name)
        else:
            params = schedule.model_dump(exclude={"name", "label"}, exclude_defaults=True)
            suffix = "-".join(f"{key}{_compact(value)}" for key, value in params.items())
            labels.append(f"{name}-{suffix}" if suffix else name)
    if len(set(labels)) != len(labels):
        from kdtemp.errors import ConfigError

        raise ConfigError(
            "kd.schedules lists the same schedule twice; remove the repeat or give each a distinct label"
        )
    return labels


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")).replace('"', "")


def _token(value: float) -> str:
    return f"{value:g}".replace("+", "")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def shared_identity(config: ExperimentConfig, teacher_fingerprint: str) -> dict[str, Any]:
    """What every run of the sweep shares and that changes its numbers.

    Method switches enter only when on, so turning none of them on keeps plain-KD run ids stable.
    """
    identity: dict[str, Any] = {
        "format": RUN_FORMAT,
        "dataset": config.data.dataset,
        "validation": [config.data.val_fraction, config.data.split_seed],
        "augment": config.data.augment,
        "batch_size": config.student_batch_size(),
        "student": training_identity(config.student),
        "teacher": teacher_fingerprint,
        "clip_grad_norm": config.train.clip_grad_norm,
        "amp": config.train.amp,
    }
    if config.kd.feature_weight > 0:
        layers = config.kd.feature_layers.model_dump() if config.kd.feature_layers else None
        identity["hint"] = {"weight": config.kd.feature_weight, "layers": layers}
    if config.kd.methods:
        identity["methods"] = [
            {"name": method.name, "source_sha256": source_digest(method)}
            for method in resolve_methods(config.kd.methods)
        ]
    return identity


def run_setting(identity: dict[str, Any]) -> dict[str, Any]:
    """A run's identity without its grid axes: runs of one setting differ only in schedule, t0, alpha,
    seed and generation, so the report may average and pair them."""
    return {key: value for key, value in identity.items() if key not in GRID_AXES}


def baseline_setting(setting: dict[str, Any]) -> dict[str, Any]:
    """The setting of the no-KD baseline a run pairs with: its own, less the keys a baseline ignores."""
    return {key: value for key, value in setting.items() if key not in KD_ONLY}


def make_run_id(prefix: str, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{_safe(prefix)}-{digest}"


def plan_runs(config: ExperimentConfig, teacher_fingerprint: str) -> list[RunSpec]:
    """Every (schedule, alpha, t0, seed) of the grid, then one baseline per seed when kd.baseline is on.

    A cell whose temperature curve an earlier schedule's cell has (grid_cells' same_as) is not planned:
    it would train the same numbers again; the report shows those runs under both labels.

    A schedule of absolute temperatures (`stages`) runs once per seed with t0 = its first T. A user's
    schedule is imported and tried first (`check`), so a broken one is refused before anything is written.
    """
    shared = shared_identity(config, teacher_fingerprint)
    runs: list[RunSpec] = []
    for schedule in config.kd.schedules:
        schedule.check(config.student.epochs)
    for cell in grid_cells(config):
        if cell.same_as is None:  # else the same runs as an earlier schedule's
            runs += cell_runs(
                shared, cell.schedule, cell.label, cell.t0, cell.alpha, config.kd.seeds, config.student.epochs
            )
    runs += born_again(runs, config.kd.generations)
    if config.kd.baseline:
        runs += baseline_runs(shared, config.kd.seeds)
    return runs


PROBE_STEPS = 64
"""Steps per epoch at which a step-granularity schedule is checked for a constant curve."""


def plain_curve(schedule: ScheduleBase, t0: float, epochs: int) -> tuple[float, ...] | None:
    """A plain-KD schedule's temperatures per epoch, when they are all its runs train at whatever the
    steps per epoch (epoch granularity, or a constant curve); None otherwise (CTKD, logit-std, curves
    that change within an epoch). Two cells with the same plain curve train the same numbers."""
    if schedule.method != PLAIN_KD:
        return None
    curve = tuple(epoch_temperatures(schedule, t0, epochs))
    if schedule.granularity == "step":
        table = temperature_table(schedule, t0, epochs, PROBE_STEPS)
        if not bool((table == table[0]).all()) or float(table[0]) != curve[0]:
            return None
    return curve


@dataclass(frozen=True)
class SameCurve:
    """A grid cell not trained because an earlier schedule's cell has its temperature curve: the report
    shows that cell's runs under this label too."""

    schedule: str
    """The label of the cell not trained."""
    same_as: str
    """The label of the schedule whose runs it shares."""
    t0: float
    alpha: float


@dataclass(frozen=True)
class GridCell:
    """One (schedule, alpha, t0) of the grid."""

    schedule: ScheduleBase
    label: str
    alpha: float
    t0: float
    same_as: str | None = None
    """The label of an earlier schedule with this cell's temperature curve: its runs are this cell's."""


def grid_cells(config: ExperimentConfig) -> list[GridCell]:
    """Every (schedule, alpha, t0) of the grid in table order, each marked with the earlier schedule whose
    runs it shares when their temperature curves are equal (linear or cosine at t0 = 1 are constant T = 1)."""
    epochs = config.student.epochs
    labels = schedule_labels(list(config.kd.schedules))
    first_with: dict[tuple, str] = {}
    cells = []
    for schedule, label in zip(config.kd.schedules, labels, strict=False):
        for alpha in config.kd.alpha_grid():
            for t0 in schedule.grid_t0s(config.kd.temperatures):
                curve = plain_curve(schedule, float(t0), epochs)
                first = label if curve is None else first_with.setdefault((curve, alpha), label)
                cells.append(GridCell(schedule, label, alpha, float(t0), None if first == label else first))
    return cells


def same_curve_cells(config: ExperimentConfig) -> list[SameCurve]:
    """The cells plan_runs leaves out: their runs are an earlier schedule's."""
    return [
        SameCurve(cell.label, cell.same_as, cell.t0, cell.alpha)
        for cell in grid_cells(config)
        if cell.same_as is not None
    ]


def cell_runs(
    shared: dict[str, Any],
    schedule: ScheduleBase,
    label: str,
    t0: float,
    alpha: float,
    seeds: list[int],
    epochs: int,
) -> list[RunSpec]:
    """The runs of one grid cell (schedule, t0, alpha), one per seed: the sweep's and the search's."""
    schedule_params = schedule.identity(epochs)
    runs = []
    for seed in seeds:
        identity = {**shared, "schedule": schedule_params, "t0": t0, "alpha": alpha, "seed": seed}
        prefix = (
            f"{label}-a{_token(alpha)}-s{seed}"
            if schedule.absolute
            else f"{label}-T{_token(t0)}-a{_token(alpha)}-s{seed}"
        )
        runs.append(
            RunSpec(make_run_id(prefix, identity), schedule, label, t0, alpha, seed, identity, prefix=prefix)
        )
    return runs


def baseline_runs(shared: dict[str, Any], seeds: list[int]) -> list[RunSpec]:
    """One no-KD run per seed (schedule 'none', alpha 0); the baseline takes no hint or KD method either."""
    baseline_identity = baseline_setting(shared)
    runs = []
    for seed in seeds:
        identity = {**baseline_identity, "schedule": None, "t0": None, "alpha": 0.0, "seed": seed}
        prefix = f"baseline-s{seed}"
        runs.append(
            RunSpec(make_run_id(prefix, identity), None, BASELINE, None, 0.0, seed, identity, prefix=prefix)
        )
    return runs


def born_again(first_generation: list[RunSpec], generations: int) -> list[RunSpec]:
    """Generations 2..N of every distilled run (Furlanello et al. 2018): same schedule, t0, alpha and
    seed, each distilled from the previous generation's student."""
    later = []
    for root in first_generation:
        parent = root
        for generation in range(2, generations + 1):
            identity = {**parent.identity, "generation": generation, "parent": parent.run_id}
            prefix = f"{root.prefix}-g{generation}"
            parent = RunSpec(
                make_run_id(prefix, identity),
                root.schedule,
                root.schedule_label,
                root.t0,
                root.alpha,
                root.seed,
                identity,
                generation,
                parent.run_id,
                prefix,
            )
            later.append(parent)
    return sorted(later, key=lambda run: run.generation)


def group_runs(runs: list[RunSpec], max_size: int | None, across_seeds: bool) -> list[list[RunSpec]]:
    """Lockstep groups, each cut into chunks of at most `max_size`.

    Runs of one seed share init, batch order, augmentation and dropout masks, so they always group.
    Runs of several seeds group too when `across_seeds` (students without dropout): each member then
    draws its own seed's batch order and augmentation, exactly as it would alone.
    """
    ordered = sorted(runs, key=lambda run: run.seed)
    if len({run.generation for run in runs}) > 1:
        raise ValueError("a group holds one generation: plan generations one after another")
    if across_seeds:
        batches = [ordered]
    else:
        batches = [list(same_seed) for _, same_seed in groupby(ordered, key=lambda run: run.seed)]
    groups: list[list[RunSpec]] = []
    for members in batches:
        size = max_size or len(members)
        groups.extend(members[i : i + size] for i in range(0, len(members), size))
    return [group for group in groups if group]


def uses_standardized_logits(run: RunSpec) -> bool:
    return run.schedule is not None and run.schedule.method == LOGIT_STD


def learnable_schedule(run: RunSpec) -> LearnableSchedule | None:
    """The schedule of a run whose temperature CTKD trains, else None."""
    if run.schedule is None or run.schedule.method != CTKD:
        return None
    return cast(LearnableSchedule, run.schedule)


def planned_runs(config: ExperimentConfig) -> list[RunSpec]:
    """The grid's runs from the config and the teachers' checkpoint files alone: no data, no models."""
    fingerprints = [file_fingerprint(path) for path in teacher_paths(config)]
    return plan_runs(config, teachers_fingerprint(fingerprints, config))
