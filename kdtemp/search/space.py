"""What a trial is: one grid cell (schedule, t0, alpha) with all its seeds. A finite grid is the sweep's
cells, each enqueued once (cells that share another's temperature curve are left out, as the sweep
leaves them out); a continuous space samples t0 on a log scale and alpha from their ranges.
"""

from __future__ import annotations

import optuna

from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import ConfigError
from kdtemp.sweep.plan import GridCell, grid_cells, schedule_labels

CONTINUOUS_TRIALS = 20
"""Trials of a continuous space when search.trials is not given."""


def finite_cells(config: ExperimentConfig) -> list[GridCell]:
    """The grid's cells a search tries, each once, in table order."""
    return [cell for cell in grid_cells(config) if cell.same_as is None]


def check_space(config: ExperimentConfig) -> None:
    """Refuse, in one line, a space a search cannot run."""
    search = config.search
    if config.data.val_fraction == 0:
        raise ConfigError(
            "kdtemp search prunes and chooses on validation accuracy: set data.val_fraction above 0 "
            "(e.g. --set data.val_fraction=0.1)"
        )
    if config.kd.generations > 1:
        raise ConfigError("kdtemp search trains one generation: set kd.generations to 1, or use kdtemp sweep")
    if search.temp_range is not None:
        absolute = [s.display_name for s in config.kd.schedules if s.absolute]
        if absolute:
            raise ConfigError(
                f"--temp-range searches t0, which {', '.join(absolute)} ignores: search it as a grid "
                "(without --temp-range) or leave it out of --schedules"
            )


def total_trials(config: ExperimentConfig) -> int:
    if config.search.continuous:
        return config.search.trials or CONTINUOUS_TRIALS
    return len(finite_cells(config))


def grid_params(cell: GridCell) -> dict:
    return {"schedule": cell.label, "t0": cell.t0, "alpha": cell.alpha}


def enqueue_grid(study: optuna.Study, config: ExperimentConfig) -> None:
    """Every cell of a finite grid as a waiting trial, once: cells a trial of the study already holds
    (a process killed while enqueuing) are not enqueued again."""
    held = set()
    for trial in study.get_trials(deepcopy=False):
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        if has_cell(params):  # a process killed between suggest calls left part of a cell: not held
            held.add((params["schedule"], float(params["t0"]), float(params["alpha"])))
    for cell in finite_cells(config):
        if (cell.label, cell.t0, cell.alpha) not in held:
            study.enqueue_trial(grid_params(cell))


def suggest_cell(trial: optuna.Trial, config: ExperimentConfig) -> GridCell:
    """The trial's cell: its schedule, t0 and alpha, suggested (or read from its enqueued params)."""
    search, kd = config.search, config.kd
    labels = schedule_labels(list(kd.schedules))
    by_label = dict(zip(labels, kd.schedules, strict=True))
    if search.continuous:
        label = trial.suggest_categorical("schedule", labels)
        t0 = (
            trial.suggest_float("t0", *search.temp_range, log=True)
            if search.temp_range is not None
            else trial.suggest_categorical("t0", sorted({float(t) for t in kd.temperatures}))
        )
        alpha = (
            trial.suggest_float("alpha", *search.alpha_range)
            if search.alpha_range is not None
            else trial.suggest_categorical("alpha", kd.alpha_grid())
        )
        return GridCell(by_label[label], label, float(alpha), float(t0))
    cells = finite_cells(config)
    params = {
        "schedule": trial.suggest_categorical("schedule", labels),
        "t0": trial.suggest_categorical("t0", sorted({cell.t0 for cell in cells})),
        "alpha": trial.suggest_categorical("alpha", sorted({cell.alpha for cell in cells})),
    }
    return cell_of(params, config)


CELL_PARAMS = ("schedule", "t0", "alpha")
"""What a trial's params hold once it has been asked: the cell it trains."""


def has_cell(params: dict) -> bool:
    """Whether a trial's params name its cell: another process may be between its suggest calls."""
    return all(name in params for name in CELL_PARAMS)


def cell_of(params: dict, config: ExperimentConfig) -> GridCell:
    """The cell of a finished or running trial, from its params."""
    labels = schedule_labels(list(config.kd.schedules))
    by_label = dict(zip(labels, config.kd.schedules, strict=True))
    if params["schedule"] not in by_label:
        raise ConfigError(
            f"the study holds schedule {params['schedule']!r}, not in kd.schedules: give the grid the study "
            "was made with, or another --name"
        )
    return GridCell(
        by_label[params["schedule"]], params["schedule"], float(params["alpha"]), float(params["t0"])
    )
