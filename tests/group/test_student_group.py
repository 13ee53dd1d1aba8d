"""The student group's contract with what surrounds it: the temperature it logs, the hooks it leaves,
the files and accuracies it writes, and its forward under CUDA's bf16 autocast policy."""

import copy
import math

import pandas as pd
import pytest
import torch
import yaml
from helpers import job_events

import kdtemp.data.builtin
import kdtemp.group.student_group
import kdtemp.store.files
import kdtemp.sweep.experiment
import kdtemp.sweep.runner
from kdtemp.config.loading import load_config
from kdtemp.config.model_specs import CNNSpec, MLPSpec, ResNetSpec
from kdtemp.data.dataset import Dataset
from kdtemp.data.registry import load_dataset
from kdtemp.engine.job_setup import per_batch_teachers
from kdtemp.engine.loop import EpochDone, LoopSettings, Member, TeacherSignal
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.features import FeatureCapture
from kdtemp.models.registry import build_model

CLASSES = tuple("abcdefghij")


def random_dataset(shape, train=200, test=50, seed=0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset("random", torch.randn(train, *shape, generator=generator), torch.randint(0, 10, (train,), generator=generator),
                   torch.randn(test, *shape, generator=generator), torch.randint(0, 10, (test,), generator=generator),
                   CLASSES, "test")


def one_epoch(group: StudentGroup) -> dict:
    with group:
        return [event for event in group.run() if isinstance(event, EpochDone)][-1].metrics


# --- 12.5: logit-std's effective temperature with an ensemble ----------------------------------


def hand_std(row) -> float:
    """Unbiased std of one sample's logits, as logit-std divides by (Sun et al. 2024), in float64."""
    mean = sum(row) / len(row)
    return math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))


def hand_effective_std(teachers: torch.Tensor, ensemble: str, weights) -> list[float]:
    """Per sample: std of the mean logits (mean_logits), else the weighted mean of each teacher's std."""
    values = teachers.double().tolist()
    count, samples = len(values), len(values[0])
    shares = [w / sum(weights) for w in weights] if weights is not None else [1 / count] * count
    result = []
    for b in range(samples):
        if ensemble == "mean_logits":
            result.append(hand_std([sum(values[i][b][c] for i in range(count)) / count for c in range(len(values[0][b]))]))
        else:
            result.append(sum(shares[i] * hand_std(values[i][b]) for i in range(count)))
    return result


ENSEMBLES = [("mean_logits", None), ("weighted", [1.0, 2.0, 5.0]), ("mean_probs", None)]


def three_teachers(samples: int) -> torch.Tensor:
    """Three teachers of very different logit scales, so every way of combining them gives its own std."""
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3, samples, 10, generator=generator) * torch.tensor([1.0, 3.0, 8.0]).view(3, 1, 1)


@pytest.mark.parametrize("ensemble, weights", ENSEMBLES)
def test_logged_effective_temperature_is_that_of_the_standardised_logits(ensemble, weights):
    """A whole epoch sees every training sample once, so it logs t0 * the mean over the set of the hand std."""
    data = random_dataset((1, 12))
    teachers = three_teachers(len(data.train_y))
    t0 = 2.0
    signal = TeacherSignal(test_logits=three_teachers(len(data.test_y)), train_logits=teachers, ensemble=ensemble,
                           weights=None if weights is None else torch.tensor(weights))
    spec = MLPSpec(hidden=[8], epochs=1)
    member = Member(0, 0.9, torch.full((4,), t0), t0=t0, standardize=True)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10), [member], data, signal,
                         LoopSettings(spec, 64, 64, 0, torch.device("cpu")))
    row = one_epoch(group)[0]
    expected = t0 * sum(hand_effective_std(teachers, ensemble, weights)) / len(data.train_y)
    assert row["effective_temperature"] == pytest.approx(expected, rel=1e-5)
    assert row["temperature"] == pytest.approx(t0)


# --- 12.9, 12.10, 12.12: a sweep of two groups with hints and augmented images -------------------


