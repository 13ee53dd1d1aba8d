"""Where a search's Optuna study lives, and opening it: a journal file under runs/<name>/search/ (append-only
and locked, so several workers on one filesystem, local or the jobs of a Slurm array, share it), or an
RDB URL (search.storage). The study remembers the space it searches, so a changed grid is refused
rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import ConfigError
from kdtemp.search.pruning import build_pruner, build_sampler
from kdtemp.search.space import enqueue_grid
from kdtemp.store.layout import ExperimentLayout

JOURNAL = "journal.log"
SPACE_ATTR = "kdtemp_space"


def journal_path(layout: ExperimentLayout) -> Path:
    return layout.search_dir / JOURNAL


def storage_for(config: ExperimentConfig, layout: ExperimentLayout) -> optuna.storages.BaseStorage | str:
    """The journal file storage, or the RDB URL of search.storage."""
    if config.search.storage is not None:
        return config.search.storage
    layout.search_dir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal_path(layout))))


def space_record(config: ExperimentConfig, shared: dict) -> dict:
    """What makes two searches the same study: the grid (or ranges), seeds, epochs, pruner, and the setting
    every run shares (student, teacher, data: `shared`, plan.shared_identity)."""
    search = config.search
    setting = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "setting": setting,
        "schedules": [s.model_dump(mode="json") for s in config.kd.schedules],
        "temperatures": list(config.kd.temperatures),
        "alphas": config.kd.alpha_grid(),
        "temp_range": search.temp_range,
        "alpha_range": search.alpha_range,
        "seeds": list(config.kd.seeds),
        "epochs": config.student.epochs,
        "pruner": [search.pruner, search.reduction_factor, search.first_rung(config.student.epochs)],
        "sampler": [search.sampler, search.sampler_seed] if search.continuous else None,
    }


@contextmanager
def setup_lock(layout: ExperimentLayout) -> Iterator[None]:
    """Held while a worker creates the study or asks for trials, so two workers never enqueue the grid
    twice or ask past its end."""
    layout.search_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(layout.search_dir / "setup.lock")):
        yield


def open_study(config: ExperimentConfig, layout: ExperimentLayout, shared: dict) -> optuna.Study:
    """The experiment's study, created (with a finite grid's cells enqueued) on first use."""
    optuna.logging.set_verbosity(logging.WARNING)
    storage = storage_for(config, layout)
    space = json.loads(json.dumps(space_record(config, shared)))
    with setup_lock(layout):
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=config.name,
                direction="maximize",
                sampler=build_sampler(config.search),
                pruner=build_pruner(config.search, config.student.epochs),
                load_if_exists=True,
            )
        except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as exc:
            raise ConfigError(
                f"search.storage {config.search.storage!r}: {exc}; give a valid Optuna RDB URL"
            ) from None
        known = study.user_attrs.get(SPACE_ATTR)
        if known is None:
            if not config.search.continuous:  # the cells first: a process killed here leaves no mark
                enqueue_grid(study, config)
            study.set_user_attr(SPACE_ATTR, space)
        elif known != space:
            raise ConfigError(
                f"the search study of {config.name} was made with other {_changes(known, space)}: run it "
                f"with the same options, or give another --name (its journal: {journal_path(layout)})"
            )
    return study


def _changes(known: dict, space: dict) -> str:
    """What differs from the study's record, with both values; the shared setting is a digest, so it is
    named only when nothing else tells the difference."""
    changed = sorted(key for key in space if known.get(key) != space.get(key))
    listed = [
        f"{key} ({known.get(key)} in the study, {space.get(key)} now)" for key in changed if key != "setting"
    ]
    return ", ".join(listed) or "student, teacher or data settings"
