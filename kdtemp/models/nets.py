"""The built-in nets (MLP, CNN, the CIFAR ResNets), shaped by the dataset's inputs and classes.

Every built-in model ends in a linear layer named `classifier`, so the penultimate features (its
input) can be captured with a hook for hint distillation without editing the model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdtemp.config.model_specs import RESNET_ARCHS, CNNSpec, MLPSpec, ResNetSpec
from kdtemp.errors import ConfigError
from kdtemp.models.registry import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("mlp")
def build_mlp(spec: MLPSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), list(spec.hidden), num_classes, spec.dropout)


class CNN(nn.Module):
    """[conv -> BN -> ReLU -> maxpool] per entry of `channels`, then fc -> ReLU -> dropout -> classifier."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        channels: list[int],
        kernel_size: int,
        hidden: int,
        num_classes: int,
        dropout: float,
    ):
        super().__init__()
        image = len(input_shape) == 3
        conv, norm, pool = (
            (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if image else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d)
        )
        layers: list[nn.Module] = []
        in_channels, spatial = input_shape[0], list(input_shape[1:])
        for out_channels in channels:
            layers += [
                conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                norm(out_channels),
                nn.ReLU(),
                pool(2),
            ]
            in_channels = out_channels
            spatial = [size // 2 for size in spatial]
        if min(spatial) < 1:
            raise ConfigError(
                f"cnn with {len(channels)} pooling blocks shrinks inputs of shape {input_shape} to nothing; "
                "use fewer channels entries"
            )
        layers += [
            nn.Flatten(),
            nn.Linear(in_channels * math.prod(spatial), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        ]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("cnn")
def build_cnn(spec: CNNSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) not in (2, 3):
        raise ConfigError(f"cnn needs sequence (C, L) or image (C, H, W) inputs, got shape {input_shape}")
    return CNN(input_shape, list(spec.channels), spec.kernel_size, spec.hidden, num_classes, spec.dropout)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 as RepDistiller builds it: depth 6n+2, three stages."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for index, planes in enumerate(widths[1:]):
            layers = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        he_normal_convolutions(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.classifier(torch.flatten(self.pool(out), 1))


RESNET_SHAPES = {
    name: (
        int(name.removeprefix("resnet").split("x")[0]),
        (32, 64, 128, 256) if name.endswith("x4") else (16, 16, 32, 64),
    )
    for name in RESNET_ARCHS
}


@register_model(*RESNET_ARCHS)
def build_resnet(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    depth, widths = RESNET_SHAPES[spec.arch]
    return CifarResNet(depth, widths, image_channels(spec, input_shape), num_classes)


def image_channels(spec: ResNetSpec, input_shape: tuple[int, ...]) -> int:
    """Channels of (C, H, W) inputs: the CIFAR ResNets and the zoo are made of 2-d convolutions."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"{spec.arch} needs image inputs (C, H, W), got shape {input_shape}; "
            "use arch cnn or mlp for sequences"
        )
    return input_shape[0]


def he_normal_convolutions(model: nn.Module) -> None:
    """Convolutions drawn from N(0, 2 / (k*k*out)) with zero biases (He et al. 2015, fan-out), as
    RepDistiller initialises its ResNets, WRN, VGG, MobileNetV2 and ResNet-50; the ShuffleNets keep
    PyTorch's default init there."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