@pytest.fixture(scope="module")
def image_sweep(tmp_path_factory):
    """Fashion-MNIST-format images, augmentation (teachers run per batch), hints, one run per group.

    30 test samples: accuracies k/30 are not exact in float32, so a float32 path shows in the CSV.
    Returns the config, the teachers the sweep loaded, and every FeatureCapture made during it.
    """
    from helpers import write_idx_set

    import kdtemp.data.builtin
    import kdtemp.sweep.runner
    from kdtemp.teachers.training import train_teacher

    directory = tmp_path_factory.mktemp("image-sweep")
    write_idx_set(directory / "data" / "fashion-mnist", train_count=100, test_count=30)
    tree = {"runs_dir": str(directory / "runs"),
            "data": {"dataset": "fashion-mnist", "root": str(directory / "data"), "augment": True, "batch_size": 32},
            "train": {"max_group_size": 1},
            "teacher": {"channels": [4], "hidden": 16, "epochs": 1},
            "student": {"hidden": [16], "epochs": 2},
            "kd": {"temperatures": [2], "seeds": [0], "feature_weight": 0.5}}
    path = directory / "images.yaml"
    path.write_text(yaml.safe_dump(tree))
    loaded, captures = [], []
    original_load, original_init = kdtemp.sweep.experiment.load_teachers, FeatureCapture.__init__

    def load_teachers(*args):
        loaded.extend(original_load(*args))
        return loaded

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        captures.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kdtemp.data.builtin, "SYSTEM_FASHION_MNIST_DIRS", [directory / "absent"])
        patch.setattr(kdtemp.sweep.experiment, "load_teachers", load_teachers)
        patch.setattr(FeatureCapture, "__init__", init)
        config = load_config(path)
        train_teacher(config)
        events = job_events(kdtemp.sweep.runner.sweep, config)
        data = load_dataset(config.data)
    assert events[-1].completed == 2  # the KD run and the baseline, each its own group
    return config, data, loaded, captures


def test_hooks_end_with_their_group(image_sweep):
    """Two groups ran on the shared teacher: no hook stays on it and no capture list holds a feature."""
    _, _, teachers, captures = image_sweep
    assert teachers and captures
    for teacher in teachers:
        modules = list(teacher.model.modules())
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules) == 0
    assert [len(capture.values) for capture in captures] == [0] * len(captures)


def test_accuracies_are_exact_fractions_of_counts(image_sweep):
    """test_acc * N and train_acc * N are integers, and the final test_acc is model.pt's own recount."""
    config, data, _, _ = image_sweep
    layout = kdtemp.store.layout.ExperimentLayout.of(config.runs_dir, config.name)
    teacher = pd.read_csv(layout.teacher_dir / "metrics.csv")
    for run_dir in layout.run_dirs():
        frame = pd.read_csv(run_dir / "metrics.csv")
        for column, count in [("test_acc", len(data.test_y)), ("train_acc", len(data.train_y)), ("agreement", len(data.test_y))]:
            for value in [*frame[column], *(teacher[column] if column in teacher else [])]:
                assert value * count == pytest.approx(round(value * count), abs=1e-9), (run_dir.name, column, value)
        model = build_model(config.student, data.input_shape, data.num_classes)
        model.load_state_dict(kdtemp.store.files.load_checkpoint(run_dir / "model.pt")["state_dict"])
        with torch.no_grad():
            correct = int((model.eval()(data.test_x).argmax(-1) == data.test_y).sum())
        assert frame["test_acc"].iloc[-1] == correct / len(data.test_y)


def test_saved_files_load_without_map_location(image_sweep):
    config, _, _, _ = image_sweep
    files = list(kdtemp.store.layout.ExperimentLayout.of(config.runs_dir, config.name).root.rglob("*.pt"))
    assert len(files) >= 4  # the teacher, its logits cache, two students
    for path in files:
        tensors = [v for v in _leaves(torch.load(path, map_location=None, weights_only=True)) if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == "cpu" for t in tensors), path


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


class OnCuda(torch.Tensor):
    """A CPU tensor that reports the CUDA device until moved to the CPU: a GPU tensor on a CPU-only box."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__self__", None) is torch._C.TensorBase.device:
            return torch.device("cuda", 0)
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def _on_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.as_subclass(OnCuda)
    if isinstance(value, dict):
        return {key: _on_cuda(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_on_cuda(item) for item in value]
    return value


def test_checkpoints_are_saved_with_cpu_tensors(tmp_path):
    """A trainer's state (model and optimizer, nested dicts and lists) saved from the GPU loads as plain CPU tensors."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"epoch": 1, "trainer": {"model": model.state_dict(), "optimizer": optimizer.state_dict()}}
    on_gpu = _on_cuda(state)
    assert on_gpu["trainer"]["model"]["weight"].device.type == "cuda"
    kdtemp.store.files.atomic_torch_save(on_gpu, tmp_path / "checkpoint.pt")
    loaded = torch.load(tmp_path / "checkpoint.pt", map_location=None, weights_only=True)
    expected, got = list(_leaves(state)), list(_leaves(loaded))
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        if isinstance(want, torch.Tensor):
            assert type(have) is torch.Tensor and have.device.type == "cpu" and torch.equal(have, want)
        else:
            assert have == want


# --- 13.1: bf16 autocast as CUDA applies it -------------------------------------------------------


