"""A KD method is one class behind kdtemp.methods' protocol: adding one is a class and a registration
line, its named term is added to the loss and reported in the CSV row, checked here against a float64
computation written independently; and checkpoints keep their layout."""

import pytest
import torch
import torch.nn.functional as F

import kdtemp.methods.registry
from kdtemp.config.model_specs import MLPSpec
from kdtemp.data.dataset import Dataset
from kdtemp.engine.loop import EpochDone, LoopSettings, Member, TeacherSignal
from kdtemp.errors import ConfigError
from kdtemp.group.student_group import StudentGroup
from kdtemp.methods import KDMethod, Step, Terms, register_method
from kdtemp.models.registry import build_model
from kdtemp.temperature.schedules import LearnableSchedule

WEIGHT, ALPHA, T0 = 0.05, 0.7, 3.0


class LogitPenalty(KDMethod):
    """A toy method: WEIGHT * the batch mean of the sum of squared logits, for the members that name it."""

    name = "logit-l2"

    def __init__(self, members, group):
        super().__init__(members, group)
        weights = [WEIGHT if self.uses(m) else 0.0 for m in self.members]
        self.weight = torch.tensor(weights, device=group.device)

    def terms(self, step: Step) -> Terms:
        squared = step.logits.pow(2).sum(-1).mean(-1)
        return Terms(added={"logit_l2": self.weight * squared}, logged={"logit_l2": squared})

    def row_fields(self, k, means):
        return {"train_logit_l2": means["logit_l2"]} if self.uses(self.members[k]) else {}


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for one test, so the toy method does not outlive it."""
    monkeypatch.setattr(kdtemp.methods.registry, "METHODS", list(kdtemp.methods.registry.METHODS))


def tiny_setting(samples=48, classes=5):
    generator = torch.Generator().manual_seed(4)
    data = Dataset("random", torch.randn(samples, 1, 6, generator=generator),
                   torch.randint(0, classes, (samples,), generator=generator),
                   torch.randn(16, 1, 6, generator=generator),
                   torch.randint(0, classes, (16,), generator=generator),
                   tuple("abcde"[:classes]), "test")
    teacher = torch.randn(1, samples, classes, generator=generator) * 2
    signal = TeacherSignal(test_logits=torch.randn(1, 16, classes, generator=generator), train_logits=teacher)
    return data, signal


def by_hand(model: torch.nn.Module, data: Dataset, teacher: torch.Tensor,
            weight: float) -> tuple[float, float]:
    """(logit L2, total loss) of one full-batch step in float64: (1-a) CE + a T^2 KL(p_t || p_s) + w * L2."""
    model = model.double()
    with torch.no_grad():
        logits = model(data.train_x.double())
    teacher = teacher.double()
    ce = F.cross_entropy(logits, data.train_y)
    p_teacher = F.softmax(teacher / T0, dim=-1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits / T0, dim=-1))).sum(-1).mean()
    l2 = float(logits.pow(2).sum(-1).mean())
    return l2, float((1 - ALPHA) * ce + ALPHA * T0**2 * kl + weight * l2)


def test_a_registered_method_adds_its_named_term_and_reports_it(registry):
    """One step of one epoch (the batch is the whole set): the epoch means are the initial weights' values."""
    register_method(LogitPenalty)
    data, signal = tiny_setting()
    spec = MLPSpec(hidden=[8], epochs=1)
    members = [Member(0, ALPHA, torch.full((1,), T0), t0=T0, methods=("logit-l2",)),
               Member(1, ALPHA, torch.full((1,), T0), t0=T0)]
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 5), members, data, signal,
                         LoopSettings(spec, len(data.train_y), 16, 0, torch.device("cpu")))
    assert [method.name for method in group.methods] == ["kd", "logit-l2"]
    initial = []
    for k in range(2):
        model = build_model(spec, data.input_shape, 5)
        model.load_state_dict(group.member_state(k)["model"])
        initial.append(model)
    with group:
        rows = [event for event in group.run() if isinstance(event, EpochDone)][0].metrics
    l2, loss = by_hand(initial[0], data, signal.train_logits[0], WEIGHT)
    assert rows[0]["train_logit_l2"] == pytest.approx(l2, rel=1e-5)
    assert rows[0]["train_loss"] == pytest.approx(loss, rel=1e-5)
    # a member that does not name the method neither pays nor reports it
    assert "train_logit_l2" not in rows[1]
    _, unpenalised = by_hand(initial[1], data, signal.train_logits[0], 0.0)
    assert rows[1]["train_loss"] == pytest.approx(unpenalised, rel=1e-5)


