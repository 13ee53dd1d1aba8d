"""Temperature schedules against hand-computed values; the learnable and per-sample temperatures."""

import math

import pandas as pd
import pytest
import torch
from helpers import experiment

from kdtemp.losses import kd_terms, soft_target_log_probs, standardize_logits
from kdtemp.methods.ctkd import (
    initial_theta,
    learned_temperature,
    reversal_weight,
    scale_gradient,
)
from kdtemp.temperature.base import epoch_temperatures, temperature_table
from kdtemp.temperature.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ExpSchedule,
    LearnableSchedule,
    LinearSchedule,
    StagesSchedule,
    StepSchedule,
)


@pytest.mark.parametrize("schedule, t0, epochs, expected", [
    (ConstantSchedule(), 4.0, 3, [4, 4, 4]),
    (LinearSchedule(), 4.0, 4, [4, 3, 2, 1]),  # t_end defaults to 1
    (LinearSchedule(t_end=8), 2.0, 3, [2, 5, 8]),  # t_end above t0 warms up
    (ExpSchedule(gamma=0.5), 8.0, 4, [8, 4, 2, 1]),
    (ExpSchedule(), 10.0, 3, [10, 9, 8.1]),  # gamma defaults to 0.9: "10% lower each epoch"
    (ExpSchedule(final_ratio=0.25), 8.0, 3, [8, 4, 2]),  # t0 * r**p
    (CosineSchedule(), 9.0, 3, [9, 5, 1]),
    (CosineSchedule(t_end=3), 3.0, 2, [3, 3]),
    (StepSchedule(milestones=[1, 3]), 8.0, 4, [8, 4, 4, 2]),  # factor defaults to 0.5
    (StepSchedule(), 8.0, 8, [8, 8, 8, 8, 4, 4, 2, 2]),  # milestones default to E//2 = 4 and 3E//4 = 6
    (StagesSchedule(), 99.0, 6, [1, 1, 3, 3, 1.5, 1.5]),  # absolute temperatures, t0 ignored
    (LinearSchedule(), 4.0, 1, [4]),  # E = 1: progress is 0
    (CosineSchedule(), 6.0, 1, [6]),
    (LinearSchedule(t_end=0.1, t_min=1.0), 10.0, 3, [10, 5.05, 1]),  # clamped below
    (LinearSchedule(t_end=0.1, t_max=6.0), 10.0, 3, [6, 5.05, 0.1]),  # clamped above
])
def test_formulas_by_hand(schedule, t0, epochs, expected):
    assert epoch_temperatures(schedule, t0, epochs) == pytest.approx(expected)
    table = temperature_table(schedule, t0, epochs, steps_per_epoch=3)
    assert table.tolist() == pytest.approx([value for value in expected for _ in range(3)], rel=1e-6)


def step_reference(kind: str, t0: float, epochs: int, steps_per_epoch: int) -> list[float]:
    """T per step by a plain float64 loop over the documented rule: epoch-based formulas at the fractional
    epoch step / steps_per_epoch, progress-based ones at p = step / (total - 1)."""
    total = epochs * steps_per_epoch
    values = []
    for step in range(total):
        epoch, p = step / steps_per_epoch, step / (total - 1)
        if kind == "step [1, 2]":
            values.append(t0 * 0.5 ** ((epoch >= 1) + (epoch >= 2)))
        elif kind == "exp gamma 0.5":
            values.append(t0 * 0.5 ** epoch)
        elif kind == "linear":
            values.append(t0 + (1.0 - t0) * p)
        elif kind == "exp final_ratio 0.25":
            values.append(t0 * 0.25 ** p)
        elif kind == "cosine":
            values.append(1.0 + (t0 - 1.0) * (1 + math.cos(math.pi * p)) / 2)
        elif kind == "stages":
            values.append(1.0 if p < 0.3 else 3.0 if p < 0.8 else 1.5)
    return values


STEP_SCHEDULES = {
    "step [1, 2]": StepSchedule(milestones=[1, 2], granularity="step"),
    "exp gamma 0.5": ExpSchedule(gamma=0.5, granularity="step"),
    "linear": LinearSchedule(granularity="step"),
    "exp final_ratio 0.25": ExpSchedule(final_ratio=0.25, granularity="step"),
    "cosine": CosineSchedule(granularity="step"),
    "stages": StagesSchedule(granularity="step"),
}


