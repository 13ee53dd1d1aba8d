"""The stacked engine changes speed, not results: a run trained in a group equals the run trained alone,
bitwise on CPU for MLP, CNN (Conv1d and Conv2d) and ResNet students, and both equal a plain PyTorch loop
written here independently."""

import math

import pytest
import torch

from kdtemp.config.model_specs import CNNSpec, MLPSpec, ResNetSpec
from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import Dataset
from kdtemp.data.registry import load_dataset
from kdtemp.engine.loop import (
    EpochDone,
    LoopSettings,
    Member,
    TeacherSignal,
    epoch_order,
    steps_per_epoch,
)
from kdtemp.engine.optim import learning_rate
from kdtemp.group.student_group import StudentGroup
from kdtemp.losses import kd_loss
from kdtemp.models.features import Hint
from kdtemp.models.registry import build_model
from kdtemp.temperature.base import temperature_table
from kdtemp.temperature.schedules import ConstantSchedule

EPOCHS, BATCH = 2, 256
SPEC = MLPSpec(hidden=[32], epochs=EPOCHS, weight_decay=5e-4, lr=0.05)
COMPARED = ["train_loss", "train_ce", "train_acc", "test_loss", "test_acc", "agreement", "test_kl", "test_ece", "temperature"]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    data = load_dataset(DataConfig(root=tmp_path_factory.getbasetemp() / "engine-data"))
    generator = torch.Generator().manual_seed(0)
    teacher_train = torch.randn(len(data.train_y), 10, generator=generator) * 2
    teacher_train[torch.arange(len(data.train_y)), data.train_y] += 5
    teacher_test = torch.randn(len(data.test_y), 10, generator=generator) * 2
    teacher_test[torch.arange(len(data.test_y)), data.test_y] += 5
    signal = TeacherSignal(test_logits=teacher_test[None], train_logits=teacher_train[None])
    return data, signal


def member(t0, seed=0, alpha=0.9, spec=SPEC, data_len=4000):
    spe = steps_per_epoch(data_len, BATCH)
    if t0 is None:
        return Member(seed, 0.0, torch.ones(spec.epochs * spe), distills=False)
    return Member(seed, alpha, temperature_table(ConstantSchedule(), t0, spec.epochs, spe), t0=t0)


def train(setting, members, seed=0, spec=SPEC, clip=None):
    data, signal = setting
    settings = LoopSettings(spec, BATCH, 1000, seed, torch.device("cpu"), clip_grad_norm=clip)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10), members, data, signal, settings)
    epochs = [event for event in group.run() if isinstance(event, EpochDone)]
    return group, epochs


def assert_rows_close(a, b, tolerance=1e-5):
    for column in COMPARED:
        assert a[column] == pytest.approx(b[column], rel=tolerance, abs=tolerance), column


def test_group_equals_each_run_alone(setting):
    """Bitwise: the memberwise optimisers make a member's arithmetic independent of its neighbours."""
    members = [member(1.0), member(4.0), member(None)]
    _, grouped = train(setting, members)
    for k, single in enumerate(members):
        _, alone = train(setting, [single])
        for epoch in range(EPOCHS):
            assert_rows_close(grouped[epoch].metrics[k], alone[epoch].metrics[0], tolerance=0)


def test_group_equals_a_plain_pytorch_loop(setting):
    """The reference: one nn.Module, the documented batch order, kd_loss, torch's own SGD."""
    data, signal = setting
    t0, seed = 4.0, 0
    _, grouped = train(setting, [member(1.0), member(t0)])
    torch.manual_seed(seed)
    model = build_model(SPEC, data.input_shape, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=SPEC.lr, momentum=0.9, nesterov=True, weight_decay=SPEC.weight_decay)
    spe = steps_per_epoch(len(data.train_y), BATCH)
    teacher = signal.train_logits[0]
    for epoch in range(EPOCHS):
        order = epoch_order(seed, epoch, len(data.train_y))
        for step in range(spe):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(SPEC, epoch * spe + step, spe)
            batch = order[step * BATCH:(step + 1) * BATCH]
            loss = kd_loss(model(data.train_x[batch]), teacher[batch], data.train_y[batch], t0, 0.9)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(data.test_x)
        accuracy = float((logits.argmax(-1) == data.test_y).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, data.test_y))
        assert grouped[epoch].metrics[1]["test_acc"] == pytest.approx(accuracy, abs=1e-6)
        assert grouped[epoch].metrics[1]["test_loss"] == pytest.approx(loss, rel=1e-4)


