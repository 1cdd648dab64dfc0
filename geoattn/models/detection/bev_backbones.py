r"""BEV 2-D backbones: HEDNet's ``DEDBackbone`` and ``CascadeDEDBackbone`` (ScatterFormer's 2-D backbone).

``BasicBlock(c_in, c_out, stride, downsample)``: ``y = ReLU(BN(conv3(ReLU(BN(conv3_s(x))))) + id(x))`` with
``conv3_s`` a 3 x 3 convolution of stride ``s`` (padding 1), and ``id`` a ``1 x 1`` stride-``s`` convolution + BN when
``downsample`` else the identity; no biases, BN ``eps = 1e-3``, ``momentum = 0.01``.

``DEDBackbone`` (one encoder-decoder with ``L = len(down_strides)`` levels, width ``D``):
level 0 = [``BasicBlock(c_in, D, s_0, downsample)`` when ``c_in != D``] + ``num_sbb[0]`` blocks; level ``l >= 1`` =
``BasicBlock(D, D, s_l, downsample)`` + ``num_sbb[l]`` blocks. Decoding from the coarsest level,
``x <- BN(ReLU(BN(deconv_{s_l}(x))) + e_{l-1})`` with ``deconv`` a transposed ``s_l x s_l`` convolution of stride
``s_l``. The output has the resolution of level 0 (the input's, as ``s_0 = 1``). Where a size is not divisible by
the strides (KITTI at stride 2: 125 x 110 cells) the upsampled map is cropped to the skip's size (bottom / right),
which keeps input cell ``i`` at output cells ``s i .. s i + s - 1``; the official code needs divisible sizes.

``CascadeDEDBackbone``: ``num_layers`` DED backbones in sequence (the first takes ``c_in``, the rest ``D``).
Official: 4 layers, ``NUM_SBB [2, 1, 1]``, ``DOWN_STRIDES [1, 2, 2]``, ``D = 128``.
Initialisation as the official ``init_weights``: ``Conv2d`` Kaiming normal (``fan_out``, ReLU), zero biases,
BN weight 1 and bias 0; transposed convolutions keep PyTorch's default.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["BasicBlock", "DEDBackbone", "CascadeDEDBackbone"]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _check_positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class BasicBlock(nn.Module):
    """ResNet basic block (see the module docstring). ``[B, c_in, H, W] -> [B, c_out, ceil(H/s), ceil(W/s)]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, padding: int = 1,
                 downsample: bool = False):
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("stride", stride)
        if not downsample and (stride != 1 or in_channels != out_channels):
            raise ValueError(f"downsample: expected True when stride ({stride}) != 1 or in_channels "
                             f"({in_channels}) != out_channels ({out_channels}), got False")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding, bias=False)
        self.bn1 = _bn(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _bn(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample = bool(downsample)
        if self.downsample:
            self.downsample_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=False), _bn(out_channels))
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = self.downsample_layer(x) if self.downsample else x
        return self.relu2(out + identity)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):  # not ConvTranspose2d (another class), as the official
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DEDBackbone(nn.Module):
    """One dense encoder-decoder (HEDNet); ``[B, in_channels, H, W] -> [B, feature_dim, H', W']`` with
    ``H' = ceil(H / stride)``, ``stride = down_strides[0]`` when ``in_channels != feature_dim`` else 1 (the
    official code ignores ``down_strides[0]`` when there is no channel-changing block)."""

    def __init__(self, in_channels: int, num_sbb: Sequence[int] = (2, 1, 1), down_strides: Sequence[int] = (1, 2, 2),
                 feature_dim: int = 128):
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("feature_dim", feature_dim)
        num_sbb, down_strides = list(num_sbb), list(down_strides)
        if not num_sbb or len(num_sbb) != len(down_strides):
            raise ValueError(f"num_sbb: expected one entry per level of down_strides ({len(down_strides)}), "
                             f"got {len(num_sbb)}")
        for i, n in enumerate(num_sbb):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"num_sbb[{i}]: expected a non-negative int, got {n!r}")
        for i, s in enumerate(down_strides):
            _check_positive(f"down_strides[{i}]", s)
        dim = feature_dim
        first = []
        if in_channels != dim:
            first.append(BasicBlock(in_channels, dim, down_strides[0], 1, True))
        first += [BasicBlock(dim, dim) for _ in range(num_sbb[0])]
        self.encoder = nn.ModuleList([nn.Sequential(*first)])
        for level in range(1, len(down_strides)):
            layers = [BasicBlock(dim, dim, down_strides[level], 1, True)]
            layers += [BasicBlock(dim, dim) for _ in range(num_sbb[level])]
            self.encoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList()
        self.decoder_norm = nn.ModuleList()
        for level in range(len(down_strides) - 1, 0, -1):
            s = down_strides[level]
            self.decoder.append(nn.Sequential(nn.ConvTranspose2d(dim, dim, s, s, bias=False), _bn(dim), nn.ReLU()))
            self.decoder_norm.append(_bn(dim))
        self.in_channels = in_channels
        self.num_bev_features = dim
        self.down_strides = tuple(down_strides)
        # as the official: the first level is strided only through its channel-changing block
        self.stride = down_strides[0] if in_channels != dim else 1
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.encoder[0](x)
        skips = [x]
        for level in self.encoder[1:]:
            x = level(x)
            skips.append(x)
        for deconv, norm, skip in zip(self.decoder, self.decoder_norm, skips[-2::-1]):
            up = deconv(x)[:, :, :skip.shape[2], :skip.shape[3]]
            x = norm(up + skip)
        return x


class CascadeDEDBackbone(nn.Module):
    r"""``num_layers`` :class:`DEDBackbone` in sequence.

    Args:
        in_channels: BEV input width; num_layers: DED backbones (4); num_sbb: extra basic blocks per level
            ([2, 1, 1]); down_strides: stride of each level ([1, 2, 2]); feature_dim: width ``D`` (128).

    ``[B, in_channels, H, W] -> [B, D, ceil(H / stride), ceil(W / stride)]``, ``stride`` 1 for the official
    ``down_strides[0] == 1`` (see :class:`DEDBackbone`); ``num_bev_features = D``.
    """

    def __init__(self, in_channels: int, num_layers: int = 4, num_sbb: Sequence[int] = (2, 1, 1),
                 down_strides: Sequence[int] = (1, 2, 2), feature_dim: int = 128):
        super().__init__()
        _check_positive("num_layers", num_layers)
        self.layers = nn.ModuleList(
            DEDBackbone(in_channels if i == 0 else feature_dim, num_sbb, down_strides, feature_dim)
            for i in range(num_layers))
        self.in_channels = in_channels
        self.num_bev_features = feature_dim
        self.stride = 1
        for layer in self.layers:
            self.stride *= layer.stride

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a BEV map [B, {self.in_channels}, H, W], got {shape}")
        for layer in self.layers:
            x = layer(x)
        return x

    def __repr__(self) -> str:
        first = self.layers[0]
        return (f"{self.__class__.__name__}(in_channels={self.in_channels}, num_layers={len(self.layers)}, "
                f"down_strides={list(first.down_strides)}, feature_dim={self.num_bev_features})")