@pytest.mark.parametrize("kind", STEP_SCHEDULES)
@pytest.mark.parametrize("epochs, steps_per_epoch", [(3, 7), (4, 5), (2, 3)])
def test_step_granularity_matches_a_per_step_loop(kind, epochs, steps_per_epoch):
    table = temperature_table(STEP_SCHEDULES[kind], 8.0, epochs, steps_per_epoch)
    assert table.tolist() == pytest.approx(step_reference(kind, 8.0, epochs, steps_per_epoch), rel=1e-6)


def first_steps_below(table: torch.Tensor) -> list[int]:
    """The steps at which T drops (is lower than at the step before)."""
    return [step for step in range(1, len(table)) if table[step] < table[step - 1]]


def test_step_milestones_fire_at_the_first_step_of_their_epoch():
    # issue 12.3: with p * (E - 1) these fired at step 266, and at 150 and 299
    table = temperature_table(StepSchedule(milestones=[2], granularity="step"), 8.0, epochs=4, steps_per_epoch=100)
    assert first_steps_below(table) == [200]
    table = temperature_table(StepSchedule(milestones=[1, 2], granularity="step"), 8.0, epochs=3, steps_per_epoch=100)
    assert first_steps_below(table) == [100, 200]
    assert table[99] == 8.0 and table[100] == 4.0 and table[199] == 4.0 and table[200] == 2.0 and table[299] == 2.0
    # exp with gamma is t0 * gamma**e at the real epoch: exactly t0 * gamma**k at the first step of epoch k
    exp = temperature_table(ExpSchedule(gamma=0.5, granularity="step"), 8.0, epochs=3, steps_per_epoch=100)
    assert [float(exp[k * 100]) for k in range(3)] == pytest.approx([8.0, 4.0, 2.0], rel=1e-6)


@pytest.fixture
def schedule_registry():
    """The registry as it was, restored after a test registers its own schedules."""
    from kdtemp.temperature.registry import SCHEDULES

    saved = dict(SCHEDULES)
    yield SCHEDULES
    SCHEDULES.clear()
    SCHEDULES.update(saved)


def test_a_new_schedule_is_one_class_and_one_decorator(schedule_registry):
    from typing import Annotated, ClassVar, Literal

    from pydantic import Field

    from kdtemp.config.loading import load_config
    from kdtemp.errors import ConfigError
    from kdtemp.sweep.plan import plan_runs, uses_standardized_logits
    from kdtemp.temperature.base import LOGIT_STD, ScheduleBase
    from kdtemp.temperature.registry import register_schedule

    @register_schedule
    class WarmupSchedule(ScheduleBase):
        """T rises from t0 / 2 to t0 over the first `warmup` of training, then stays."""

        name: Literal["warmup"] = "warmup"
        warmup: Annotated[float, Field(gt=0, le=1)] = 0.5

        def temperature(self, t0, progress, epoch, epochs):
            return t0 * (0.5 + 0.5 * min(progress / self.warmup, 1.0))

    @register_schedule
    class SharpStd(ScheduleBase):
        method: ClassVar[str] = LOGIT_STD
        name: Literal["sharp-std"] = "sharp-std"

        def temperature(self, t0, progress, epoch, epochs):
            return t0 / 2

    def grid(schedules):
        return load_config(None, {"kd.schedules": (schedules, "x"), "kd.temperatures": ([4.0], "x"),
                                  "kd.seeds": ([0], "x"), "student.epochs": (5, "x")})

    config = grid(["constant", {"name": "warmup", "warmup": 0.5, "t_max": 3.5}, "sharp-std"])
    warmup = config.kd.schedules[1]
    assert isinstance(warmup, WarmupSchedule) and warmup.warmup == 0.5
    # p = e / 4: T = 4 * (0.5, 0.75, 1, 1, 1) = 2, 3, 4, 4, 4, clamped at t_max 3.5; two steps per epoch
    table = temperature_table(warmup, 4.0, epochs=5, steps_per_epoch=2)
    assert table.tolist() == [2, 2, 3, 3, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5]
    runs = {run.schedule_label: run for run in plan_runs(config, "fp")}
    assert runs["warmup"].run_id.startswith("warmup-T4-a0.9-s0-")
    assert uses_standardized_logits(runs["sharp-std"]) and not uses_standardized_logits(runs["warmup"])
    with pytest.raises(ConfigError, match=r"unknown key 'kd.schedules\[0\].warmpu'; did you mean 'warmup'"):
        grid([{"name": "warmup", "warmpu": 0.2}])
    with pytest.raises(ConfigError, match=r"unknown name 'warmpu'; choose one of 'constant', .*'warmup', 'sharp-std'"):
        grid(["warmpu"])
    with pytest.raises(ValueError, match="two schedules are named 'warmup'"):
        register_schedule(type("Other", (WarmupSchedule,), {}))


