r"""CenterPoint's dense head (OpenPCDet ``CenterHead`` with ``SeparateHead``), one task of ``K`` classes.

``x [B, C_in, H, W]`` -> shared ``Conv3x3(C_in -> S) + BN + ReLU`` (``S = 64``, no bias unless
``use_bias_before_norm``) -> one branch per output: ``num_conv - 1`` times ``Conv3x3(S -> S) + BN + ReLU``, then
``Conv3x3(S -> out)`` with bias. BN ``eps``/``momentum`` from the config (official ScatterFormer: 1e-3 / 0.01).

Outputs (the maps of the detection contract; ``H, W`` of the input):

- ``heatmap [B, K, H, W]``: class logits, the last bias initialised to ``-2.19`` (``sigmoid = 0.1``);
- ``center [B, 2, H, W]`` offset of the centre inside its cell (cells, x then y); ``center_z [B, 1, H, W]`` z (m);
- ``dim [B, 3, H, W]`` ``log(dx), log(dy), log(dz)``; ``rot [B, 2, H, W]`` ``(cos, sin)`` of the heading;
- ``iou [B, 1, H, W]`` predicted ``2 IoU - 1``.

Initialisation as the official ``SeparateHead``: the heatmap branch keeps PyTorch's default convolution init
(only its last bias is set); every convolution of the other branches gets ``kaiming_normal_`` (PyTorch's
defaults: ``fan_in``, leaky-ReLU gain with ``a = 0``) and zero bias; the shared convolution keeps the default.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

__all__ = ["SeparateHead", "CenterHead", "DEFAULT_HEAD_DICT", "DEFAULT_HEAD_ORDER"]

DEFAULT_HEAD_ORDER = ("center", "center_z", "dim", "rot", "iou")
DEFAULT_HEAD_DICT = {"center": {"out_channels": 2, "num_conv": 2}, "center_z": {"out_channels": 1, "num_conv": 2},
                     "dim": {"out_channels": 3, "num_conv": 2}, "rot": {"out_channels": 2, "num_conv": 2},
                     "iou": {"out_channels": 1, "num_conv": 2}}
HEATMAP_INIT_BIAS = -2.19


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class SeparateHead(nn.Module):
    """One small conv branch per output name; ``forward(x)`` returns ``{name: [B, out, H, W]}``.

    Args:
        in_channels: input width ``S``; heads: ``{name: {"out_channels": int, "num_conv": int}}`` in output order;
        heatmap: name of the heatmap branch (bias ``init_bias``, default init); bn_eps, bn_momentum: BN settings;
        use_bias: bias of the hidden convolutions.
    """

    def __init__(self, in_channels: int, heads: Mapping[str, Mapping[str, int]], heatmap: str = "heatmap",
                 init_bias: float = HEATMAP_INIT_BIAS, use_bias: bool = False, bn_eps: float = 1e-3,
                 bn_momentum: float = 0.01):
        super().__init__()
        _positive("in_channels", in_channels)
        self.names = tuple(heads)
        self.branches = nn.ModuleDict()
        for name, spec in heads.items():
            out_channels = _positive(f"heads[{name!r}]['out_channels']", spec.get("out_channels"))
            num_conv = _positive(f"heads[{name!r}]['num_conv']", spec.get("num_conv"))
            layers: list[nn.Module] = []
            for _ in range(num_conv - 1):
                layers += [nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=use_bias),
                                         nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum), nn.ReLU())]
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True))
            branch = nn.Sequential(*layers)
            if name == heatmap:
                nn.init.constant_(branch[-1].bias, init_bias)
            else:
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
            self.branches[name] = branch

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: self.branches[name](x) for name in self.names}


class CenterHead(nn.Module):
    r"""CenterPoint head for one task of ``num_classes`` classes (see the module docstring).

    Args:
        in_channels: BEV feature width ``C_in``; num_classes: ``K`` (heatmap channels, in ``class_names`` order).
        shared_conv_channel: ``S`` (64); num_hm_conv: convolutions of the heatmap branch (2).
        head_dict: ``{name: {"out_channels", "num_conv"}}`` of the regression branches (default the official
            center 2 / center_z 1 / dim 3 / rot 2 / iou 1, two convolutions each); head_order: their output order.
        use_bias_before_norm: bias in the convolutions followed by BN (False); bn_eps, bn_momentum: 1e-3, 0.01.

    ``forward(x [B, C_in, H, W])`` -> ``{"heatmap": [B, K, H, W], <name>: [B, out, H, W] for name in head_order}``.
    """

    def __init__(self, in_channels: int, num_classes: int, shared_conv_channel: int = 64, num_hm_conv: int = 2,
                 head_dict: Mapping[str, Mapping[str, int]] | None = None,
                 head_order: Sequence[str] | None = None, use_bias_before_norm: bool = False,
                 bn_eps: float = 1e-3, bn_momentum: float = 0.01):
        super().__init__()
        _positive("in_channels", in_channels)
        _positive("num_classes", num_classes)
        _positive("shared_conv_channel", shared_conv_channel)
        _positive("num_hm_conv", num_hm_conv)
        head_dict = dict(DEFAULT_HEAD_DICT if head_dict is None else head_dict)
        head_order = tuple(head_dict if head_order is None else head_order)
        if "heatmap" in head_dict or "hm" in head_dict:
            raise ValueError(f"head_dict: expected regression branches only (the heatmap is added), got "
                             f"{sorted(head_dict)}")
        if sorted(head_order) != sorted(head_dict):
            raise ValueError(f"head_order: expected the names of head_dict {sorted(head_dict)}, got {list(head_order)}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.head_order = head_order
        self.shared_conv = nn.Sequential(
            nn.Conv2d(in_channels, shared_conv_channel, 3, padding=1, bias=use_bias_before_norm),
            nn.BatchNorm2d(shared_conv_channel, eps=bn_eps, momentum=bn_momentum), nn.ReLU())
        heads = {"heatmap": {"out_channels": num_classes, "num_conv": num_hm_conv}}
        heads.update({name: head_dict[name] for name in head_order})
        self.heads = SeparateHead(shared_conv_channel, heads, "heatmap", HEATMAP_INIT_BIAS, use_bias_before_norm,
                                  bn_eps, bn_momentum)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a BEV map [B, {self.in_channels}, H, W], got {shape}")
        return self.heads(self.shared_conv(x))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"heads={['heatmap', *self.head_order]})")
