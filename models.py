"""Networks for the RigL dynamic sparse training experiments.

The architectures follow RigL (Evci et al. 2020, "Rigging the Lottery: Making
All Tickets Winners", arXiv 1911.11134) and its reproducibility study (Sundar &
Dwaraknath 2021, "[Re] Rigging the Lottery", ReScience C 7(2)):

* Wide Residual Networks, ``wrn-D-K`` (Zagoruyko & Komodakis 2016, "Wide
  Residual Networks", arXiv 1605.07146), in the pre-activation form used by the
  sparse-momentum and RigL-reproducibility PyTorch code.
* ResNet-50 (He et al. 2016, "Deep Residual Learning for Image Recognition",
  arXiv 1512.03385) in torchvision's "v1.5" layout (the stride sits on the
  bottleneck's 3x3 conv), with a CIFAR stem (``resnet50-cifar``) or the
  ImageNet stem (``resnet50``).

Everything is built through ``build_model(name, num_classes, width_scale)``.
``width_scale`` multiplies every hidden channel count (never the 3 input
channels or the classes), which gives the "Small-Dense" baseline from the same
code: ``width_scale_for`` solves for the scale at which a count of the network
meets a target (flops.small_dense_width: the sparse network's active weights).
The networks know nothing of sparsity.

Reference numbers for the dense models (checked in the tests):
    wrn-22-2, 10 classes:        1,076,912 conv+linear weights,
                                 157,730,048 multiply-adds at 32x32
    resnet50-cifar, 100 classes: ~1.30e9 multiply-adds at 32x32
                                 (the report's 2.59e9 FLOPs = 2 x MACs)
    resnet50, 1000 classes:      25,557,032 parameters, same as torchvision
"""

import math
import re
from typing import Callable

import torch
from torch import nn


DATASET_SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet": (1000, 224),
                  "synthetic": (10, 32)}
"""Number of classes and input size (H = W) each dataset's networks are built for; FLOPs are
counted at that size."""

MODEL_NAMES_HELP = (
    "wrn-D-K with (D - 4) % 6 == 0, D >= 10, integer K >= 1 "
    "(e.g. wrn-22-2, wrn-28-10), resnet50-cifar, resnet50"
)


# -----------------------------------------------------------------------------
# Shared helpers