def test_a_method_name_is_registered_once(registry):
    class Again(LogitPenalty):
        name = "ctkd"

    with pytest.raises(ConfigError, match="already registered"):
        register_method(Again)


@pytest.mark.parametrize("added, logged", [("kd", "l2"), ("l2", "loss")])
def test_a_method_may_not_take_another_terms_name(registry, added, logged):
    """A term named like plain KD's (or a logged field like the group's own loss) would replace it silently."""

    class Clash(LogitPenalty):
        name = "clash"

        def terms(self, step: Step) -> Terms:
            squared = step.logits.pow(2).sum(-1).mean(-1)
            return Terms(added={added: self.weight * squared}, logged={logged: squared})

    register_method(Clash)
    data, signal = tiny_setting()
    spec = MLPSpec(hidden=[8], epochs=1)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 5),
                         [Member(0, ALPHA, torch.full((1,), T0), t0=T0, methods=("clash",))], data, signal,
                         LoopSettings(spec, len(data.train_y), 16, 0, torch.device("cpu")))
    with group, pytest.raises(ConfigError, match=r"KD method 'clash' names its term\(s\) \['(kd|loss)'\]"):
        list(group.run())


def test_a_group_builds_only_the_methods_its_members_use():
    data, signal = tiny_setting()
    spec = MLPSpec(hidden=[8], epochs=1)
    plain = Member(0, ALPHA, torch.full((1,), T0), t0=T0)
    learnable = Member(0, ALPHA, torch.full((1,), T0), t0=T0, learnable=LearnableSchedule())
    settings = LoopSettings(spec, len(data.train_y), 16, 0, torch.device("cpu"))
    def names(members):
        group = StudentGroup(lambda: build_model(spec, data.input_shape, 5), members, data, signal, settings)
        return [method.name for method in group.methods]

    standardized = Member(0, 0.9, torch.ones(1), standardize=True)
    assert [names([plain]), names([plain, learnable]), names([standardized])] == [
        ["kd"], ["kd", "ctkd"], ["kd", "logit-std"]]


def test_checkpoints_of_the_former_layout_resume(registry):
    """Before methods were modules every member state carried "regressor", "theta" and "theta_optimizer";
    a member of a CTKD group may also resume from a state written by a group without CTKD."""
    data, signal = tiny_setting()
    spec = MLPSpec(hidden=[8], epochs=2, optimizer="adam")
    learnable = Member(0, ALPHA, torch.full((2,), T0), t0=T0,
                       learnable=LearnableSchedule(curriculum_epochs=1, penalty=1.0, t_target=2.0))
    plain = Member(0, ALPHA, torch.full((2,), T0), t0=T0)
    settings = LoopSettings(spec, len(data.train_y), 16, 0, torch.device("cpu"))

    def group():
        members = [learnable, plain]
        return StudentGroup(lambda: build_model(spec, data.input_shape, 5), members, data, signal, settings)

    straight = [event.metrics for event in group().run() if isinstance(event, EpochDone)]
    first = group()
    next(event for event in first.run() if isinstance(event, EpochDone))
    states = [first.member_state(k) for k in range(2)]
    assert set(states[0]) == {"epoch", "model", "optimizer", "theta", "theta_optimizer"}
    states[0]["regressor"] = {}
    del states[1]["theta"], states[1]["theta_optimizer"]  # as a group without CTKD writes it
    resumed = group()
    resumed.load_member_states(states)
    rest = [event.metrics for event in resumed.run() if isinstance(event, EpochDone)]
    timeless = [[{key: value for key, value in row.items() if key != "epoch_seconds"} for row in rows]
                for rows in (rest[0], straight[1])]
    assert timeless[0] == timeless[1]