@pytest.mark.parametrize("epochs, milestones", [
    (1, []), (2, [1]), (3, [1, 2]), (4, [2, 3]), (5, [2, 3]), (6, [3, 4]), (7, [3, 5]), (8, [4, 6]),
])
def test_default_step_milestones_are_distinct_and_after_epoch_zero(epochs, milestones):
    # issue 12.4: E = 1 gave [0, 0] (its only epoch trained at t0 / 4) and E = 2 gave [1, 1]
    expected = [8.0 * 0.5 ** sum(1 for m in milestones if m <= e) for e in range(epochs)]
    assert epoch_temperatures(StepSchedule(), 8.0, epochs) == pytest.approx(expected)
    assert epoch_temperatures(StepSchedule(), 8.0, epochs)[0] == 8.0  # epoch 0 trains at the t0 it is labelled with


def test_reversal_weight_follows_a_cosine_curriculum():
    schedule = LearnableSchedule(lambda_max=2.0, curriculum_epochs=4)
    weights = [reversal_weight(schedule, e) for e in range(7)]
    assert weights[0] == 0.0
    assert weights[2] == pytest.approx(-1.0)  # halfway: -lambda_max / 2
    assert weights[4] == pytest.approx(-2.0) and weights[6] == pytest.approx(-2.0)
    assert all(b <= a for a, b in zip(weights, weights[1:]))


@pytest.mark.parametrize("t0", [1.5, 4.0, 20.0])
def test_theta_starts_where_temperature_is_t0(t0):
    schedule = LearnableSchedule()
    assert float(learned_temperature(torch.tensor(initial_theta(schedule, t0)), 1.0, 20.0)) == pytest.approx(t0, rel=1e-5)


def test_gradient_reversal_flips_and_scales_the_gradient():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=generator), torch.randn(16, 10, generator=generator) * 3
    targets = torch.randint(0, 10, (16,), generator=generator)

    def theta_gradient(weight):
        theta = torch.tensor(0.3, requires_grad=True)
        temperature = learned_temperature(scale_gradient(theta, weight), 1.0, 20.0)
        kd = kd_terms(student, soft_target_log_probs(teacher, temperature), targets, temperature)["kd"]
        kd.backward()
        return float(theta.grad), float(kd.detach())

    plain, loss_plain = theta_gradient(1.0)
    reversed_, loss_reversed = theta_gradient(-0.5)
    assert loss_plain == loss_reversed  # identity in the forward pass
    assert plain != 0 and reversed_ == pytest.approx(-0.5 * plain)


def test_logit_std_matches_float64_reference():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(8, 10, generator=generator, dtype=torch.float64) * 4
    teacher = torch.randn(8, 10, generator=generator, dtype=torch.float64) * 7 + 2
    targets = torch.randint(0, 10, (8,), generator=generator)
    t0 = 2.0

    def zscore(x):
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-7)

    p = torch.softmax(zscore(teacher) / t0, -1)
    log_q = torch.log_softmax(zscore(student) / t0, -1)
    expected = t0 ** 2 * (p * (p.log() - log_q)).sum(-1).mean()
    ours = kd_terms(student.float(), soft_target_log_probs(teacher.float(), t0, standardize=True), targets, t0, True)["kd"]
    assert float(ours) == pytest.approx(float(expected), rel=1e-5)
    # the effective temperature per sample is t0 * std(logits): same targets as tempering raw logits by it
    effective = t0 * teacher.std(-1, keepdim=True)
    assert torch.allclose(torch.softmax((teacher - teacher.mean(-1, keepdim=True)) / effective, -1), p, atol=1e-6)
    assert torch.allclose(standardize_logits(teacher.float()).std(-1), torch.ones(8), atol=1e-5)