def test_a_diverging_member_fails_alone(setting):
    """At T = 1e30, T^2 overflows float32: the loss is non-finite; its neighbour trains exactly as if alone."""
    _, grouped = train(setting, [member(1e30), member(4.0)])
    first = grouped[0]
    assert first.metrics[0] is None and 0 in first.failures
    assert first.failures[0].startswith("training loss became ") and first.failures[0].endswith("in epoch 0")
    assert grouped[1].metrics[0] is None and not grouped[1].failures  # reported once
    _, alone = train(setting, [member(4.0)])
    for epoch in range(EPOCHS):
        assert_rows_close(grouped[epoch].metrics[1], alone[epoch].metrics[0], tolerance=0)


def test_member_state_round_trip_resumes_exactly(setting):
    data, signal = setting
    members = [member(2.0), member(None)]
    _, straight = train(setting, members)
    one_epoch = SPEC.model_copy(update={"epochs": EPOCHS})
    settings = LoopSettings(one_epoch, BATCH, 1000, 0, torch.device("cpu"))
    first = StudentGroup(lambda: build_model(SPEC, data.input_shape, 10), members, data, signal, settings)
    events = first.run()
    for event in events:
        if isinstance(event, EpochDone):
            break  # stop after epoch 0, as a crash would
    states = [first.member_state(k) for k in range(len(members))]
    assert all(state["epoch"] == 1 for state in states)
    resumed = StudentGroup(lambda: build_model(SPEC, data.input_shape, 10), members, data, signal, settings)
    resumed.load_member_states(states)
    rest = [event for event in resumed.run() if isinstance(event, EpochDone)]
    assert [event.epoch for event in rest] == [1]
    for k in range(len(members)):
        assert_rows_close(rest[0].metrics[k], straight[1].metrics[k], tolerance=0)


def test_member_state_is_a_plain_module_state_dict(setting):
    data, _ = setting
    group, _ = train(setting, [member(2.0), member(8.0)])
    model = build_model(SPEC, data.input_shape, 10)
    model.load_state_dict(group.member_state(1)["model"])
    with torch.no_grad():
        accuracy = float((model(data.test_x).argmax(-1) == data.test_y).float().mean())
    assert accuracy == pytest.approx(float(group.evaluate()["test_acc"][1]), abs=1e-6)


def test_dropout_students_group_like_alone(setting):
    """Members of a group share a seed, so they share dropout masks with their solo runs too."""
    spec = MLPSpec(hidden=[32], dropout=0.3, epochs=1, lr=0.05)
    members = [member(2.0, spec=spec), member(6.0, spec=spec)]
    _, grouped = train(setting, members, spec=spec)
    _, alone = train(setting, [members[1]], spec=spec)
    assert_rows_close(grouped[0].metrics[1], alone[0].metrics[0], tolerance=0)


def test_gradient_clipping_is_per_member(setting):
    members = [member(1.0), member(8.0)]
    _, grouped = train(setting, members, clip=0.05)  # gradient norms here are about 0.3
    _, alone = train(setting, [members[1]], clip=0.05)
    assert_rows_close(grouped[-1].metrics[1], alone[-1].metrics[0], tolerance=0)
    _, unclipped = train(setting, [members[1]])
    assert unclipped[-1].metrics[0]["train_loss"] != pytest.approx(alone[-1].metrics[0]["train_loss"], rel=1e-3)


