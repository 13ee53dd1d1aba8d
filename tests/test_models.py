"""The model registry: every arch builds for its inputs, with the published sizes."""

import typing

import pytest
import torch
from torch import nn

from kdtemp.config import RESNET_ARCHS, CNNSpec, MLPSpec, ModelSpec, ResNetSpec
from kdtemp.errors import ConfigError
from kdtemp.models import build_model, count_parameters, model_names


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