def group_for(members, epochs=3, data_root=None):
    from kdtemp.config.model_specs import MLPSpec
    from kdtemp.config.schema import DataConfig
    from kdtemp.data.registry import load_dataset
    from kdtemp.engine.loop import LoopSettings, TeacherSignal
    from kdtemp.group.student_group import StudentGroup
    from kdtemp.models.registry import build_model

    data = load_dataset(DataConfig(root=data_root))
    generator = torch.Generator().manual_seed(0)
    teacher_train = torch.randn(len(data.train_y), 10, generator=generator) * 3
    teacher_train[torch.arange(len(data.train_y)), data.train_y] += 6  # a teacher that knows the labels
    signal = TeacherSignal(test_logits=torch.randn(1, len(data.test_y), 10, generator=generator), train_logits=teacher_train[None])
    spec = MLPSpec(hidden=[32], epochs=epochs)
    settings = LoopSettings(spec, 500, 1000, 0, torch.device("cpu"))
    return StudentGroup(lambda: build_model(spec, data.input_shape, 10), members, data, signal, settings)


def test_learnable_temperature_moves_within_bounds(data_root):
    from kdtemp.engine.loop import EpochDone, Member

    schedule = LearnableSchedule(t_min=1.0, t_range=9.0, curriculum_epochs=2)
    epochs, steps = 4, 8
    members = [Member(0, 0.9, torch.full((epochs * steps,), 4.0), t0=4.0, learnable=schedule),
               Member(0, 0.9, torch.full((epochs * steps,), 4.0), t0=4.0)]
    group = group_for(members, epochs, data_root)
    rows = [event.metrics for event in group.run() if isinstance(event, EpochDone)]
    learned = [r[0]["temperature"] for r in rows]
    assert learned[0] == pytest.approx(4.0, abs=1e-5)  # weight 0 in epoch 0: theta does not move
    assert abs(learned[-1] - 4.0) > 0.05  # then it moves
    assert all(1.0 <= t <= 10.0 for t in learned)
    assert [r[1]["temperature"] for r in rows] == pytest.approx([4.0] * epochs)  # its neighbour is untouched


def test_learnable_penalty_pulls_towards_target(data_root):
    from kdtemp.engine.loop import EpochDone, Member

    schedule = LearnableSchedule(t_min=1.0, t_range=9.0, lambda_max=0.0, penalty=5.0, t_target=2.0)
    epochs, steps = 3, 8
    members = [Member(0, 0.9, torch.full((epochs * steps,), 8.0), t0=8.0, learnable=schedule)]
    rows = [event.metrics[0] for event in group_for(members, epochs, data_root).run() if isinstance(event, EpochDone)]
    assert rows[-1]["temperature"] < rows[0]["temperature"] < 8.0
    assert rows[0]["train_penalty"] > rows[-1]["train_penalty"] > 0


ALL_SCHEDULES = [
    "constant", {"name": "linear", "t_end": 1}, {"name": "exp", "gamma": 0.8}, "cosine",
    {"name": "step", "milestones": [2], "factor": 0.5}, {"name": "stages", "stages": [[0, 2], [0.5, 6]]},
    {"name": "learnable", "curriculum_epochs": 2}, "logit-std",
]


def test_cli_sweep_records_each_schedule_per_epoch(tiny_config, run_cli):
    from kdtemp.config.loading import load_config

    config = tiny_config(kd={"temperatures": [4], "seeds": [0], "schedules": ALL_SCHEDULES},
                         student={"hidden": [32], "epochs": 4})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 0, result.stderr
    students = experiment(config) / "students"
    frames = {}
    for run_dir in students.iterdir():
        frame = pd.read_csv(run_dir / "metrics.csv")
        frames[frame["schedule"][0]] = frame
    assert set(frames) == {"constant", "linear", "exp", "cosine", "step", "stages", "learnable", "logit-std", "none"}
    schedules = {s.name: s for s in load_config(config).kd.schedules}
    for name in ("constant", "linear", "exp", "cosine", "step", "stages"):
        t0 = 2.0 if name == "stages" else 4.0  # stages runs once, its t0 is its first stage's T
        assert frames[name]["t0"].tolist() == [t0] * 4
        assert frames[name]["temperature"].tolist() == pytest.approx(epoch_temperatures(schedules[name], 4.0, 4), rel=1e-6)
    assert frames["linear"]["temperature"].tolist() == pytest.approx([4, 3, 2, 1])
    learnable = frames["learnable"]["temperature"]
    assert learnable.between(1, 21).all() and learnable.nunique() > 1
    logit_std = frames["logit-std"]
    assert (logit_std["temperature"] == 4.0).all() and (logit_std["effective_temperature"] > 0).all()
    assert logit_std["effective_temperature"].notna().all() and frames["constant"]["effective_temperature"].isna().all()

    report = run_cli("report", "--config", config)
    assert report.code == 0
    for name in ("constant", "linear", "exp", "cosine", "step", "stages", "learnable", "logit-std"):
        assert f"│ {name} " in report.stdout