def test_same_seed_same_numbers(setting):
    _, first = train(setting, [member(3.0, seed=5)], seed=5)
    _, second = train(setting, [member(3.0, seed=5)], seed=5)
    without_time = [{k: v for k, v in e.metrics[0].items() if k != "epoch_seconds"} for e in (first[-1], second[-1])]
    assert without_time[0] == without_time[1]
    _, other = train(setting, [member(3.0, seed=6)], seed=6)
    assert not math.isclose(first[-1].metrics[0]["train_loss"], other[-1].metrics[0]["train_loss"])


def test_a_group_across_seeds_equals_each_run_alone(setting):
    """Members of different seeds draw their own seed's batches inside one group."""
    members = [member(2.0, seed=0), member(2.0, seed=1), member(None, seed=1), member(6.0, seed=2)]
    group, grouped = train(setting, members)
    assert group.seeds == [0, 1, 2]
    for k, single in enumerate(members):
        _, alone = train(setting, [single], seed=single.seed)
        for epoch in range(EPOCHS):
            assert_rows_close(grouped[epoch].metrics[k], alone[epoch].metrics[0], tolerance=0)


def test_per_member_teachers_across_seeds(setting):
    """Each member distilling from its own cached teacher (born-again generations) gathers its own rows."""
    data, signal = setting
    generator = torch.Generator().manual_seed(7)
    own = torch.randn(2, 1, len(data.train_y), 10, generator=generator) * 3
    members = [member(3.0, seed=0), member(3.0, seed=1)]
    # agreement and KL stay measured against the experiment's teacher
    per_member = TeacherSignal(test_logits=signal.test_logits, train_logits=own, per_member=True)
    settings = LoopSettings(SPEC, BATCH, 1000, 0, torch.device("cpu"))
    group = StudentGroup(lambda: build_model(SPEC, data.input_shape, 10), members, data, per_member, settings)
    grouped = [e for e in group.run() if isinstance(e, EpochDone)]
    for k in range(2):
        single = TeacherSignal(test_logits=signal.test_logits, train_logits=own[k])
        alone = StudentGroup(lambda: build_model(SPEC, data.input_shape, 10), [members[k]], data, single,
                             LoopSettings(SPEC, BATCH, 1000, k, torch.device("cpu")))
        alone_epochs = [e for e in alone.run() if isinstance(e, EpochDone)]
        assert_rows_close(grouped[-1].metrics[k], alone_epochs[-1].metrics[0], tolerance=0)


# --- conv and ResNet students ------------------------------------------------------------------------
# vmap merges stacked conv weights into one grouped convolution whose rounding depends on the group size
# (measured before they were trained member by member: 1e-7 in logits after one step, percent-level
# test accuracy after a few epochs), so only an exact comparison catches a member depending on its group.

CONV_BATCH = 32


def conv_setting(input_shape, train=4 * CONV_BATCH, test=64):
    """Random inputs of `input_shape` with labels and a teacher's logits that favour the label."""
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.randint(0, 10, (count,), generator=generator)
        logits = torch.randn(count, 10, generator=generator) * 2
        logits[torch.arange(count), labels] += 5
        return torch.randn(count, *input_shape, generator=generator), labels, logits

    (train_x, train_y, teacher_train), (test_x, test_y, teacher_test) = split(train), split(test)
    data = Dataset("random", train_x, train_y, test_x, test_y, tuple(map(str, range(10))), "generated here")
    return data, TeacherSignal(test_logits=teacher_test[None], train_logits=teacher_train[None])


def train_stacked(data, signal, spec, members, hint=None):
    settings = LoopSettings(spec, CONV_BATCH, 1000, 0, torch.device("cpu"))
    with StudentGroup(lambda: build_model(spec, data.input_shape, 10), members, data, signal, settings, hint) as group:
        return group, [event for event in group.run() if isinstance(event, EpochDone)]


