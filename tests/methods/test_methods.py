"""Ensembles, hints, born-again generations, the student's footprint and export, composed with a grid."""

import json

import pandas as pd
import pytest
import torch
import yaml
from helpers import job_events

import kdtemp.data.builtin
import kdtemp.store.files
from kdtemp.config.loading import load_config
from kdtemp.config.model_specs import MLPSpec
from kdtemp.config.schema import DataConfig
from kdtemp.data.registry import load_dataset
from kdtemp.engine.evaluation import predict_logits
from kdtemp.engine.job_setup import loop_settings
from kdtemp.engine.loop import (
    EpochDone,
    LoopSettings,
    Member,
    TeacherSignal,
    steps_per_epoch,
)
from kdtemp.errors import ConfigError
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.features import FeatureCapture, Hint, build_regressor
from kdtemp.models.registry import build_model
from kdtemp.sweep.runner import sweep
from kdtemp.teachers.training import train_teacher
from kdtemp.temperature.base import temperature_table

COMPOSED = {
    "teachers": [{"channels": [8, 16], "hidden": 32, "epochs": 2}, {"channels": [8], "hidden": 32, "epochs": 2}],
    "student": {"hidden": [32], "epochs": 2},
    "kd": {"temperatures": [2], "seeds": [0, 1], "schedules": ["constant", "linear"], "ensemble": "mean_probs",
           "feature_weight": 1.0, "generations": 2},
}


@pytest.fixture(scope="module")
def composed(tmp_path_factory, data_root):
    """Two CNN teachers (mean_probs), hints, two generations, two schedules, two seeds: built once."""
    directory = tmp_path_factory.mktemp("composed")
    tree = {"runs_dir": str(directory / "runs"), "data": {"root": str(data_root), "batch_size": 256}, **COMPOSED}
    path = directory / "composed.yaml"
    path.write_text(yaml.safe_dump(tree))
    config = load_config(path)
    teacher_events = job_events(train_teacher, config)
    sweep_events = job_events(sweep, config)
    return config, kdtemp.store.layout.ExperimentLayout.of(config.runs_dir, config.name), teacher_events, sweep_events


def summaries(layout):
    return {d.name: json.loads((d / "summary.json").read_text()) for d in layout.run_dirs()}


def test_ensemble_teachers_are_trained_and_combined(composed, data_root):
    config, layout, teacher_events, _ = composed
    assert (layout.teacher_dir / "teacher-0" / "model.pt").exists() and (layout.teacher_dir / "teacher-1" / "model.pt").exists()
    labels = [event.label for event in teacher_events if type(event).__name__ == "TeacherResult"]
    assert labels == ["teacher-0", "teacher-1"]
    record = json.loads(layout.ensemble_record.read_text())
    data = load_dataset(DataConfig(root=data_root))
    probabilities = []
    for index, spec in enumerate(config.teacher_specs()):
        model = build_model(spec, data.input_shape, 10)
        model.load_state_dict(torch.load(layout.teacher_dir / f"teacher-{index}" / "model.pt", weights_only=True)["state_dict"])
        model.eval()
        with torch.no_grad():
            probabilities.append(torch.softmax(model(data.test_x), -1))
    by_hand = float(((probabilities[0] + probabilities[1]) / 2).argmax(-1).eq(data.test_y).float().mean())
    assert record["test_acc"] == pytest.approx(by_hand, abs=1e-6)
    assert record["test_acc"] * len(data.test_y) == pytest.approx(round(by_hand * len(data.test_y)), abs=1e-9)  # a count
    assert [t["id"] for t in record["teachers"]] == ["teacher-0", "teacher-1"]
    assert [s.seed for s in config.teacher_specs()] == [0, 1]  # members differ by seed by default


def test_every_run_completes_and_names_its_teachers(composed):
    _, layout, _, sweep_events = composed
    result = sweep_events[-1]
    assert result.completed == 10 and not result.failed  # 2 schedules x 2 seeds x 2 generations + 2 baselines
    for run_id, summary in summaries(layout).items():
        assert summary["status"] == "completed"
        if summary["schedule"] == "none":
            assert summary["teachers"] == [] and summary["generation"] == 1
        elif summary["generation"] == 1:
            assert [t["id"] for t in summary["teachers"]] == ["teacher-0", "teacher-1"]
        else:
            parent = summaries(layout)[summary["parent"]]
            assert summary["teachers"] == [{"id": summary["parent"], "test_acc": parent["final"]["test_acc"]}]
            assert parent["generation"] == 1 and parent["schedule"] == summary["schedule"] and parent["seed"] == summary["seed"]


