"""The library leaves the caller's global RNG alone, and its own draws are those of seeding torch globally."""

import pandas as pd
import torch
import torch.nn.functional as F
from helpers import experiment, final_metrics, write_experiment

from kdtemp.config.loading import load_config
from kdtemp.engine.randomness import DropoutStream, seeded
from kdtemp.sweep.runner import sweep
from kdtemp.teachers.training import train_teacher

SECTIONS = {"teacher": {"epochs": 1},  # the cnn teacher: dropout 0.5 by default
            "student": {"hidden": [16], "epochs": 2, "dropout": 0.2},
            "kd": {"temperatures": [2], "seeds": [0], "feature_weight": 0.5}}


def test_jobs_leave_the_callers_rng_alone_and_do_not_depend_on_it(tmp_path, data_root):
    """Seeded before a teacher training and a sweep (dropout in both, hints), the caller's generator draws
    exactly what a fresh generator of that seed draws, in its emit callback too; the runs' numbers are
    those of the same jobs run with no draws by the caller."""
    config = load_config(write_experiment(tmp_path, data_root, "drawing", **SECTIONS))
    quiet = load_config(write_experiment(tmp_path, data_root, "quiet", **SECTIONS))
    torch.manual_seed(123)
    in_emit = []

    def draw(event):  # a caller's code between events, drawing from its own generator
        in_emit.append(torch.rand(1))

    train_teacher(config, emit=draw)
    sweep(config, emit=draw)
    after = torch.rand(5)
    assert len(in_emit) > 10
    expected = torch.rand(len(in_emit) + 5, generator=torch.Generator().manual_seed(123))
    assert torch.equal(torch.cat([*in_emit, after]), expected)

    train_teacher(quiet)
    sweep(quiet)
    pd.testing.assert_frame_equal(final_metrics(experiment(tmp_path / "drawing.yaml")).drop(columns="run_id"),
                                  final_metrics(experiment(tmp_path / "quiet.yaml")).drop(columns="run_id"))


def test_a_dropout_stream_draws_the_masks_of_global_seeding():
    """Two forward passes' masks in a stream equal those after torch.manual_seed(seed); the caller's state stays."""
    inputs = torch.ones(4, 1000)
    torch.manual_seed(7)
    reference = [F.dropout(inputs, 0.5), F.dropout(inputs, 0.5)]
    torch.manual_seed(99)
    caller = torch.get_rng_state()
    stream = DropoutStream(7, torch.device("cpu"))
    drawn = []
    for _ in range(2):
        with stream.drawing():
            drawn.append(F.dropout(inputs, 0.5))
        assert torch.equal(torch.get_rng_state(), caller)
    assert all(torch.equal(a, b) for a, b in zip(drawn, reference))


def test_seeded_builds_the_init_of_global_seeding_and_restores_the_callers_state():
    torch.manual_seed(3)
    reference = torch.nn.Linear(8, 4).weight
    torch.manual_seed(11)
    caller = torch.get_rng_state()
    with seeded(3):
        built = torch.nn.Linear(8, 4).weight
    assert torch.equal(built, reference) and torch.equal(torch.get_rng_state(), caller)
