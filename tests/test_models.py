"""The networks of models.py against their papers' counts and torchvision."""

import math

import pytest
import torch
from torch import nn

from models import MODEL_NAMES_HELP, Bottleneck, WideBasicBlock, build_model


# --- models.py ------------------------------------------------------------------------------------


def conv_linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-adds of every Conv2d and Linear in one forward of batch 1."""
    macs = 0

    def conv_hook(m, inputs, out):
        nonlocal macs
        out_c, out_h, out_w = out.shape[1:]
        kh, kw = m.kernel_size
        macs += out_h * out_w * out_c * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inputs, out):
        nonlocal macs
        macs += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return macs


def test_wrn_22_2_weight_count_and_shortcuts():
    model = build_model("wrn-22-2", 10)
    assert conv_linear_weights(model) == 1_076_912
    shortcuts = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(shortcuts) == 3
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.bias is not None


def test_wrn_output_shape_and_depth():
    model = build_model("wrn-22-2", 10).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # D = 6n + 4: 22 -> 3 blocks per group; 16 -> 2.
    assert [len(g) for g in (model.group1, model.group2, model.group3)] == [3, 3, 3]
    wrn16 = build_model("wrn-16-8", 100).eval()
    assert [len(g) for g in (wrn16.group1, wrn16.group2, wrn16.group3)] == [2, 2, 2]
    assert wrn16.fc.in_features == 512
    assert wrn16(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_wrn_28_10_builds():
    model = build_model("wrn-28-10", 10)
    assert model.fc.in_features == 640
    assert [len(g) for g in (model.group1, model.group2, model.group3)] == [4, 4, 4]


def test_wrn_width_1_has_identity_first_group():
    # With K = 1 the first group is 16 -> 16 at stride 1: no projection needed.
    model = build_model("wrn-10-1", 10)
    assert model.group1[0].shortcut is None
    assert model.group2[0].shortcut is not None


def test_wrn_dropout_default():
    drops = [m for m in build_model("wrn-22-2", 10).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 9 and all(d.p == 0.3 for d in drops)


def test_wrn_projection_uses_preactivated_input():
    block = WideBasicBlock(16, 32, 2, dropout=0.0).eval()
    with torch.no_grad():  # non-trivial BN so pre-activation differs from input
        block.bn1.running_mean.uniform_(-1, 1)
        block.bn1.bias.uniform_(-1, 1)
    seen = {}
    block.shortcut.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0]))
    x = torch.randn(2, 16, 8, 8)
    block(x)
    expected = torch.relu(block.bn1(x))
    assert torch.allclose(seen["inp"], expected)
    assert not torch.allclose(seen["inp"], x)


def test_wrn_identity_block_adds_raw_input():
    block = WideBasicBlock(8, 8, 1, dropout=0.0).eval()
    with torch.no_grad():
        block.conv2.weight.zero_()  # residual branch contributes nothing
    x = torch.randn(2, 8, 4, 4)
    assert torch.allclose(block(x), x)


def test_wrn_init():
    model = build_model("wrn-22-2", 10)
    w = model.group3[0].conv1.weight  # 64 -> 128, 3x3: fan_out = 2 x fan_in
    fan_out = w.shape[0] * 9
    assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert torch.all(model.fc.bias == 0)


def test_wrn_22_2_macs():
    macs = count_macs(build_model("wrn-22-2", 10), (3, 32, 32))
    assert macs == 157_730_048
    assert abs(2 * macs / 3.15e8 - 1) < 0.01


def test_wrn_width_scale_half():
    full = build_model("wrn-22-2", 10)
    half = build_model("wrn-22-2", 10, width_scale=0.5)
    assert half.conv1.in_channels == 3 and half.conv1.out_channels == 8
    assert half.group1[0].conv1.out_channels == 16
    assert half.group2[0].conv1.out_channels == 32
    assert half.group3[0].shortcut.out_channels == 64
    assert half.fc.in_features == 64 and half.fc.out_features == 10
    # Hidden 3x3 convs quarter exactly; the stem and fc only halve
    # (their 3 input channels / 10 classes are not scaled).
    assert half.group3[1].conv1.weight.numel() * 4 == full.group3[1].conv1.weight.numel()
    expected = (full.conv1.weight.numel() // 2 + full.fc.weight.numel() // 2
                + (conv_linear_weights(full) - full.conv1.weight.numel()
                   - full.fc.weight.numel()) // 4)
    assert conv_linear_weights(half) == expected
    assert half(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_scale_rounds_and_floors_at_one():
    model = build_model("wrn-10-1", 10, width_scale=0.01)
    assert model.conv1.out_channels == 1 and model.fc.in_features == 1
    # 16 * 0.3 = 4.8 -> 5; 64 * 0.3 = 19.2 -> 19
    model = build_model("wrn-10-1", 10, width_scale=0.3)
    assert model.conv1.out_channels == 5 and model.fc.in_features == 19


def test_resnet50_cifar_shape_and_stem():
    model = build_model("resnet50-cifar", 100).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [3, 4, 6, 3]


def test_resnet50_v15_stride_on_3x3():
    model = build_model("resnet50-cifar", 10)
    for stage in (model.layer2, model.layer3, model.layer4):
        assert stage[0].conv1.stride == (1, 1)
        assert stage[0].conv2.stride == (2, 2)
        assert stage[0].downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1)


def test_resnet50_cifar_zero_init_last_bn():
    model = build_model("resnet50-cifar", 100)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for b in blocks:
        assert torch.all(b.bn3.weight == 0)
        assert torch.all(b.bn1.weight == 1) and torch.all(b.bn2.weight == 1)
    assert torch.all(model.bn1.weight == 1)


def test_resnet50_imagenet_no_zero_init():
    model = build_model("resnet50", 1000)
    assert all(torch.all(b.bn3.weight == 1)
               for b in model.modules() if isinstance(b, Bottleneck))


def test_resnet50_cifar_macs():
    macs = count_macs(build_model("resnet50-cifar", 100), (3, 32, 32))
    assert abs(2 * macs / 2.59e9 - 1) < 0.02


def test_resnet50_imagenet_param_count_and_forward():
    model = build_model("resnet50", 1000)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_resnet50_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = build_model("resnet50", 1000)
    theirs = torchvision.models.resnet50()
    assert ([(n, p.shape) for n, p in ours.named_parameters()]
            == [(n, p.shape) for n, p in theirs.named_parameters()])
    # Same names and shapes, so torchvision state dicts load directly.
    ours.load_state_dict(theirs.state_dict())


def test_resnet50_width_scale():
    model = build_model("resnet50-cifar", 10, width_scale=0.5)
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 32
    assert model.layer1[0].conv1.out_channels == 32
    assert model.layer1[0].conv3.out_channels == 128
    assert model.layer4[0].conv2.out_channels == 256
    assert model.fc.in_features == 1024 and model.fc.out_features == 10
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["wrn-20-2", "wrn-4-2", "wrn-22-0", "wrn-22-2.5", "wrn-22"])
def test_invalid_wrn_names(name):
    with pytest.raises(ValueError, match=r"\(D - 4\) % 6 == 0") as info:
        build_model(name, 10)
    assert "resnet50-cifar" in str(info.value)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50-imagenet", ""])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="unknown model name") as info:
        build_model(name, 10)
    assert MODEL_NAMES_HELP in str(info.value)


def test_invalid_width_scale():
    with pytest.raises(ValueError, match="width_scale"):
        build_model("wrn-22-2", 10, width_scale=0.0)