def scale_channels(channels: int, width_scale: float) -> int:
    """``channels * width_scale`` rounded to the nearest int (halves up), >= 1."""
    return max(1, int(math.floor(channels * width_scale + 0.5)))


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan_out, as in Zagoruyko's and torchvision's code),
    identity BatchNorm, zero Linear bias. Linear weights keep PyTorch's default
    kaiming-uniform init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# -----------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis 2016)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_ch, out_ch)
        # A 1x1 projection only where the shape changes; identity otherwise.
        self.shortcut = None
        if in_ch != out_ch or stride != 1:
            self.shortcut = conv1x1(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        # Zagoruyko's code projects the *pre-activated* input; identity
        # shortcuts carry the raw input.
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 inputs: a 3x3 stem, three groups of
    (depth - 4) / 6 blocks with widths 16k, 32k, 64k, then BN-ReLU-pool-fc."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int,
                 dropout: float = 0.3, width_scale: float = 1.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10 or widen_factor < 1:
            raise ValueError(
                f"invalid WideResNet depth={depth}, width={widen_factor}: need "
                f"(D - 4) % 6 == 0, D >= 10, K >= 1; accepted names: "
                f"{MODEL_NAMES_HELP}")
        n = (depth - 4) // 6
        widths = [scale_channels(c, width_scale)
                  for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)]
        self.conv1 = conv3x3(3, widths[0])
        self.group1 = self._make_group(widths[0], widths[1], n, 1, dropout)
        self.group2 = self._make_group(widths[1], widths[2], n, 2, dropout)
        self.group3 = self._make_group(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _make_group(in_ch: int, out_ch: int, n: int, stride: int,
                    dropout: float) -> nn.Sequential:
        # Only the first block of a group changes width / resolution.
        blocks = [WideBasicBlock(in_ch, out_ch, stride, dropout)]
        blocks += [WideBasicBlock(out_ch, out_ch, 1, dropout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.group3(self.group2(self.group1(x)))
        x = torch.relu(self.bn(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# -----------------------------------------------------------------------------
# ResNet-50 (He et al. 2016), torchvision v1.5 layout


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride) -> 1x1 (expand), each followed by BN.

    Attribute names match torchvision so state dicts are interchangeable."""

    expansion = 4  # output channels = 4 x bottleneck width

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)  # v1.5: stride here, not on conv1
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if in_ch != out_ch or stride != 1:
            self.downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + skip)


def _make_stage(in_ch: int, planes: int, blocks: int, stride: int,
                width_scale: float) -> tuple[nn.Sequential, int]:
    """One ResNet stage; returns it and its output channel count."""
    width = scale_channels(planes, width_scale)
    # Scale the expanded count directly (not width * 4), so every channel
    # count is exactly round(original * width_scale).
    out_ch = scale_channels(planes * Bottleneck.expansion, width_scale)
    layers = [Bottleneck(in_ch, width, out_ch, stride)]
    layers += [Bottleneck(out_ch, width, out_ch, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), out_ch


class ResNet(nn.Module):
    """Bottleneck ResNet with a CIFAR or ImageNet stem.

    stem="cifar":    3x3 stride-1 conv, BN, ReLU, no max-pool (32x32 inputs).
    stem="imagenet": 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool.
    zero_init_residual zeroes every bottleneck's last BN weight so each block
    starts as the identity (Goyal et al. 2017, arXiv 1706.02677); build_model
    turns it on for resnet50-cifar and off for resnet50 (torchvision default).
    """

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000,
                 stem: str = "imagenet", width_scale: float = 1.0,
                 zero_init_residual: bool = False):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        ch = scale_channels(64, width_scale)
        if stem == "cifar":
            self.conv1 = conv3x3(3, ch)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, ch, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, ch = _make_stage(ch, 64, layers[0], 1, width_scale)
        self.layer2, ch = _make_stage(ch, 128, layers[1], 2, width_scale)
        self.layer3, ch = _make_stage(ch, 256, layers[2], 2, width_scale)
        self.layer4, ch = _make_stage(ch, 512, layers[3], 2, width_scale)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -----------------------------------------------------------------------------
# Entry point

_WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def _build_wrn(name: str, num_classes: int, width_scale: float) -> WideResNet:
    match = _WRN_NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"malformed WideResNet name {name!r}: expected wrn-D-K with integer "
            f"D, K, (D - 4) % 6 == 0, D >= 10, K >= 1; accepted names: "
            f"{MODEL_NAMES_HELP}")
    depth, widen = int(match.group(1)), int(match.group(2))
    return WideResNet(depth, widen, num_classes, width_scale=width_scale)


def build_model(name: str, num_classes: int, width_scale: float = 1.0) -> nn.Module:
    """Build a freshly initialised network by name (see MODEL_NAMES_HELP)."""
    if not width_scale > 0:
        raise ValueError(f"width_scale must be > 0, got {width_scale}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    key = name.strip().lower()
    if key == "resnet50-cifar":
        return ResNet((3, 4, 6, 3), num_classes, stem="cifar",
                      width_scale=width_scale, zero_init_residual=True)
    if key == "resnet50":
        return ResNet((3, 4, 6, 3), num_classes, stem="imagenet",
                      width_scale=width_scale, zero_init_residual=False)
    if key.startswith("wrn-"):
        return _build_wrn(key, num_classes, width_scale)
    raise ValueError(f"unknown model name {name!r}; accepted names: {MODEL_NAMES_HELP}")


def width_scale_for(name: str, num_classes: int, target: int, count: Callable[[nn.Module], int]) -> float:
    """The width_scale at which count(model) comes closest to `target` (Small-Dense: the weights
    of the sparse model's active connections), by bisection on models without storage."""
    def counted(scale: float) -> int:
        with torch.device("meta"):
            return count(build_model(name, num_classes, width_scale=scale))
    low, high = 0.01, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if counted(middle) < target else (low, middle)
    return min((low, high), key=lambda s: abs(counted(s) - target))
