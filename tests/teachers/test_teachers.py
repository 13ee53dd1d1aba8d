"""The teacher's cached soft targets: computed in float32 even where training runs under bf16 autocast."""

import contextlib
import shutil

import pytest
import torch
from helpers import experiment, write_experiment

from kdtemp.config.loading import load_config
from kdtemp.data.registry import load_dataset
from kdtemp.engine import loop, trainer
from kdtemp.store.files import atomic_torch_save, load_checkpoint
from kdtemp.store.layout import ExperimentLayout
from kdtemp.teachers import loading
from kdtemp.teachers.loading import load_teachers, teacher_logits
from kdtemp.teachers.training import train_teacher


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One tiny trained teacher for the module; each test copies it into an experiment of its own."""
    config = write_experiment(tmp_path_factory.mktemp("teacher"), data_root, "trained", teacher={"epochs": 1})
    train_teacher(load_config(config))
    return config


def fresh_experiment(trained, tmp_path, data_root, name):
    """The trained teacher in a new experiment without any cached logits."""
    config = write_experiment(tmp_path, data_root, name, teacher={"epochs": 1})
    shutil.copytree(experiment(trained) / "teacher", experiment(config) / "teacher")
    return load_config(config)


def cuda_like_autocast(device, enabled):
    """What engine.autocast does on CUDA (bf16 autocast), made to happen on this CPU."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def test_cached_logits_are_float32_even_with_amp(trained, tmp_path, data_root, monkeypatch):
    config = fresh_experiment(trained, tmp_path, data_root, "fp32")
    # CUDA's defaults, mimicked: amp on for the run, and autocast that really casts to bf16
    for module in (loop, trainer):  # where the engine defines autocast and where the teacher loop opens it
        monkeypatch.setattr(module, "autocast", cuda_like_autocast)
    monkeypatch.setattr(loading, "amp_enabled", lambda setting, device: True, raising=False)
    device = torch.device("cpu")
    data = load_dataset(config.data)
    teacher = load_teachers(config, data, device)[0]
    logits = teacher_logits(teacher, data, config, device)
    train, test = logits.train, logits.test

    model = teacher.model.double().eval()
    with torch.no_grad():
        reference = model(data.train_x.double())  # float64 eager forward: the exact soft-target logits
    assert train.dtype == torch.float32
    # float32 agrees to ~1e-6 relative; bf16 logits (8-bit mantissa) would be off by ~1e-2 of their size
    error = ((train.double() - reference).abs() / reference.abs().clamp_min(1.0)).max()
    assert error < 1e-4, f"cached logits are {error:.1e} off the float64 forward"
    cache = next(experiment(tmp_path / "fp32.yaml").joinpath("cache").glob("teacher-logits-*.pt"))
    record = load_checkpoint(cache)
    assert record["dtype"] == "torch.float32" and record["format"] == loading.LOGITS_FORMAT
    assert torch.equal(record["train"], train) and torch.equal(record["test"], test)
    assert torch.equal(record["val"], logits.val) and len(logits.val) == len(data.val_y)


def test_a_cache_of_the_older_format_is_recomputed(trained, tmp_path, data_root):
    """/1 caches (bf16-rounded on CUDA) are not reused: they are recomputed and rewritten as /2."""
    config = fresh_experiment(trained, tmp_path, data_root, "old")
    device = torch.device("cpu")
    data = load_dataset(config.data)
    teacher = load_teachers(config, data, device)[0]
    path = ExperimentLayout.of(config.runs_dir, config.name).teacher_logits_cache(teacher.fingerprint, "none")
    stale = torch.zeros(len(data.train_y), data.num_classes)
    atomic_torch_save({"data_fingerprint": data.fingerprint(), "train": stale,
                         "test": torch.zeros(len(data.test_y), data.num_classes)}, path)
    train = teacher_logits(teacher, data, config, device).train
    with torch.no_grad():
        reference = teacher.model.double()(data.train_x.double())
    assert torch.allclose(train.double(), reference, rtol=1e-4, atol=1e-4)
    assert load_checkpoint(path)["format"] == loading.LOGITS_FORMAT
