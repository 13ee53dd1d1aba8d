"""Backend settings per device: speed flags on CUDA only, a deterministic mode, and run ids left alone."""

import os
import shutil

import pandas as pd
import pytest
import torch

from helpers import experiment, final_metrics, train_experiment, write_experiment

from kdtemp.config.loading import load_config
from kdtemp.engine.device import configure_backends, full_float32, set_up_device
from kdtemp.sweep.plan import plan_runs
from kdtemp.sweep.runner import sweep


def backend_flags() -> dict:
    return {
        "benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


@pytest.fixture
def restored_flags(monkeypatch):
    """These flags are process-wide: put them back whatever a test set."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = backend_flags()
    yield saved
    torch.backends.cudnn.benchmark = saved["benchmark"]
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
    torch.use_deterministic_algorithms(saved["deterministic_algorithms"])


def test_cpu_is_left_as_it_is(restored_flags):
    assert set_up_device("cpu") == torch.device("cpu")
    assert backend_flags() == restored_flags


def test_cuda_gets_autotuning_and_tf32(restored_flags):
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    configure_backends(torch.device("cuda", 0), deterministic=False)
    assert backend_flags() == {**restored_flags, "benchmark": True, "matmul_tf32": True, "cudnn_tf32": True}


def test_deterministic_mode_on_cuda(restored_flags):
    torch.backends.cudnn.benchmark = True
    configure_backends(torch.device("cuda"), deterministic=True)
    flags = backend_flags()
    assert flags["deterministic_algorithms"] and flags["cudnn_deterministic"] and not flags["benchmark"]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_full_float32_turns_tf32_off_inside_only(restored_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with full_float32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_deterministic_key_keeps_run_ids(tmp_path, data_root):
    """train.deterministic is how a run is computed, not what it is: ids with it off, on or absent agree."""
    ids = []
    for name, train in [("absent", {}), ("off", {"deterministic": False}), ("on", {"deterministic": True})]:
        config = load_config(write_experiment(tmp_path, data_root, name, train=train))
        ids.append([run.run_id for run in plan_runs(config, "0123456789abcdef")])
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 6


def test_deterministic_sweep_on_cpu_gives_the_same_numbers(tmp_path, data_root, restored_flags):
    """Every op of a sweep has a deterministic kernel on CPU (none raises), and the numbers are unchanged."""
    sections = {"teacher": {"epochs": 1}, "student": {"hidden": [16], "epochs": 2}, "kd": {"temperatures": [2], "seeds": [0]}}
    plain = train_experiment(write_experiment(tmp_path, data_root, "plain", **sections))
    assert not torch.are_deterministic_algorithms_enabled()
    strict = write_experiment(tmp_path, data_root, "strict", train={"deterministic": True}, **sections)
    shutil.copytree(experiment(plain) / "teacher", experiment(strict) / "teacher")
    sweep(load_config(strict))
    assert torch.are_deterministic_algorithms_enabled()
    pd.testing.assert_frame_equal(final_metrics(experiment(strict)), final_metrics(experiment(plain)))