def test_metrics_carry_generation_and_the_hint_term(composed):
    _, layout, _, _ = composed
    for run_dir in layout.run_dirs():
        frame = pd.read_csv(run_dir / "metrics.csv")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (frame["generation"] == summary["generation"]).all()
        if summary["schedule"] == "none":
            assert frame["train_feature"].isna().all()  # the baseline takes no hint
        else:
            assert (frame["train_feature"] > 0).all()


def test_generation_two_is_distilled_from_generation_one(composed, data_root):
    """Retrain one generation-2 run by hand from its parent's model.pt: the same numbers come out."""
    config, layout, _, _ = composed
    child_id, child = next((k, s) for k, s in summaries(layout).items() if s["generation"] == 2 and s["schedule"] == "constant")
    data = load_dataset(DataConfig(root=data_root))
    parent = build_model(config.student, data.input_shape, 10)
    parent.load_state_dict(torch.load(layout.run_dir(child["parent"]) / "model.pt", weights_only=True)["state_dict"])
    device = torch.device("cpu")
    parent_logits = predict_logits(parent, data.train_x, 1000, device)
    capture = FeatureCapture(parent, None)
    parent.eval()
    with torch.no_grad():
        parent(data.train_x)
    features = capture.pop()
    spe = steps_per_epoch(len(data.train_y), config.student_batch_size())
    member = Member(child["seed"], child["alpha"], temperature_table(config.kd.schedules[0], child["t0"], 2, spe), t0=child["t0"])
    # test logits only feed agreement/KL, which are not compared here
    signal = TeacherSignal(test_logits=parent_logits[None, :1000], train_logits=parent_logits[None, None],
                           train_features=features[None, None], per_member=True)
    group = StudentGroup(lambda: build_model(config.student, data.input_shape, 10), [member], data, signal,
                         loop_settings(config, config.student, child["seed"], device),
                         Hint(1.0, None, tuple(features.shape[1:])))
    with group:
        rows = [event.metrics[0] for event in group.run() if isinstance(event, EpochDone)]
    recorded = pd.read_csv(layout.run_dir(child_id) / "metrics.csv")
    for column in ("train_loss", "train_kd", "train_feature", "test_acc", "test_loss"):
        assert rows[-1][column] == pytest.approx(recorded[column].iloc[-1], rel=1e-5, abs=1e-6), column


def test_footprint_fields_are_measured(composed):
    config, layout, _, _ = composed
    summary = next(iter(summaries(layout).values()))
    student_params = 40 * 32 + 32 + 32 * 10 + 10
    assert summary["student_params"] == student_params
    assert summary["student_size_bytes"] == 4 * student_params  # float32, no buffers in an MLP
    assert summary["student_flops"] == 2 * (40 * 32 + 32 * 10)  # a multiply-add is two FLOPs
    teacher_params = sum(json.loads(layout.ensemble_record.read_text())["teachers"][i]["parameters"] for i in range(2))
    assert summary["teacher_params"] == teacher_params
    for field in ("student_latency_ms", "teacher_latency_ms", "teacher_flops", "teacher_size_bytes"):
        assert summary[field] > 0
    assert summary["latency_batch_size"] == config.student_batch_size()


def test_report_shows_generations_compression_and_speedup(composed, run_cli):
    config, layout, _, _ = composed
    result = run_cli("report", "--runs-dir", config.runs_dir, "--name", config.name)
    assert result.code == 0, result.stderr
    assert "constant, gen 1" in result.stdout and "linear, gen 2" in result.stdout
    assert "teacher ensemble (mean_probs)" in result.stdout
    summary = pd.read_csv(layout.report_dir / "summary.csv")
    grid = summary[summary["schedule"].isin(["constant", "linear"])]
    assert set(grid["generation"]) == {1, 2}
    any_run = next(iter(summaries(layout).values()))
    assert grid["compression"].iloc[0] == pytest.approx(any_run["teacher_params"] / any_run["student_params"])
    assert grid["speedup"].iloc[0] == pytest.approx(any_run["teacher_latency_ms"] / any_run["student_latency_ms"])
    assert "x smaller" in result.stdout and "of the teacher's accuracy gap over no-KD closed" in result.stdout
    assert "What the student saves" in (layout.report_dir / "report.md").read_text()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("format, loader", [("pt2", lambda p: torch.export.load(p).module()), ("torchscript", torch.jit.load)])
