"""No work twice over a prefix: runs that have trained identically so far share one group member.

At epoch granularity constant, linear and cosine of one t0 all train their first epoch at T = t0, so
with one seed and alpha they are the same run until their curves part. A search trains one member for
them (the first run of the slot) and records its rows, checkpoints and logs under every run of the
slot; when their temperatures part, or the trained run is pruned and another goes on, the member's
state is copied into each part, which then continues exactly as it would have alone (batch order and
dropout are drawn from (seed, epoch); tests/search). A run's shared_epochs.json lists the epochs it was
recorded from another's member (kdtemp.store.shared_epochs), so the budget counts only what was trained;
those rows carry the trained run's epoch_seconds, so summing wall time over runs counts that time twice.

Runs share only when nothing else of theirs differs: seed, alpha, logit standardisation, whether they
distil, and no further KD method nor a learnable temperature (whose state is their own).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from kdtemp.engine.loop import Member
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


TRAINED_COLUMNS = ("train_loss", "val_loss", "val_acc")
"""Cells of a metrics row that two runs share only when they trained identically (float losses)."""


def training_digests(rows_per_run: Sequence[Sequence[dict[str, str]]]) -> list[str]:
    """For each epoch every run has finished, a digest of what the runs (a trial's seeds, in order)
    recorded up to it: equal for trials that trained identically, and not for trials whose mean
    validation accuracy merely ties."""
    length = min((len(rows) for rows in rows_per_run), default=0)
    digest, digests = hashlib.sha256(), []
    for epoch in range(length):
        cells = [[rows[epoch].get(column, "") for column in TRAINED_COLUMNS] for rows in rows_per_run]
        digest.update(json.dumps(cells).encode())
        digests.append(digest.copy().hexdigest()[:16])
    return digests
