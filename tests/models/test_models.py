"""The model registry: every arch builds for its inputs, with the published sizes."""

import copy
import itertools
import math
import typing

import pytest
import torch
from helpers import REPO
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

import kdtemp.group.student_group
from kdtemp.config.loading import load_config
from kdtemp.config.model_specs import (
    RESNET_ARCHS,
    ZOO_ARCHS,
    CNNSpec,
    MLPSpec,
    ModelSpec,
    ResNetSpec,
)
from kdtemp.data.dataset import Dataset
from kdtemp.engine.loop import EpochDone, LoopSettings, Member, TeacherSignal
from kdtemp.errors import ConfigError
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.footprint import count_parameters
from kdtemp.models.registry import build_model, model_names


def test_registry_covers_every_arch_the_config_accepts():
    union = typing.get_args(typing.get_args(ModelSpec)[0])
    accepted = set()
    for spec_class in union:
        accepted.update(typing.get_args(spec_class.model_fields["arch"].annotation))
    assert accepted == set(model_names())


@pytest.mark.parametrize("shape", [(1, 40), (1, 28, 28), (3, 32, 32)])
def test_mlp_and_cnn_build_for_sequences_and_images(shape):
    for spec in (MLPSpec(hidden=[16]), CNNSpec(channels=[4, 8], hidden=16)):
        model = build_model(spec, shape, 7)
        assert model(torch.randn(2, *shape)).shape == (2, 7)
    convs = [m for m in build_model(CNNSpec(), shape, 10).modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert all(isinstance(c, nn.Conv1d if len(shape) == 2 else nn.Conv2d) for c in convs)


# Published sizes (RepDistiller / He et al. 2016): an independent check of the architecture.
@pytest.mark.parametrize("arch, classes, parameters", [
    ("resnet20", 10, 272_474), ("resnet56", 10, 855_770), ("resnet110", 10, 1_730_714),
    ("resnet8x4", 100, 1_233_540), ("resnet32x4", 100, 7_433_860),
])
def test_resnet_sizes(arch, classes, parameters):
    assert count_parameters(build_model(ResNetSpec(arch=arch), (3, 32, 32), classes)) == parameters


@pytest.mark.parametrize("arch", RESNET_ARCHS)
def test_every_resnet_runs_forward(arch):
    model = build_model(ResNetSpec(arch=arch), (3, 32, 32), 10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_refuses_sequences():
    with pytest.raises(ConfigError, match="resnet20 needs image inputs"):
        build_model(ResNetSpec(arch="resnet20"), (1, 40), 10)


def test_cnn_too_deep_for_its_input():
    with pytest.raises(ConfigError, match="shrinks inputs"):
        build_model(CNNSpec(channels=[4] * 7), (1, 40), 10)


def test_every_model_ends_in_a_classifier_layer():
    for spec, shape in [(MLPSpec(), (1, 40)), (CNNSpec(), (1, 40)), (ResNetSpec(arch="resnet8"), (3, 32, 32))]:
        model = build_model(spec, shape, 10)
        assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 10


# --- issue 14: RepDistiller's CIFAR zoo ------------------------------------------------------------

ZOO_STUDENTS = ("wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2")


# Sizes at 100 classes, in millions to 2 decimals, as the CIFAR-100 KD literature quotes them for
# RepDistiller's models (Tian et al. 2020, github.com/HobbitLong/RepDistiller; issue 14's list).
@pytest.mark.parametrize("arch, millions", [
    ("wrn_40_2", 2.26), ("wrn_16_2", 0.70), ("wrn_40_1", 0.57), ("vgg13", 9.46), ("mobilenetv2", 0.81),
    ("shufflenetv1", 0.95), ("shufflenetv2", 1.36), ("resnet50", 23.71),
])
def test_zoo_sizes(arch, millions):
    assert round(count_parameters(build_model(ResNetSpec(arch=arch), (3, 32, 32), 100)) / 1e6, 2) == millions


def test_vgg8_is_repdistillers_vgg8_bn():
    """VGG-8 is quoted as 3.96M: the count of RepDistiller's `vgg8` without batch norm (3,962,084).
    Its model_dict trains `vgg8_bn` (3,965,028 = 3.97M), as we do: conv3x3 with bias, BN, at 100 classes."""
    widths = [3, 64, 128, 256, 512, 512]
    convs = sum(9 * a * b + b for a, b in itertools.pairwise(widths))
    norms = sum(2 * b for b in widths[1:])
    model = build_model(ResNetSpec(arch="vgg8"), (3, 32, 32), 100)
    assert count_parameters(model) == convs + norms + 512 * 100 + 100
    assert round((convs + 512 * 100 + 100) / 1e6, 2) == 3.96


def test_channel_shuffle_reads_groups_transposed():
    """Output channel i is input channel (i mod g) * C/g + i div g (Zhang et al. 2018, figure 1), by a hand loop."""
    from kdtemp.models.zoo import channel_shuffle

    x = torch.randn(2, 12, 3, 3)
    for groups in (2, 3, 4):
        shuffled = channel_shuffle(x, groups)
        for i in range(12):
            assert torch.equal(shuffled[:, i], x[:, (i % groups) * (12 // groups) + i // groups])


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_zoo_runs_any_image_size_and_ends_in_a_classifier(arch):
    model = build_model(ResNetSpec(arch=arch), (3, 32, 32), 10).eval()
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
        assert model(torch.randn(1, 3, 12, 8)).shape == (1, 10)
    with pytest.raises(ConfigError, match=f"{arch} needs image inputs"):
        build_model(ResNetSpec(arch=arch), (1, 40), 10)


@pytest.mark.parametrize("arch", ZOO_STUDENTS)
def test_zoo_vmapped_over_members_is_each_member_alone(arch):
    """Two stacked members under vmap in train mode give the logits and updated batch-norm running
    statistics of each member computed alone, in float64 (in float32 the grouped convolutions' rounding
    is amplified by batch norms over 2 samples at 1x1). Backward under vmap is the group test's below.
    The teachers share these students' blocks (WRN-40 / VGG-13), bar ResNet-50's bottleneck (forward
    test only: slow on CPU)."""
    torch.manual_seed(0)
    members = [build_model(ResNetSpec(arch=arch), (3, 32, 32), 10).double() for _ in range(2)]
    inputs = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    template = copy.deepcopy(members[0]).to("meta")
    params, buffers = stack_module_state(members)
    with torch.no_grad():
        logits = vmap(lambda p, b: functional_call(template, (p, b), (inputs,)), randomness="same")(params, buffers)
        alone = [member(inputs) for member in members]
    for k, member in enumerate(members):
        torch.testing.assert_close(logits[k], alone[k], rtol=1e-9, atol=1e-9)
        for name, buffer in member.named_buffers():
            torch.testing.assert_close(buffers[name][k], buffer, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ZOO_STUDENTS)
def test_zoo_students_train_as_a_vmapped_group(arch, monkeypatch):
    """A 2-member StudentGroup takes an SGD step vmapped, as on CUDA (on CPU conv members run one by one,
    which the forward test above covers); each member, loaded into a plain model, gives the test loss
    the group reports, and its classifier moved."""
    monkeypatch.setattr(kdtemp.group.student_group, "vmap_rounds_by_group", lambda model: False)
    generator = torch.Generator().manual_seed(0)
    data = Dataset("random", torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator),
                   torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 10, (4,), generator=generator),
                   tuple("abcdefghij"), "test")
    spec = ResNetSpec(arch=arch, epochs=1)
    signal = TeacherSignal(test_logits=torch.randn(1, 4, 10), train_logits=torch.randn(1, 8, 10) * 3)
    members = [Member(0, 0.9, torch.full((1,), t), t0=t) for t in (2.0, 4.0)]
    group = StudentGroup(lambda: build_model(spec, data.input_shape, 10), members, data, signal,
                         LoopSettings(spec, 8, 8, 0, torch.device("cpu")))
    assert not group.member_by_member
    initial = group.params["classifier.weight"].detach().clone()
    with group:
        rows = [e for e in group.run() if isinstance(e, EpochDone)][-1].metrics
    for k, row in enumerate(rows):
        assert not torch.equal(initial[k], group.params["classifier.weight"][k])
        model = build_model(spec, data.input_shape, 10)
        model.load_state_dict(group.member_state(k)["model"])
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(model.eval()(data.test_x), data.test_y))
        assert math.isfinite(row["train_loss"]) and row["test_loss"] == pytest.approx(loss, rel=1e-4)


DATASET_SHAPES = {"mnist1d": ((1, 40), 10, None), "fashion-mnist": ((1, 28, 28), 10, None),
                  "cifar10": ((3, 32, 32), 10, None), "cifar100": ((3, 32, 32), 100, None),
                  "text": ((2, 48), 4, 900)}  # the synthetic reviews: 4 classes, ~800 tokens, texts up to ~45


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_builds_its_models(path):
    config = load_config(path)
    shape, classes, vocab_size = DATASET_SHAPES[config.data.dataset]
    for spec in [*config.teacher_specs(), config.student]:
        assert build_model(spec, shape, classes, vocab_size).classifier.out_features == classes


@pytest.mark.parametrize("name, teacher, student", [
    ("cifar100-wrn", "wrn_40_2", "wrn_16_2"), ("cifar100-vgg", "vgg13", "vgg8"),
    ("cifar100-shufflenet", "resnet32x4", "shufflenetv2"), ("cifar100-mobilenet", "vgg13", "mobilenetv2"),
])
def test_zoo_configs_follow_repdistillers_recipe(name, teacher, student):
    """RepDistiller's train_student.py: SGD 0.05 (0.01 for MobileNetV2/ShuffleNet students), momentum 0.9,
    weight decay 5e-4, 240 epochs with x0.1 at 150/180/210, batch 64, crop + flip."""
    config = load_config(REPO / "configs" / f"{name}.yaml")
    assert (config.data.dataset, config.data.batch_size, config.data.augment) == ("cifar100", 64, True)
    assert (config.teacher.arch, config.student.arch) == (teacher, student)
    for spec, lr in ((config.teacher, 0.05), (config.student, 0.01 if "net" in student else 0.05)):
        assert (spec.optimizer, spec.lr, spec.momentum, spec.weight_decay, spec.nesterov) == ("sgd", lr, 0.9, 5e-4, False)
        assert (spec.epochs, spec.lr_schedule, spec.lr_milestones, spec.lr_gamma) == (240, "multistep", [150, 180, 210], 0.1)


def test_export_picks_the_run_of_best_validation_accuracy_not_of_best_test(tmp_path):
    """`kdtemp export` without a run id: the last-epoch validation accuracy chooses, where test would choose
    the other run."""
    from helpers import write_run

    from kdtemp.models.export import best_run
    from kdtemp.store.layout import ExperimentLayout

    import json

    import pandas as pd

    def run(run_id, t0, test, val, val_is_test=False):
        run_dir = write_run(root, run_id, "constant", t0, 0, test, val_acc=val)
        summary = json.loads((run_dir / "summary.json").read_text())
        final = pd.read_csv(run_dir / "metrics.csv").iloc[-1]
        summary.update(final={"test_acc": float(final["test_acc"]), "val_acc": float(final["val_acc"])},
                       val_is_test=val_is_test)
        (run_dir / "summary.json").write_text(json.dumps(summary))

    root = tmp_path / "runs" / "pick"
    run("constant-T4-s0", 4.0, 0.80, 0.60)  # best on test
    run("constant-T8-s0", 8.0, 0.70, 0.75)  # best on validation
    assert best_run(ExperimentLayout(root)) == "constant-T8-s0"