def conv_members(spec, data_len):
    """T = 1 and T = 4 students and a no-KD baseline, of seed 0."""
    spe = steps_per_epoch(data_len, CONV_BATCH)
    table = temperature_table(ConstantSchedule(), 1.0, spec.epochs, spe)
    return [Member(0, 0.9, table, t0=1.0), Member(0, 0.9, table * 4, t0=4.0),
            Member(0, 0.0, torch.ones_like(table), distills=False)]


def assert_member_equals_alone(group, k, alone, grouped_rows, alone_rows):
    ours, theirs = group.member_state(k), alone.member_state(0)
    for part in ("model", "regressor"):
        for name, tensor in theirs.get(part, {}).items():
            assert torch.equal(ours[part][name], tensor), f"{part}.{name}"
    for row, single in zip(grouped_rows, alone_rows, strict=True):
        assert_rows_close(row.metrics[k], single.metrics[0], tolerance=0)


@pytest.mark.parametrize("spec, input_shape", [
    (CNNSpec(channels=[4, 8], hidden=16, epochs=2), (1, 8, 8)),  # Conv2d, BatchNorm and dropout 0.5
    (CNNSpec(channels=[4, 8], hidden=16, epochs=2), (1, 40)),  # Conv1d
    (ResNetSpec(arch="resnet8", epochs=1), (3, 8, 8)),  # 1x1 stride-2 shortcuts
], ids=["cnn-images", "cnn-sequences", "resnet8"])
def test_conv_students_in_a_group_equal_themselves_alone(spec, input_shape):
    """Bitwise: every weight, BatchNorm statistic and metric of a member of a group of 3, after 4 or 8 steps."""
    data, signal = conv_setting(input_shape)
    members = conv_members(spec, len(data.train_y))
    group, grouped = train_stacked(data, signal, spec, members)
    for k, single in enumerate(members):
        alone, solo = train_stacked(data, signal, spec, [single])
        assert_member_equals_alone(group, k, alone, grouped, solo)


def test_conv_students_of_several_seeds_equal_themselves_alone():
    """Members of different seeds feed their own batches (K, B, ...) through the member-by-member forward."""
    spec = CNNSpec(channels=[4, 8], hidden=16, dropout=0.0, epochs=1)
    data, signal = conv_setting((1, 8, 8))
    _, distils, baseline = conv_members(spec, len(data.train_y))
    members = [distils, Member(1, baseline.alpha, baseline.temperatures, distills=False)]
    group, grouped = train_stacked(data, signal, spec, members)
    assert group.seeds == [0, 1]
    for k, single in enumerate(members):
        alone, solo = train_stacked(data, signal, spec, [single])
        assert_member_equals_alone(group, k, alone, grouped, solo)


def test_conv_students_with_a_feature_map_hint_equal_themselves_alone():
    """The hint's 1x1-conv regressor is a convolution too: trained member by member like the student."""
    spec = CNNSpec(channels=[4, 8], hidden=16, epochs=1)
    data, signal = conv_setting((1, 8, 8))
    features = torch.randn(1, len(data.train_y), 6, 8, 8, generator=torch.Generator().manual_seed(1))
    signal = TeacherSignal(test_logits=signal.test_logits, train_logits=signal.train_logits, train_features=features)
    hint = Hint(weight=1.0, student_layer="features.0", teacher_shape=(6, 8, 8))
    members = conv_members(spec, len(data.train_y))[:2]
    group, grouped = train_stacked(data, signal, spec, members, hint)
    assert group.member_state(1)["regressor"]["weight"].shape == (6, 4, 1, 1)
    alone, solo = train_stacked(data, signal, spec, [members[1]], hint)
    assert_member_equals_alone(group, 1, alone, grouped, solo)
    assert grouped[0].metrics[1]["train_feature"] == solo[0].metrics[0]["train_feature"]


def test_dropout_students_of_different_seeds_are_not_grouped(setting):
    data, signal = setting
    spec = MLPSpec(hidden=[16], dropout=0.2, epochs=1)
    settings = LoopSettings(spec, BATCH, 1000, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="several seeds train together only"):
        StudentGroup(lambda: build_model(spec, data.input_shape, 10), [member(1.0, seed=0, spec=spec),
                     member(1.0, seed=1, spec=spec)], data, signal, settings)


