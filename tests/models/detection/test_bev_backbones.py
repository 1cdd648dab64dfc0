from __future__ import annotations

import pytest
import torch
from torch import nn

from geoattn.models.detection.bev_backbones import BasicBlock, CascadeDEDBackbone, DEDBackbone


def test_official_structure():
    model = CascadeDEDBackbone(128)  # 4 layers, NUM_SBB [2, 1, 1], DOWN_STRIDES [1, 2, 2], 128
    assert len(model.layers) == 4 and model.num_bev_features == 128 and model.stride == 1
    for ded in model.layers:
        assert len(ded.encoder) == 3 and len(ded.decoder) == 2 and len(ded.decoder_norm) == 2
        # in_channels == dim: level 0 is just the 2 basic blocks (no strided block)
        assert [type(b) for b in ded.encoder[0]] == [BasicBlock, BasicBlock]
        assert all(not b.downsample and b.stride == 1 for b in ded.encoder[0])
        for level in (1, 2):
            blocks = list(ded.encoder[level])
            assert len(blocks) == 2  # the strided downsampling block + NUM_SBB[level] = 1
            assert blocks[0].stride == 2 and blocks[0].downsample and blocks[0].conv1.stride == (2, 2)
            assert not blocks[1].downsample
        for deconv in ded.decoder:
            assert isinstance(deconv[0], nn.ConvTranspose2d) and deconv[0].stride == (2, 2)
            assert deconv[0].kernel_size == (2, 2) and deconv[0].bias is None
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.eps == 1e-3 and m.momentum == 0.01
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
    # 4 DED x (level 0: 2 blocks x 2 convs; levels 1, 2: 2 blocks x 2 convs + 1x1 shortcut) = 4 x 14 convs
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 56


def test_first_layer_changes_width_with_a_downsampling_block():
    model = CascadeDEDBackbone(96, num_layers=2, feature_dim=32)
    first = model.layers[0].encoder[0]
    assert len(first) == 3 and first[0].downsample and first[0].conv1.in_channels == 96
    assert len(model.layers[1].encoder[0]) == 2


@pytest.mark.parametrize("size", [(16, 24), (125, 110), (13, 7)])
def test_output_resolution_equals_the_input(size):
    model = CascadeDEDBackbone(8, num_layers=2, feature_dim=8).eval()
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 8, *size)


def test_ded_forward_matches_a_hand_written_composition():
    torch.manual_seed(0)
    ded = DEDBackbone(6, num_sbb=(1, 0), down_strides=(1, 2), feature_dim=4).eval()
    x = torch.randn(1, 6, 9, 10)
    with torch.no_grad():
        e0 = ded.encoder[0](x)
        e1 = ded.encoder[1](e0)
        up = ded.decoder[0](e1)[:, :, :9, :10]  # 10 x 10 cropped to the skip's 9 x 10
        expected = ded.decoder_norm[0](up + e0)
        torch.testing.assert_close(ded(x), expected)
        # the basic block itself, by hand
        block = ded.encoder[0][0]
        ref = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + block.downsample_layer(x))
        torch.testing.assert_close(block(x), ref)


def test_kaiming_fan_out_init_of_convolutions():
    torch.manual_seed(0)
    model = CascadeDEDBackbone(64, num_layers=1, feature_dim=64)
    conv = model.layers[0].encoder[0][0].conv1
    std = (2.0 / (conv.out_channels * 9)) ** 0.5  # fan_out = out * kh * kw, ReLU gain
    assert abs(conv.weight.std().item() / std - 1) < 0.05


def test_backward_and_bad_arguments():
    model = CascadeDEDBackbone(4, num_layers=1, feature_dim=4)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="num_sbb"):
        DEDBackbone(4, num_sbb=(1, 1), down_strides=(1, 2, 2))
    with pytest.raises(ValueError, match="num_layers"):
        CascadeDEDBackbone(4, num_layers=0)
    with pytest.raises(ValueError, match="downsample"):
        BasicBlock(4, 8)
