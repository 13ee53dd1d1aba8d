"""No work twice over a prefix: runs that have trained identically so far share one group member.

At epoch granularity constant, linear and cosine of one t0 all train their first epoch at T = t0, so
with one seed and alpha they are the same run until their curves part. A search trains one member for
them (the first run of the slot) and records its rows, checkpoints and logs under every run of the
slot; when their temperatures part, or the trained run is pruned and another goes on, the member's
state is copied into each part, which then continues exactly as it would have alone (batch order and
dropout are drawn from (seed, epoch); tests/search). search/shared/<run_id>.json lists the epochs a run
was recorded from another's member, so the budget counts only what was trained.

Runs share only when nothing else of theirs differs: seed, alpha, logit standardisation, whether they
distil, and no further KD method nor a learnable temperature (whose state is their own).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kdtemp.engine.loop import Member
from kdtemp.store.files import atomic_write_json
from kdtemp.sweep.plan import RunSpec


def steps_key(member: Member, start: int, stop: int) -> tuple | None:
    """What a member trains with over steps [start, stop); None when it never shares."""
    if member.methods or member.learnable is not None:
        return None
    return (
        member.seed,
        member.alpha,
        member.standardize,
        member.distills,
        tuple(member.temperatures[start:stop].tolist()),
    )


def slots(
    runs: Sequence[RunSpec], members: Sequence[Member], epoch: int, steps_per_epoch: int, start_epoch: int = 0
) -> list[list[RunSpec]]:
    """`runs` in slots of those that train identically over epochs [start_epoch, epoch], in run order."""
    keyed: dict[object, list[RunSpec]] = {}
    for index, (run, member) in enumerate(zip(runs, members, strict=True)):
        key = steps_key(member, start_epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        keyed.setdefault(("alone", index) if key is None else key, []).append(run)
    return list(keyed.values())


def ledger_path(search_dir: Path, run_id: str) -> Path:
    return search_dir / "shared" / f"{run_id}.json"


def record_shared(search_dir: Path, run_id: str, epoch: int, trained_by: str) -> None:
    """Epoch `epoch` (0-based) of `run_id` was recorded from `trained_by`'s member."""
    path = ledger_path(search_dir, run_id)
    entries = [entry for entry in _entries(path) if entry["epoch"] != epoch]
    entries.append({"epoch": epoch, "trained_by": trained_by})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, sorted(entries, key=lambda entry: entry["epoch"]))


def shared_epochs(search_dir: Path, run_id: str, epochs_done: int) -> int:
    """How many of a run's first `epochs_done` epochs another run's member trained."""
    return sum(1 for entry in _entries(ledger_path(search_dir, run_id)) if entry["epoch"] < epochs_done)


def forget_shared(search_dir: Path, run_id: str, from_epoch: int) -> None:
    """A run restarted at `from_epoch` (its later rows gone) trains those epochs itself."""
    path = ledger_path(search_dir, run_id)
    if path.exists():
        kept = [entry for entry in _entries(path) if entry["epoch"] < from_epoch]
        atomic_write_json(path, kept)


def _entries(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []
