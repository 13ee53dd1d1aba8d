"""Born-again generations (Furlanello et al. 2018): from generation 2 on, each run distils from its
parent, its own run (same schedule, t0, alpha and seed) in the previous generation, once that finished.

The sweep trains generations one after another; this module decides which runs of a generation can
start, and gives them their parents as teachers (logits, hint features, or networks run per batch).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from kdtemp.engine.evaluation import predict_logits
from kdtemp.engine.job_setup import per_batch_teachers
from kdtemp.engine.loop import TeacherSignal
from kdtemp.engine.randomness import keeps_global_rng
from kdtemp.events import Note
from kdtemp.models.features import Hint, feature_shape, predict_features
from kdtemp.models.registry import build_model
from kdtemp.store.files import load_checkpoint, read_summary, write_summary
from kdtemp.store.records import Status
from kdtemp.sweep.plan import RunSpec
from kdtemp.sweep.recording import SweepState, run_summary


def with_finished_parents(state: SweepState, runs: list[RunSpec]) -> list[RunSpec]:
    """The runs whose parent finished; a run whose parent failed fails too, one whose parent is
    unfinished waits."""
    ready = []
    for run in runs:
        assert run.parent is not None  # generations 2..N, made by plan.born_again with their parent
        summary = read_summary(state.layout.run_dir(run.parent))
        if summary is not None and summary.status == Status.COMPLETED:
            ready.append(run)
        elif summary is not None and summary.status == Status.FAILED:
            reason = f"its parent {run.parent} failed ({summary.reason})"
            files = state.layout.run_files(run.run_id)
            write_summary(files, run_summary(state, run, files, Status.FAILED, 0, reason=reason))
            state.failed.append((run.run_id, reason))
        else:
            state.busy.append(run.run_id)
            state.emit(
                Note(
                    f"{run.run_id} waits for its parent {run.parent}, not finished yet; "
                    "run the sweep again later"
                )
            )
    return ready


def _load_student(state: SweepState, run_id: str) -> nn.Module:
    checkpoint = load_checkpoint(state.layout.run_files(run_id).model, "student model")
    model = build_model(
        state.student_spec, state.data.input_shape, state.data.num_classes, state.data.vocab_size
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(state.device).eval()


@keeps_global_rng
def parent_signal(state: SweepState, runs: list[RunSpec]) -> TeacherSignal:
    """Each member distils from its own parent: per-member logits (and features), or per-member networks."""
    parents = [_load_student(state, cast(str, run.parent)) for run in runs]  # generation 2..N: parent set
    layer = state.hint.student_layer if state.hint is not None else None
    data, batch = state.data, state.config.data.eval_batch_size
    common: dict[str, Any] = {
        "test_logits": state.signal.test_logits,
        "val_logits": state.signal.val_logits,
        "per_member": True,
        "feature_layer": layer,
    }
    if state.config.data.augment:
        networks, channels_last = per_batch_teachers(parents, state.device)
        return TeacherSignal(networks=networks, channels_last=channels_last, **common)
    logits = torch.stack([predict_logits(p, data.train_x, batch, state.device) for p in parents]).unsqueeze(1)
    features = None
    if state.hint is not None:
        features = torch.stack(
            [predict_features(p, layer, data.train_x, batch, state.device) for p in parents]
        ).unsqueeze(1)
    return TeacherSignal(train_logits=logits, train_features=features, **common)


@keeps_global_rng
def generation_hint(state: SweepState, generation: int) -> Hint | None:
    """From generation 2 on, the hint target is the parent student's own feature."""
    if state.hint is None or generation == 1:
        return state.hint
    shape = feature_shape(
        build_model(
            state.student_spec, state.data.input_shape, state.data.num_classes, state.data.vocab_size
        ),
        state.hint.student_layer,
        state.data.train_x[:2].cpu(),
        "student",
    )
    return Hint(state.hint.weight, state.hint.student_layer, shape)