@pytest.fixture
def cuda_convolution_policy(monkeypatch):
    """CPU autocast with CUDA's cast policy for aten::convolution (inputs to bf16), and the group's forward under it.

    CPU autocast leaves aten::convolution in float32, which is why a grouped conv/BN student passes on CPU
    and not on CUDA. The registration is removed afterwards.
    """
    autocast_key = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def convolution_in_bf16(inputs, weight, bias, *args):
        cast = [t.to(torch.bfloat16) if t is not None else None for t in (inputs, weight, bias)]
        with torch._C._ExcludeDispatchKeyGuard(autocast_key):
            return torch.ops.aten.convolution.default(*cast, *args)

    library = torch.library.Library("aten", "IMPL")
    library.impl("convolution", convolution_in_bf16, "AutocastCPU")
    monkeypatch.setattr(kdtemp.group.student_group, "autocast", lambda device, enabled: torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the policy is in force
        probe = torch.ops.aten.convolution.default(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1), None,
                                                   [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    assert probe.dtype == torch.bfloat16
    yield
    library._destroy()


def test_grouped_batchnorm_students_train_under_cuda_autocast(cuda_convolution_policy, monkeypatch):
    """resnet8 students stacked with vmap (as on CUDA; on CPU conv students run member by member) under bf16
    autocast: bf16 convolutions feed BatchNorm; a member matches its plain model."""
    monkeypatch.setattr(kdtemp.group.student_group, "vmap_rounds_by_group", lambda model: False)
    data = random_dataset((3, 8, 8), train=64, test=32)
    spec = ResNetSpec(arch="resnet8", epochs=1)
    signal = TeacherSignal(test_logits=torch.randn(1, 32, 10), train_logits=torch.randn(1, 64, 10) * 3)
    members = [Member(0, 0.9, torch.full((2,), t), t0=t) for t in (2.0, 4.0)]
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10), members, data, signal,
                         LoopSettings(spec, 32, 32, 0, torch.device("cpu"), amp=True))
    assert not group.member_by_member
    rows = one_epoch(group)
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    model = build_model(spec, data.input_shape, 10)
    model.load_state_dict(group.member_state(1)["model"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = float(torch.nn.functional.cross_entropy(model.eval()(data.test_x).float(), data.test_y))
    assert rows[1]["test_loss"] == pytest.approx(loss, rel=2e-2)


# --- 13.5: the per-batch teacher forward in channels_last on CUDA --------------------------------


def test_per_batch_teachers_take_channels_last_on_cuda_only():
    """The decision needs no GPU: a torch.device('cuda') object is enough."""
    cnn = build_model(CNNSpec(channels=[4]), (3, 8, 8), 10)
    networks, channels_last = per_batch_teachers([cnn], torch.device("cuda"))
    assert channels_last and networks[0].features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert per_batch_teachers([build_model(CNNSpec(channels=[4]), (3, 8, 8), 10)], torch.device("cpu"))[1] is False
    assert per_batch_teachers([build_model(MLPSpec(hidden=[8]), (3, 8, 8), 10)], torch.device("cuda"))[1] is False


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_group_feeds_per_batch_teachers_in_their_layout(channels_last):
    data = random_dataset((3, 8, 8), train=64, test=16)
    teacher = build_model(CNNSpec(channels=[4]), data.input_shape, 10).eval()
    layouts = []
    teacher.register_forward_pre_hook(lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    signal = TeacherSignal(test_logits=torch.randn(1, 16, 10), networks=(teacher,), channels_last=channels_last)
    spec = MLPSpec(hidden=[8], epochs=1)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10), [Member(0, 0.9, torch.full((2,), 2.0), t0=2.0)],
                         data, signal, LoopSettings(spec, 32, 32, 0, torch.device("cpu")))
    one_epoch(group)
    assert layouts == [channels_last] * 2


# --- 13.7: the per-batch teacher's classifier in float32 under autocast ---------------------------


def test_per_batch_teacher_computes_in_float32_under_autocast(cuda_convolution_policy):
    """With augmentation the soft targets come from the teacher run on every batch: even with the students
    under CUDA's bf16 policy, its logits are a float32 forward (bf16 features would move softmax(t/T) at
    T = 1 by up to 1.6e-1 relative for a `cnn` teacher, measured), checked against a float64 forward."""
    data = random_dataset((3, 16, 16), train=128, test=16)
    torch.manual_seed(0)
    teacher = build_model(CNNSpec(channels=[8, 16], hidden=32), data.input_shape, 10).eval()
    with torch.no_grad():
        teacher.classifier.weight.mul_(80.0)  # logits of a trained teacher's size
    signal = TeacherSignal(test_logits=torch.randn(1, 16, 10), networks=(teacher,))
    spec = MLPSpec(hidden=[8], epochs=1)
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10), [Member(0, 0.9, torch.full((1,), 1.0))],
                         data, signal, LoopSettings(spec, 128, 128, 0, torch.device("cpu"), amp=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as if called inside the students' autocast
        logits = group.teacher_batch(torch.arange(128), data.train_x)[0][0]
    with torch.no_grad():
        reference = copy.deepcopy(teacher).double()(data.train_x[:128].double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = teacher(data.train_x[:128]).float()  # what a bf16 teacher pass gives under this policy
    assert reference.abs().amax(-1).median() > 5
    assert logits.dtype == torch.float32
    assert torch.allclose(logits.double(), reference, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(rounded.double(), reference, rtol=1e-5, atol=1e-4)  # the policy does bite
