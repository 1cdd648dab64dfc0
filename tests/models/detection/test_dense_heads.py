from __future__ import annotations

import pytest
import torch
from torch import nn

from geoattn.models.detection.dense_heads import CenterHead

KEYS = ["heatmap", "center", "center_z", "dim", "rot", "iou"]


def test_output_maps_and_official_structure():
    head = CenterHead(128, 3)
    out = head(torch.randn(2, 128, 10, 12))
    assert list(out) == KEYS
    expected = {"heatmap": 3, "center": 2, "center_z": 1, "dim": 3, "rot": 2, "iou": 1}
    for key, channels in expected.items():
        assert out[key].shape == (2, channels, 10, 12), key
    shared = head.shared_conv[0]
    assert (shared.in_channels, shared.out_channels, shared.bias) == (128, 64, None)
    for name, branch in head.heads.branches.items():
        # 2 convolutions per branch: Conv3x3 64 -> 64 (no bias) + BN + ReLU, then Conv3x3 64 -> out with bias
        assert len(branch) == 2 and branch[0][0].bias is None and branch[1].bias is not None, name
        assert branch[1].in_channels == 64 and branch[1].kernel_size == (3, 3)
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.eps == 1e-3 and m.momentum == 0.01


def test_heatmap_bias_and_initialisation():
    torch.manual_seed(0)
    head = CenterHead(64, 3)
    last = head.heads.branches["heatmap"][-1]
    assert torch.equal(last.bias.data, torch.full((3,), -2.19))
    for name in KEYS[1:]:
        branch = head.heads.branches[name]
        assert torch.count_nonzero(branch[-1].bias) == 0, name
        conv = branch[0][0]
        std = (2.0 / (conv.in_channels * 9)) ** 0.5  # kaiming_normal_ defaults: fan_in, gain sqrt(2)
        assert abs(conv.weight.std().item() / std - 1) < 0.05, name
    # the heatmap branch keeps PyTorch's default (kaiming_uniform with a = sqrt(5): std = 1 / sqrt(3 fan_in))
    conv = head.heads.branches["heatmap"][0][0]
    assert abs(conv.weight.std().item() / (1.0 / (3 * 64 * 9)) ** 0.5 - 1) < 0.05
    # fresh model in eval mode, zero input: every hidden activation is 0 (no biases before BN), so the logits are
    # the bias, sigmoid(-2.19) = 0.1; the regression maps are 0
    head.eval()
    with torch.no_grad():
        out = head(torch.zeros(1, 64, 4, 4))
    torch.testing.assert_close(out["heatmap"], torch.full((1, 3, 4, 4), -2.19))
    assert abs(torch.sigmoid(torch.tensor(-2.19)).item() - 0.1) < 2e-3
    assert all(torch.count_nonzero(out[k]) == 0 for k in KEYS[1:])


def test_gradcheck_float64():
    head = CenterHead(3, 2, shared_conv_channel=4,
                      head_dict={"center": {"out_channels": 2, "num_conv": 2}, "iou": {"out_channels": 1, "num_conv": 1}})
    head = head.double().eval()  # eval: BN with running statistics
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tuple(head(t).values()), (x,))
    head.train()
    assert torch.autograd.gradcheck(lambda t: tuple(head(t).values()), (x,))


def test_custom_heads_and_errors():
    head = CenterHead(8, 1, head_dict={"center": {"out_channels": 2, "num_conv": 3}}, num_hm_conv=1)
    assert len(head.heads.branches["center"]) == 3 and len(head.heads.branches["heatmap"]) == 1
    with pytest.raises(ValueError, match="head_order"):
        CenterHead(8, 1, head_dict={"center": {"out_channels": 2, "num_conv": 1}}, head_order=["dim"])
    with pytest.raises(ValueError, match="num_classes"):
        CenterHead(8, 0)
    with pytest.raises(ValueError, match="out_channels"):
        CenterHead(8, 1, head_dict={"center": {"out_channels": 0, "num_conv": 1}})
    with pytest.raises(ValueError, match="x"):
        CenterHead(8, 1)(torch.zeros(1, 4, 2, 2))