def test_export_reproduces_the_student(composed, run_cli, format, loader, data_root):
    config, layout, _, _ = composed
    result = run_cli("export", "--runs-dir", config.runs_dir, "--config", _config_path(config), "--format", format)
    assert result.code == 0, result.stderr
    run_id = result.stdout.split()[1]
    path = layout.run_dir(run_id) / ("student.pt2" if format == "pt2" else "student.torchscript.pt")
    exported = loader(str(path))
    student = build_model(config.student, (1, 40), 10)
    student.load_state_dict(torch.load(layout.run_dir(run_id) / "model.pt", weights_only=True)["state_dict"])
    student.eval()
    inputs = load_dataset(DataConfig(root=data_root)).test_x[:7]
    with torch.no_grad():
        assert torch.allclose(exported(inputs), student(inputs), atol=1e-5)
    best = max(summaries(layout).values(), key=lambda s: s["final"]["test_acc"])
    assert run_id == best["run_id"]


def _config_path(config):
    return config.runs_dir.parent / f"{config.name}.yaml"


def test_hint_term_vanishes_when_the_regressor_maps_exactly(data_root):
    """teacher feature = A f_student + b and regressor = (A, b): the hint term is zero; perturb it and it is not."""
    data = load_dataset(DataConfig(root=data_root))
    spec = MLPSpec(hidden=[16], epochs=1)
    torch.manual_seed(0)
    student = build_model(spec, data.input_shape, 10)
    capture = FeatureCapture(student, None)
    student.eval()
    with torch.no_grad():
        student(data.train_x)
    student_features = capture.pop()
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(24, 16, generator=generator), torch.randn(24, generator=generator)
    teacher_features = student_features @ weight.T + bias
    signal = TeacherSignal(test_logits=torch.randn(1, len(data.test_y), 10), train_logits=torch.randn(1, len(data.train_y), 10),
                           train_features=teacher_features[None])
    spe = steps_per_epoch(len(data.train_y), 256)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10),
                         [Member(0, 0.9, torch.full((spe,), 2.0), t0=2.0)], data, signal,
                         LoopSettings(spec, 256, 1000, 0, torch.device("cpu")), Hint(1.0, None, (24,)))
    group.template.eval()  # no dropout in this MLP; eval keeps the features exactly those captured above
    with group, torch.no_grad():
        regressor = group.method("hints").params
        regressor["weight"].copy_(weight[None])
        regressor["bias"].copy_(bias[None])
        indices = torch.arange(300)
        logits, features = group.teacher_batch(indices, data.train_x[indices])
        terms, _ = group._loss_terms(0, data.train_x[indices], data.train_y[indices], logits, features, torch.tensor([2.0]))
        assert float(terms.logged["feature"][0]) < 1e-9
        regressor["bias"].add_(0.1)
        terms, _ = group._loss_terms(0, data.train_x[indices], data.train_y[indices], logits, features, torch.tensor([2.0]))
        assert float(terms.logged["feature"][0]) == pytest.approx(0.01, rel=1e-4)  # every element off by 0.1


def test_hint_layers_must_exist_and_match(tiny_config, run_cli):
    config = tiny_config(kd={"temperatures": [2], "seeds": [0], "feature_weight": 1.0,
                             "feature_layers": {"student": "features.9", "teacher": "features.2"}})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 2 and "kd.feature_layers.student: no layer named 'features.9'; the student has: features" in result.stderr
    config = tiny_config("kinds", kd={"temperatures": [2], "seeds": [0], "feature_weight": 1.0,
                                      "feature_layers": {"student": "features.1", "teacher": "features.2"}})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 2 and "hint features differ in kind: student (32,), teacher (8, 40)" in result.stderr


def test_regressor_shapes():
    assert isinstance(build_regressor((16,), (24,)), torch.nn.Linear)
    assert isinstance(build_regressor((8, 20), (16, 20)), torch.nn.Conv1d)
    assert isinstance(build_regressor((8, 4, 4), (32, 4, 4)), torch.nn.Conv2d)
    with pytest.raises(ConfigError, match="differ in resolution"):
        build_regressor((8, 4, 4), (32, 8, 8))