def test_channels_last_only_for_image_conv_nets_on_cuda():
    """The layout decision is made without CUDA present (torch.device('cuda') needs no GPU), so it is tested here."""
    from kdtemp.config.model_specs import CNNSpec
    from kdtemp.engine.job_setup import wants_channels_last
    from kdtemp.engine.loop import to_memory_format

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    image_cnn = build_model(CNNSpec(channels=[4]), (1, 8, 8), 10)
    sequence_cnn = build_model(CNNSpec(channels=[4]), (1, 40), 10)
    mlp = build_model(MLPSpec(hidden=[8]), (1, 8, 8), 10)
    assert wants_channels_last(image_cnn, cuda) and not wants_channels_last(image_cnn, cpu)
    assert not wants_channels_last(sequence_cnn, cuda) and not wants_channels_last(mlp, cuda)
    images = torch.randn(2, 3, 4, 4)
    converted = to_memory_format(images, True)
    assert converted.is_contiguous(memory_format=torch.channels_last) and torch.equal(converted, images)
    assert to_memory_format(images, False) is images
    sequences = torch.randn(2, 3, 4)
    assert to_memory_format(sequences, True) is sequences


# --- augmentation across seeds: one group, one teacher pass per step ------------------------------


def augmented_members(spec, data_len):
    """Seeds 0, 1 and 2 (a T = 1 student, a T = 4 student, a no-KD baseline): one group, a batch row per seed."""
    table = temperature_table(ConstantSchedule(), 1.0, spec.epochs, steps_per_epoch(data_len, CONV_BATCH))
    return [Member(0, 0.9, table, t0=1.0), Member(1, 0.9, table * 4, t0=4.0),
            Member(2, 0.0, torch.ones_like(table), distills=False)]


def train_augmented(data, signal, spec, members, seed, hint=None):
    settings = LoopSettings(spec, CONV_BATCH, 1000, seed, torch.device("cpu"), augment=True)
    with StudentGroup(lambda: build_model(spec, data.input_shape, 10), members, data, signal, settings, hint) as group:
        return group, [event for event in group.run() if isinstance(event, EpochDone)]


@pytest.mark.parametrize("with_hint", [False, True], ids=["logits", "hint"])
def test_augmented_students_of_several_seeds_equal_themselves_alone(with_hint):
    """Bitwise: each seed's row draws the crops, flips and order it draws alone, and its teacher logits (and
    hint features) are those of the teacher on its row alone. On CPU the teacher runs once per seed row: the
    epoch's last batch of 3 would round differently inside one call on the 3 rows concatenated."""
    spec = CNNSpec(channels=[4, 8], hidden=16, dropout=0.0, epochs=1)
    data, _ = conv_setting((3, 8, 8), train=4 * CONV_BATCH + 3)
    torch.manual_seed(5)
    teacher = build_model(CNNSpec(channels=[4], hidden=12), data.input_shape, 10).eval()
    calls = []
    teacher.register_forward_pre_hook(lambda _module, args: calls.append(len(args[0])))
    signal = TeacherSignal(test_logits=torch.randn(1, len(data.test_y), 10), networks=(teacher,))
    hint = Hint(weight=1.0, student_layer=None, teacher_shape=(12,)) if with_hint else None
    members = augmented_members(spec, len(data.train_y))
    group, grouped = train_augmented(data, signal, spec, members, 0, hint)
    assert group.seeds == [0, 1, 2]
    assert calls == [CONV_BATCH] * 3 * 4 + [3] * 3  # per seed row, each step; the tail batch holds 3
    for k, single in enumerate(members):
        alone, solo = train_augmented(data, signal, spec, [single], single.seed, hint)
        assert_member_equals_alone(group, k, alone, grouped, solo)
        if with_hint and single.distills:
            assert grouped[0].metrics[k]["train_feature"] == solo[0].metrics[0]["train_feature"]
