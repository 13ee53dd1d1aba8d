"""The CIFAR knowledge-distillation zoo of RepDistiller (Tian et al. 2020, CRD) and mdistiller.

Wide ResNets, VGG with batch norm, MobileNetV2, ShuffleNetV1/V2 and the bottleneck ResNet-50 as
those repositories build them for 32x32 inputs, so that their teacher -> student pairs (WRN-40-2 ->
WRN-16-2, VGG-13 -> VGG-8, ResNet-32x4 -> ShuffleNetV2, VGG-13 -> MobileNetV2, ResNet-50 ->
MobileNetV2) have the published sizes; tests/models/test_models.py checks each count. Each ends in global
average pooling and a linear `classifier`, so any H x W works and hints capture the pooled features.
Nothing here updates a tensor in place outside batch norm, so stacked members run under `vmap`.
"""

from __future__ import annotations

import torch
from torch import nn

from kdtemp.config.model_specs import ResNetSpec
from kdtemp.models.nets import he_normal_convolutions, image_channels
from kdtemp.models.registry import register_model


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution without bias ('same' padding) followed by batch norm: the unit every net here repeats."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
    )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (Zhang et al. 2018): (g, C/g) channels read as (C/g, g). A view,
    not an in-place op."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def small_classifier(classifier: nn.Linear) -> None:
    """RepDistiller's VGG and MobileNetV2 start from a classifier of N(0, 0.01^2) weights and zero bias."""
    nn.init.normal_(classifier.weight, 0.0, 0.01)
    nn.init.zeros_(classifier.bias)


class PooledClassifier(nn.Module):
    """features -> global average pool -> `classifier`: the common tail of the zoo."""

    features: nn.Module
    classifier: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


# --- Wide ResNets (Zagoruyko & Komodakis 2016) ---------------------------------------------------


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 conv on the pre-activated input when the width or stride changes."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False) if in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(PooledClassifier):
    """WRN-depth-k: depth 6n+4, three stages of n pre-activation blocks of widths 16k, 32k, 64k."""

    def __init__(self, depth: int, widen: int, in_channels: int, num_classes: int):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        for stage, planes in enumerate(widths[1:]):
            for block in range(blocks_per_stage):
                layers.append(
                    PreActBlock(
                        widths[stage] if block == 0 else planes, planes, 2 if stage > 0 and block == 0 else 1
                    )
                )
        layers += [nn.BatchNorm2d(widths[-1]), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], num_classes)
        he_normal_convolutions(self)
        nn.init.zeros_(self.classifier.bias)


@register_model("wrn_40_2", "wrn_16_2", "wrn_40_1")
def build_wide_resnet(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    depth, widen = (int(part) for part in spec.arch.split("_")[1:])
    return WideResNet(depth, widen, image_channels(spec, input_shape), num_classes)


# --- VGG with batch norm (Simonyan & Zisserman 2015; RepDistiller's CIFAR cut) ---------------------

VGG_STAGES = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}
"""Convolution widths per stage (RepDistiller's configurations 'S' and 'B'); no hidden fc layers."""