def test_ensemble_config_checks():
    with pytest.raises(ConfigError, match="give teacher or teachers, not both"):
        load_config(None, {"teacher": ({"epochs": 3}, "x"), "teachers": ([{}, {}], "y")})
    with pytest.raises(ConfigError, match="weighted needs kd.teacher_weights with one weight per teacher \\(2\\)"):
        load_config(None, {"teachers": ([{}, {}], "y"), "kd.ensemble": ("weighted", "z")})
    with pytest.raises(ConfigError, match="teacher_weights only apply with kd.ensemble: weighted"):
        load_config(None, {"teachers": ([{}, {}], "y"), "kd.teacher_weights": ([1, 2], "z")})


def test_augmented_images_run_the_teacher_per_batch(tmp_path, monkeypatch, run_cli):
    """Fashion-MNIST-format images with augmentation: no cached train logits, the teachers run on every
    augmented batch (hints captured there too), and generation 2 runs each member's own parent per batch."""
    from helpers import write_idx_set

    import kdtemp.data.builtin

    monkeypatch.setattr(kdtemp.data.builtin, "SYSTEM_FASHION_MNIST_DIRS", [tmp_path / "absent"])
    write_idx_set(tmp_path / "data" / "fashion-mnist", train_count=96, test_count=32)
    tree = {"runs_dir": str(tmp_path / "runs"),
            "data": {"dataset": "fashion-mnist", "root": str(tmp_path / "data"), "augment": True, "batch_size": 32},
            "teacher": {"channels": [4], "hidden": 16, "epochs": 1},
            "student": {"hidden": [16], "epochs": 2},
            "kd": {"temperatures": [2], "seeds": [0, 1], "feature_weight": 0.5, "generations": 2}}
    config = tmp_path / "augmented.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 0, result.stderr
    assert "6 runs: 0 skipped (complete), 0 resumed, 6 started, 6 completed, 0 failed" in result.stdout
    layout = kdtemp.store.layout.ExperimentLayout(tmp_path / "runs" / "augmented")
    cached = torch.load(next(layout.cache_dir.glob("teacher-logits-*-augment.pt")), weights_only=True)
    assert cached["train"] is None and cached["test"].shape == (32, 10)  # only test logits can be cached
    frames = [pd.read_csv(d / "metrics.csv") for d in layout.run_dirs()]
    assert sorted(f["generation"][0] for f in frames) == [1, 1, 1, 1, 2, 2]
    assert all((f["train_feature"] > 0).all() for f in frames if f["schedule"][0] != "none")


def test_a_failed_parent_fails_its_next_generation(tiny_config, run_cli):
    """Generation 2 of a diverged run is not trained from a broken model: it is failed, naming its parent."""
    config = tiny_config("bornfailed", kd={"temperatures": [2, 1e30], "seeds": [0], "generations": 2})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 1
    layout = kdtemp.store.layout.ExperimentLayout(config.parent / "runs" / config.stem)
    summaries = {d.name: json.loads((d / "summary.json").read_text()) for d in layout.run_dirs()}
    parent = next(name for name in summaries if name.startswith("constant-T1e30") and "-g2-" not in name)
    child = next(name for name in summaries if name.startswith("constant-T1e30") and "-g2-" in name)
    assert summaries[parent]["status"] == "failed"
    assert summaries[child]["status"] == "failed"
    assert summaries[child]["reason"].startswith(f"its parent {parent} failed (training loss became")
    assert not (layout.run_dir(child) / "metrics.csv").exists()  # never trained
    finished = [s for name, s in summaries.items() if not name.startswith("constant-T1e30")]
    assert len(finished) == 3 and all(s["status"] == "completed" for s in finished)  # T=2 in both generations, the baseline


def test_student_and_teacher_latencies_are_timed_in_turns():
    """The report's "x faster" divides two latencies: timing them in turns (student, teacher members,
    student, ...) keeps a change of machine load from landing on one side only."""
    import torch
    from torch import nn

    from kdtemp.models.footprint import REPEATS, WARMUP, student_and_teacher

    calls = []

    class Recorder(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.layer = name, nn.Linear(4, 2)

        def forward(self, x):
            calls.append(self.name)
            return self.layer(x)

    fields = student_and_teacher(Recorder("s"), [Recorder("t0"), Recorder("t1")], torch.zeros(3, 4), torch.device("cpu"))
    timed = [name for name in calls if name in ("s", "t0", "t1")][-(WARMUP + REPEATS) * 3:]
    assert timed == ["s", "t0", "t1"] * (WARMUP + REPEATS)
    assert fields["student_latency_ms"] > 0 and fields["teacher_latency_ms"] > 0
    assert fields["teacher_params"] == 2 * fields["student_params"] == 2 * (4 * 2 + 2)