def test_cli_schedules_option_takes_parameters_from_the_config(tiny_config, run_cli):
    config = tiny_config(kd={"temperatures": [4], "seeds": [0], "schedules": [{"name": "linear", "t_end": 2}]},
                         student={"hidden": [32], "epochs": 3})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config, "--schedules", "linear,exp")
    assert result.code == 0, result.stderr
    students = experiment(config) / "students"
    linear = next(pd.read_csv(d / "metrics.csv") for d in students.iterdir() if d.name.startswith("linear"))
    exp = next(pd.read_csv(d / "metrics.csv") for d in students.iterdir() if d.name.startswith("exp"))
    assert linear["temperature"].tolist() == pytest.approx([4, 3, 2])  # t_end 2 from the config
    assert exp["temperature"].tolist() == pytest.approx([4, 3.6, 3.24])  # gamma 0.9 by default


def test_low_temperatures_warn_once(tiny_config, run_cli):
    config = tiny_config(kd={"temperatures": [0.2, 0.3], "seeds": [0]}, student={"hidden": [8], "epochs": 1})
    assert run_cli("train-teacher", "--config", config).code == 0
    result = run_cli("sweep", "--config", config)
    assert result.code == 0
    assert result.stderr.count("temperatures below 0.5") == 1


def test_runs_whose_temperatures_changed_get_new_ids_and_the_others_keep_theirs(monkeypatch):
    """Ids as the code before the step-granularity and default-milestone fixes made them (commit f83a7f6):
    a run trained with the old temperatures must not pass for a finished run of the new ones, and every
    unaffected run keeps its id so it is still skipped. The validation split (run format 2) changed every
    id since; with its two identity entries taken back out, the ids are format 1's again."""
    from kdtemp.config.loading import load_config
    from kdtemp.sweep import plan
    from kdtemp.sweep.plan import plan_runs

    with_split = plan.shared_identity

    def format_one(config, teacher_fingerprint):
        identity = with_split(config, teacher_fingerprint)
        assert identity.pop("validation") == [0.1, 0] and identity["format"] == 2
        return {**identity, "format": 1}

    monkeypatch.setattr(plan, "shared_identity", format_one)

    schedules = [{"name": "linear"}, {"name": "cosine", "granularity": "step"}, {"name": "step"},
                 {"name": "step", "granularity": "step", "label": "stepS"},
                 {"name": "exp", "granularity": "step", "label": "expS"},
                 {"name": "exp", "final_ratio": 0.5, "granularity": "step", "label": "expR"}]
    old_ids = {
        30: ["dfd5e7a8", "bf73575a", "c3f04614", "efa83766", "5916ae27", "b9d7756b", "67167ff4"],
        2: ["63197b2a", "825a3f44", "856064f9", "abcde47f", "51ea2540", "560dc821", "684e2c05"],
    }
    changed = {30: {"stepS", "expS"}, 2: {"step", "stepS", "expS"}}
    for epochs, hashes in old_ids.items():
        config = load_config(None, {"kd.schedules": (schedules, "x"), "kd.temperatures": ([4], "x"),
                                    "kd.seeds": ([0], "x"), "student.epochs": (epochs, "x")})
        for run, old in zip(plan_runs(config, "fp"), hashes):
            assert (run.run_id.rsplit("-", 1)[1] != old) == (run.schedule_label in changed[epochs]), (epochs, run.run_id)