class VGG(PooledClassifier):
    """Five stages of conv3x3-BN-ReLU, 2x2 max pooling after the first three, then the classifier.

    RepDistiller pools after stage four only for 64-pixel inputs; at 32x32 the last two stages run at 4x4.
    """

    def __init__(self, stages: list[list[int]], in_channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for index, widths in enumerate(stages):
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                in_channels = width
            if index < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        he_normal_convolutions(self)
        small_classifier(self.classifier)


@register_model(*VGG_STAGES)
def build_vgg(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return VGG(VGG_STAGES[spec.arch], image_channels(spec, input_shape), num_classes)


# --- MobileNetV2 (Sandler et al. 2018), RepDistiller's CIFAR 'mobile_half' ------------------------


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; a residual when shape is kept.

    RepDistiller keeps the expanding 1x1 conv even at expansion 1, which the count includes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_planes * expansion
        self.residual = stride == 1 and in_planes == planes
        self.conv = nn.Sequential(
            conv_bn(in_planes, hidden, 1),
            nn.ReLU(),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU(),
            conv_bn(hidden, planes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


MOBILENETV2_STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
"""(expansion, width, blocks, first stride) per stage: ImageNet's table with the 24-wide stage at stride 1."""


class MobileNetV2(PooledClassifier):
    """MobileNetV2 at width multiplier 0.5 with a full 1280-wide last conv, stem at stride 2
    (RepDistiller)."""

    def __init__(self, width: float, in_channels: int, num_classes: int):
        super().__init__()
        planes = int(32 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, planes, 3, stride=2), nn.ReLU()]
        for expansion, channels, blocks, stride in MOBILENETV2_STAGES:
            for block in range(blocks):
                layers.append(
                    InvertedResidual(planes, int(channels * width), stride if block == 0 else 1, expansion)
                )
                planes = int(channels * width)
        last = int(1280 * width) if width > 1.0 else 1280
        layers += [conv_bn(planes, last, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)
        he_normal_convolutions(self)
        small_classifier(self.classifier)


@register_model("mobilenetv2")
def build_mobilenetv2(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MobileNetV2(0.5, image_channels(spec, input_shape), num_classes)


# --- ShuffleNetV1 (Zhang et al. 2018), 3 groups -----------------------------------------------------


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, added to the input, or at stride 2
    concatenated with its 3x3 average pool (so the unit adds only out - in channels)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch = out_planes - in_planes if stride == 2 else out_planes
        bottleneck = branch // 4
        self.first_groups = (
            1 if in_planes == 24 else groups
        )  # the stem's 24 channels do not split into groups
        self.reduce = conv_bn(in_planes, bottleneck, 1, groups=self.first_groups)
        self.depthwise = conv_bn(bottleneck, bottleneck, 3, stride, groups=bottleneck)
        self.expand = conv_bn(bottleneck, branch, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(torch.relu(self.reduce(x)), self.first_groups)
        out = self.expand(torch.relu(self.depthwise(out)))
        if self.stride == 2:
            return torch.relu(torch.cat([out, nn.functional.avg_pool2d(x, 3, 2, 1)], 1))
        return torch.relu(out + x)


class ShuffleNetV1(PooledClassifier):
    """1x1 stem to 24 channels (no downsampling at 32x32), then stages of 240, 480, 960 channels."""

    def __init__(
        self,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        groups: int,
        in_channels: int,
        num_classes: int,
    ):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 24, 1), nn.ReLU()]
        planes = 24
        for width, count in zip(widths, blocks, strict=False):
            for block in range(count):
                layers.append(ShuffleUnit(planes, width, 2 if block == 0 else 1, groups))
                planes = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(planes, num_classes)


@register_model("shufflenetv1")
def build_shufflenetv1(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, image_channels(spec, input_shape), num_classes)


# --- ShuffleNetV2 (Ma et al. 2018), 1x -----------------------------------------------------------------


class ShuffleV2Unit(nn.Module):
    """Half the channels pass through; the other half go 1x1 -> depthwise 3x3 -> 1x1; concat, shuffle."""

    def __init__(self, planes: int):
        super().__init__()
        half = planes // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1),
            nn.ReLU(),
            conv_bn(half, half, 3, groups=half),
            conv_bn(half, half, 1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input (depthwise 3x3 then 1x1, and 1x1-dw-1x1)."""

    def __init__(self, in_planes: int, planes: int):
        super().__init__()
        half = planes // 2
        self.left = nn.Sequential(
            conv_bn(in_planes, in_planes, 3, 2, groups=in_planes), conv_bn(in_planes, half, 1), nn.ReLU()
        )
        self.right = nn.Sequential(
            conv_bn(in_planes, half, 1),
            nn.ReLU(),
            conv_bn(half, half, 3, 2, groups=half),
            conv_bn(half, half, 1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(PooledClassifier):
    """1x1 stem to 24 channels, three stages (a stride-2 unit, then `blocks` units), 1x1 conv to `last`."""

    def __init__(
        self, widths: tuple[int, ...], blocks: tuple[int, ...], last: int, in_channels: int, num_classes: int
    ):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 24, 1), nn.ReLU()]
        planes = 24
        for width, count in zip(widths, blocks, strict=False):
            layers.append(ShuffleV2Down(planes, width))
            layers += [ShuffleV2Unit(width) for _ in range(count)]
            planes = width
        layers += [conv_bn(planes, last, 1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)


@register_model("shufflenetv2")
def build_shufflenetv2(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ShuffleNetV2((116, 232, 464), (3, 7, 3), 1024, image_channels(spec, input_shape), num_classes)


# --- ResNet-50 with a CIFAR stem (He et al. 2016; RepDistiller's resnetv2) ----------------------------


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 to 4x the width, added to the input (projected when its shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_planes, planes, 1),
            nn.ReLU(),
            conv_bn(planes, planes, 3, stride),
            nn.ReLU(),
            conv_bn(planes, 4 * planes, 1),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class BottleneckResNet(PooledClassifier):
    """3x3 stem of 64 channels without max pooling, then four stages of bottlenecks at widths 64..512."""

    def __init__(self, blocks: tuple[int, ...], in_channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 64, 3), nn.ReLU()]
        planes = 64
        for stage, count in enumerate(blocks):
            width = 64 * 2**stage
            for block in range(count):
                layers.append(Bottleneck(planes, width, 2 if stage > 0 and block == 0 else 1))
                planes = 4 * width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(planes, num_classes)
        he_normal_convolutions(self)


@register_model("resnet50")
def build_resnet50(spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return BottleneckResNet((3, 4, 6, 3), image_channels(spec, input_shape), num_classes)
