"""Rotation-invariant attention layers of RoITr (Yu et al., CVPR 2023).

Local part: :class:`PPFAttention` attends over kNN groups with a learned embedding of the point pair
features (PPFs) added to keys and values; :class:`PPFAttentionBlock` wraps it in a residual block.
Global part: :class:`GeometricStructureEmbedding` (distance/angle embedding of one frame's superpoints),
:class:`RPESelfAttentionBlock` (self-attention with that embedding, also returning RoITr's positional
state), :class:`PositionalCrossAttentionBlock` (cross-attention whose queries and keys carry the
positional state) and :class:`RotationInvariantTransformer` (the interleaved stack).
:class:`LearnableLogOptimalTransport` is the log-domain Sinkhorn layer with a learnable dustbin score.

Every geometric quantity that enters these layers (PPFs, pairwise distances, triangle angles) is
unchanged by a rigid motion of the cloud, so the features are rotation and translation invariant as
long as the normals co-rotate with the points (see :func:`ppf_groups`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from geoattn import backends
from geoattn.sparse.geometry import point_pair_features
from geoattn.sparse.neighbors import knn

__all__ = [
    "ppf_groups",
    "knn_interpolate",
    "PPFAttention",
    "PPFAttentionBlock",
    "PointInstanceNorm",
    "GeometricStructureEmbedding",
    "RPESelfAttentionBlock",
    "PositionalCrossAttentionBlock",
    "RotationInvariantTransformer",
    "LearnableLogOptimalTransport",
]


def _check_points(name: str, value: Tensor) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2 or value.size(-1) != 3:
        raise ValueError(f"{name}: expected a 2-D tensor [N, 3], got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")


def _check_dtype(name: str, value: Tensor, dtype: torch.dtype) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the layer's parameters), got {value.dtype}")


def _check_index(name: str, value, ndim: int) -> None:
    if not isinstance(value, Tensor) or value.dtype not in (torch.int64, torch.int32):
        kind = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name}: expected an int64 or int32 tensor, got {kind}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")


def _check_range(name: str, value: Tensor, low: int, size: int, meaning: str) -> None:
    """Values in ``[low, size)``: a pass over the data and a host synchronisation, so GEOATTN_DEBUG=1 only."""
    if value.numel() and backends.debug_checks():
        found_low, found_high = torch.stack(value.aminmax()).tolist()
        if found_low < low or found_high >= size:
            raise ValueError(f"{name}: expected values in [{low}, {size}) ({meaning}), "
                             f"got range [{found_low}, {found_high}]")


def ppf_groups(
    pos: Tensor,
    normal: Tensor,
    k: int,
    query_index: Tensor | None = None,
    sign_invariant: bool = True,
) -> tuple[Tensor, Tensor]:
    """kNN groups around query points and their point pair features.

    Args:
        pos: support points ``[N, 3]``; normal: their unit normals ``[N, 3]``.
        k: group size (the query point itself is part of its group).
        query_index: ``[M]`` indices of the group centres in ``pos`` (all points when ``None``).
        sign_invariant: fold the three angles into ``[0, pi/2]`` so that a flipped normal gives the
            same feature. Normal signs estimated on two partial scans of one surface do not always
            agree; folding removes that source of mismatch at the cost of the convex/concave sign.

    Returns:
        ``neighbor_index [M, k]`` (padded with -1 when fewer than ``k`` points exist) and
        ``ppf [M, k, 4]`` = (distance, angle(n_c, d), angle(n_j, d), angle(n_c, n_j)) with the angles
        divided by pi; padded entries are zero. All four numbers are invariant to rigid motions that
        move the normals with the points.
    """
    _check_points("pos", pos)
    _check_points("normal", normal)
    if normal.shape != pos.shape:
        raise ValueError(f"normal: expected shape {tuple(pos.shape)} like pos, got {tuple(normal.shape)}")
    if k < 1:
        raise ValueError(f"k: expected a positive group size, got {k}")
    centre_pos = pos if query_index is None else pos[query_index]
    centre_normal = normal if query_index is None else normal[query_index]
    neighbor_index, _ = knn(pos, centre_pos, k)
    valid = neighbor_index >= 0
    safe = neighbor_index.clamp(min=0)
    ppf = point_pair_features(
        centre_pos.unsqueeze(1).expand(-1, neighbor_index.size(1), -1),
        centre_normal.unsqueeze(1).expand(-1, neighbor_index.size(1), -1),
        pos[safe],
        normal[safe],
    )
    angles = ppf[..., 1:]
    if sign_invariant:
        angles = torch.minimum(angles, math.pi - angles)
    ppf = torch.cat([ppf[..., :1], angles / math.pi], dim=-1)
    return neighbor_index, ppf * valid.unsqueeze(-1).to(ppf.dtype)


def knn_interpolate(x: Tensor, pos_from: Tensor, pos_to: Tensor, k: int = 3) -> Tensor:
    """Inverse-distance interpolation of features ``x [N, C]`` at ``pos_from`` onto ``pos_to [M, 3]``.

    ``y_i = sum_j w_ij x_j / sum_j w_ij`` over the ``k`` nearest ``pos_from`` points, ``w = 1/(d + 1e-8)``
    (Point Transformer's decoder interpolation; distances only, hence rotation invariant).
    """
    index, dist2 = knn(pos_from, pos_to, min(k, pos_from.size(0)))
    valid = index >= 0
    weight = torch.where(valid, 1.0 / (dist2.clamp(min=0).sqrt() + 1e-8), torch.zeros_like(dist2))
    weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return (x[index.clamp(min=0)] * weight.unsqueeze(-1).to(x.dtype)).sum(dim=1)


def _masked_softmax(score: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim`` ignoring invalid entries; an all-invalid slice gives zeros (no NaN)."""
    filled = score.masked_fill(~valid, torch.finfo(score.dtype).min)
    return torch.softmax(filled, dim=dim) * valid.to(score.dtype)


class PPFAttention(nn.Module):
    r"""Local attention over kNN groups with a PPF embedding on keys and values (RoITr Sec. 3.2).

    With :math:`h = W_{in} x`, a centre :math:`c` and its group :math:`j \in G(c)`:

    .. math::
        e_{cj} = W_e\,\mathrm{PPF}(c, j),\quad
        s_{cj} = \frac{(W_q h_c)\cdot(W_k h_j + W_p e_{cj})}{\sqrt{H/h}},\quad
        y_c = \sum_j \mathrm{softmax}_j(s_{cj})\,(W_v h_j + W_{vp} e_{cj})

    per head, then ``out = W_out LayerNorm(W_o y_c + h_c)``.

    Shapes: ``x [N, C_in]`` support features, ``neighbor_index [M, K]`` (-1 = padding), ``ppf [M, K, 4]``,
    ``query_index [M]`` (centres in the support; ``None`` when the centres are the support itself)
    -> ``[M, C_out]``. Index ranges (``neighbor_index`` in ``[-1, N)``, ``query_index`` in ``[0, N)``)
    are checked with ``GEOATTN_DEBUG=1``.

    Runs in the dtype of its parameters (float32, float64 or bfloat16, all computed in that dtype);
    ``x`` must match it, ``ppf`` (any floating dtype) is cast to it.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None, heads: int = 4):
        super().__init__()
        hidden_channels = hidden_channels or min(out_channels, 256)
        if hidden_channels % heads != 0:
            raise ValueError(f"heads: expected a divisor of hidden_channels={hidden_channels}, got {heads}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels, self.heads = hidden_channels, heads
        self.in_proj = nn.Linear(in_channels, hidden_channels)
        self.ppf_embed = nn.Linear(4, hidden_channels)
        self.query = nn.Linear(hidden_channels, hidden_channels)
        self.key = nn.Linear(hidden_channels, hidden_channels)
        self.value = nn.Linear(hidden_channels, hidden_channels)
        self.key_position = nn.Linear(hidden_channels, hidden_channels)
        self.value_position = nn.Linear(hidden_channels, hidden_channels)
        self.attn_out = nn.Linear(hidden_channels, hidden_channels)
        self.norm = nn.LayerNorm(hidden_channels)
        self.out_proj = nn.Linear(hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def _folded(self, position: nn.Linear) -> tuple[Tensor, Tensor]:
        """Weight and bias of ``position(ppf_embed(.))`` as one linear map."""
        weight = position.weight @ self.ppf_embed.weight
        bias = position.weight @ self.ppf_embed.bias + position.bias
        return weight, bias

    def forward(self, x: Tensor, neighbor_index: Tensor, ppf: Tensor, query_index: Tensor | None = None) -> Tensor:
        _check_dtype("x", x, self.in_proj.weight.dtype)
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(
                f"x: expected a 2-D tensor [N, C] with C={self.in_channels}, got shape {tuple(x.shape)}"
            )
        _check_index("neighbor_index", neighbor_index, 2)
        if not isinstance(ppf, Tensor) or ppf.shape != (*neighbor_index.shape, 4):
            shape = tuple(ppf.shape) if isinstance(ppf, Tensor) else type(ppf).__name__
            raise ValueError(f"ppf: expected shape {(*neighbor_index.shape, 4)} matching neighbor_index, got {shape}")
        if not ppf.is_floating_point():
            raise TypeError(f"ppf: expected a floating-point tensor, got dtype {ppf.dtype}")
        _check_range("neighbor_index", neighbor_index, -1, x.size(0), "support rows, -1 = padding")
        if query_index is not None:
            _check_index("query_index", query_index, 1)
            _check_range("query_index", query_index, 0, x.size(0), "support rows")
        num_queries, group = neighbor_index.shape
        heads, head_dim = self.heads, self.hidden_channels // self.heads
        h = self.in_proj(x)
        centre = h if query_index is None else h[query_index]
        if centre.size(0) != num_queries:
            raise ValueError(
                f"neighbor_index: expected {centre.size(0)} rows (one per centre), got {num_queries}"
            )
        valid = neighbor_index >= 0
        safe = neighbor_index.clamp(min=0)
        # Project before gathering (N rows instead of M*K), and fold W_p W_e (resp. W_vp W_e) into one
        # 4 -> H map: the same function as embedding first, at a fraction of the cost.
        ppf = ppf.to(h.dtype)
        q = self.query(centre).view(num_queries, heads, head_dim)
        k = self.key(h)[safe] + nn.functional.linear(ppf, *self._folded(self.key_position))
        v = self.value(h)[safe] + nn.functional.linear(ppf, *self._folded(self.value_position))
        k = k.view(num_queries, group, heads, head_dim)
        v = v.view(num_queries, group, heads, head_dim)
        # broadcast products rather than einsum: einsum runs these as M * heads tiny matrix products,
        # 2-4x slower on CPU for groups of 8-16 points
        score = (q.unsqueeze(1) * k).sum(-1) / math.sqrt(head_dim)
        attn = _masked_softmax(score, valid.unsqueeze(-1).expand_as(score), dim=1)
        y = (attn.unsqueeze(-1) * v).sum(1).reshape(num_queries, self.hidden_channels)
        y = self.norm(self.attn_out(y) + centre)
        return self.out_proj(y)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"hidden={self.hidden_channels}, heads={self.heads})"
        )


class PointInstanceNorm(nn.Module):
    r"""Per-channel standardisation over the points of one cloud, with a learnable affine map.

    :math:`y_{nc} = \gamma_c (x_{nc} - \mu_c)/\sqrt{\sigma_c^2 + \epsilon} + \beta_c`, statistics over the
    ``N`` points of ``x [N, C]`` (batch-size-one BatchNorm without running statistics, so training and
    inference agree). The statistics of invariant features are invariant, so is the output. Unlike a
    LayerNorm over channels it removes what all points share: with RoITr's constant input features the
    first layers differ between points only by a few percent, and this keeps that difference visible.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(f"x: expected [N, {self.channels}], got shape {tuple(x.shape)}")
        _check_dtype("x", x, self.weight.dtype)
        mean = x.mean(dim=0, keepdim=True)
        var = x.var(dim=0, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels})"


class PPFAttentionBlock(nn.Module):
    """Residual block ``relu(LayerNorm(PPFAttention(x)) + x)`` on a fixed set of groups ([N, C] -> [N, C])."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.channels = channels
        self.attention = PPFAttention(channels, channels, heads=heads)
        self.norm = nn.LayerNorm(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor, neighbor_index: Tensor, ppf: Tensor) -> Tensor:
        return torch.relu(self.norm(self.attention(x, neighbor_index, ppf)) + x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.attention.heads})"


def _sinusoid(value: Tensor, channels: int) -> Tensor:
    """Transformer sinusoidal embedding of a scalar tensor ``[...]`` -> ``[..., channels]``."""
    frequency = torch.exp(
        torch.arange(0, channels, 2, device=value.device, dtype=value.dtype) * (-math.log(10000.0) / channels)
    )
    angle = value.unsqueeze(-1) * frequency
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)


class GeometricStructureEmbedding(nn.Module):
    r"""GeoTransformer's invariant pair embedding of one frame's superpoints ``pos [N, 3] -> [N, N, H]``.

    :math:`r_{ij} = W_d\,\sin\!\cos(\lVert p_i - p_j\rVert/\sigma_d) +
    \max_{x \in kNN(i)} W_a\,\sin\!\cos(\angle(p_x - p_i, p_j - p_i)\cdot 180/(\pi\sigma_a))`.
    Memory is :math:`O(N^2 k H)`; ``max_points`` turns an oversized input into a clear error.
    """

    def __init__(self, hidden_channels: int, sigma_d: float = 0.2, sigma_a: float = 15.0, angle_k: int = 3,
                 reduction: str = "max", max_points: int = 2048):
        super().__init__()
        if hidden_channels % 2 != 0:
            raise ValueError(f"hidden_channels: expected an even number, got {hidden_channels}")
        if reduction not in ("max", "mean"):
            raise ValueError(f"reduction: expected 'max' or 'mean', got {reduction!r}")
        self.hidden_channels, self.sigma_d, self.sigma_a = hidden_channels, sigma_d, sigma_a
        self.angle_k, self.reduction, self.max_points = angle_k, reduction, max_points
        self.distance_proj = nn.Linear(hidden_channels, hidden_channels)
        self.angle_proj = nn.Linear(hidden_channels, hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.distance_proj.reset_parameters()
        self.angle_proj.reset_parameters()

    def forward(self, pos: Tensor) -> Tensor:
        _check_points("pos", pos)
        pos = pos.to(self.distance_proj.weight.dtype)
        num = pos.size(0)
        if num > self.max_points:
            raise ValueError(
                f"pos: at most max_points={self.max_points} superpoints fit the O(N^2) embedding, got {num}; "
                "use a larger voxel size or fewer input points"
            )
        diff = pos.unsqueeze(0) - pos.unsqueeze(1)  # [i, j] = p_j - p_i
        distance = diff.norm(dim=-1)
        embedding = self.distance_proj(_sinusoid(distance / self.sigma_d, self.hidden_channels))
        k = min(self.angle_k, num - 1)
        if k > 0:
            index, _ = knn(pos, pos, k + 1)
            reference = pos[index[:, 1:].clamp(min=0)] - pos.unsqueeze(1)  # [N, k, 3]
            ref = reference.unsqueeze(1)  # [i, 1, k, 3]
            anchor = diff.unsqueeze(2)  # [i, j, 1, 3]
            sin = torch.linalg.cross(ref.expand(-1, num, -1, -1), anchor.expand(-1, -1, k, -1), dim=-1).norm(dim=-1)
            cos = (ref * anchor).sum(dim=-1)
            angle = torch.atan2(sin, cos) * (180.0 / (math.pi * self.sigma_a))
            angle_embedding = self.angle_proj(_sinusoid(angle, self.hidden_channels))
            if self.reduction == "max":
                angle_embedding = angle_embedding.max(dim=2).values
            else:
                angle_embedding = angle_embedding.mean(dim=2)
            embedding = embedding + angle_embedding
        return embedding

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.hidden_channels}, sigma_d={self.sigma_d}, "
            f"sigma_a={self.sigma_a}, angle_k={self.angle_k})"
        )


class _FeedForward(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, 2 * channels), nn.ReLU(), nn.Linear(2 * channels, channels))
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class RPESelfAttentionBlock(nn.Module):
    r"""Self-attention with relative geometric embedding, plus RoITr's positional state.

    :math:`s_{ij} = q_i\cdot(k_j + W_p r_{ij})/\sqrt{d_h}`, :math:`h_i = \sum_j \mathrm{softmax}_j(s)_{ij} v_j`,
    and :math:`\mathrm{pos}_i = \sum_{j \ne i} \mathrm{softmax}_{j \ne i}(s)_{ij}\, W_{vp} r_{ij}`.
    Both pass through Linear -> LayerNorm (-> residual for h) -> feed-forward.
    ``x [N, C]``, ``embedding [N, N, C]`` -> ``(x' [N, C], pos [N, C])``.
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"heads: expected a divisor of channels={channels}, got {heads}")
        self.channels, self.heads = channels, heads
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.key_position = nn.Linear(channels, channels)
        self.value_position = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.ffn = _FeedForward(channels)
        self.pos_out = nn.Linear(channels, channels)
        self.pos_norm = nn.LayerNorm(channels)
        self.pos_ffn = _FeedForward(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def forward(self, x: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        num = x.size(0)
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(f"x: expected [N, {self.channels}], got shape {tuple(x.shape)}")
        if embedding.shape != (num, num, self.channels):
            raise ValueError(
                f"embedding: expected shape {(num, num, self.channels)}, got {tuple(embedding.shape)}"
            )
        _check_dtype("x", x, self.query.weight.dtype)
        _check_dtype("embedding", embedding, self.query.weight.dtype)
        heads, head_dim = self.heads, self.channels // self.heads
        q = self.query(x).view(num, heads, head_dim)
        k = self.key(x).view(num, heads, head_dim)
        v = self.value(x).view(num, heads, head_dim)
        # W_p and W_vp act on the [N, N, C] embedding; applying them to the [N, heads, C]-sized factors
        # instead is the same sum with C / heads times fewer products:
        #   q_i . (W_p r_ij + b_p) = (W_p^T q_i) . r_ij + q_i . b_p   (per head)
        #   sum_j a_ij (W_vp r_ij + b_vp) = W_vp (sum_j a_ij r_ij) + b_vp sum_j a_ij
        key_weight = self.key_position.weight.view(heads, head_dim, self.channels)
        value_weight = self.value_position.weight.view(heads, head_dim, self.channels)
        query_embedding = torch.einsum("ihd,hdc->ihc", q, key_weight)
        position_score = torch.einsum("ihc,ijc->hij", query_embedding, embedding)
        position_bias = (q * self.key_position.bias.view(heads, head_dim)).sum(-1).T.unsqueeze(-1)  # [h, i, 1]
        score = (torch.einsum("ihd,jhd->hij", q, k) + position_score + position_bias) / math.sqrt(head_dim)
        h = torch.einsum("hij,jhd->ihd", torch.softmax(score, dim=-1), v).reshape(num, self.channels)
        off_diagonal = ~torch.eye(num, dtype=torch.bool, device=x.device).unsqueeze(0).expand_as(score)
        pos_attn = _masked_softmax(score, off_diagonal, dim=-1)
        attended = torch.einsum("hij,ijc->ihc", pos_attn, embedding)
        pos = (torch.einsum("ihc,hdc->ihd", attended, value_weight)
               + pos_attn.sum(-1).T.unsqueeze(-1) * self.value_position.bias.view(heads, head_dim))
        pos = pos.reshape(num, self.channels)
        x = self.ffn(self.norm(x + self.out(h)))
        pos = self.pos_ffn(self.pos_norm(self.pos_out(pos)))
        return x, pos

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads})"


class PositionalCrossAttentionBlock(nn.Module):
    r"""Cross-attention from frame A to frame B with invariant positional states (RoITr).

    :math:`q_i = W_q(x_i + \mathrm{pos}_i)`, :math:`k_j = W_k(y_j + \mathrm{pos}_j)`, :math:`v_j = W_v y_j`;
    output Linear -> LayerNorm(residual) -> feed-forward. ``x [N, C], pos_x [N, C], y [M, C], pos_y [M, C]
    -> [N, C]``.
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"heads: expected a divisor of channels={channels}, got {heads}")
        self.channels, self.heads = channels, heads
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.ffn = _FeedForward(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def forward(self, x: Tensor, pos_x: Tensor, y: Tensor, pos_y: Tensor) -> Tensor:
        for name, value in (("x", x), ("pos_x", pos_x), ("y", y), ("pos_y", pos_y)):
            if value.dim() != 2 or value.size(1) != self.channels:
                raise ValueError(f"{name}: expected [*, {self.channels}], got shape {tuple(value.shape)}")
            _check_dtype(name, value, self.query.weight.dtype)
        heads, head_dim = self.heads, self.channels // self.heads
        q = self.query(x + pos_x).view(x.size(0), heads, head_dim)
        k = self.key(y + pos_y).view(y.size(0), heads, head_dim)
        v = self.value(y).view(y.size(0), heads, head_dim)
        score = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(head_dim)
        h = torch.einsum("hij,jhd->ihd", torch.softmax(score, dim=-1), v).reshape(x.size(0), self.channels)
        return self.ffn(self.norm(x + self.out(h)))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads})"


class RotationInvariantTransformer(nn.Module):
    """RoITr's global transformer: interleaved geometric self-attention and positional cross-attention.

    ``forward(pos_a [N, 3], x_a [N, C_in], pos_b [M, 3], x_b [M, C_in]) -> (x_a' [N, C_out], x_b' [M, C_out])``.
    Each frame's embedding uses only its own geometry, so the output is invariant to independent rigid
    motions of the two frames. A ``'cross'`` block uses the positional states of the preceding
    ``'self'`` block (zeros when there is none).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, heads: int = 4,
                 blocks: tuple[str, ...] = ("self", "cross") * 3, sigma_d: float = 0.2, sigma_a: float = 15.0,
                 angle_k: int = 3, max_points: int = 2048):
        super().__init__()
        for block in blocks:
            if block not in ("self", "cross"):
                raise ValueError(f"blocks: expected entries 'self' or 'cross', got {block!r}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.block_types = tuple(blocks)
        self.embedding = GeometricStructureEmbedding(hidden_channels, sigma_d, sigma_a, angle_k, max_points=max_points)
        self.in_proj = nn.Linear(in_channels, hidden_channels)
        self.blocks = nn.ModuleList(
            RPESelfAttentionBlock(hidden_channels, heads) if block == "self"
            else PositionalCrossAttentionBlock(hidden_channels, heads)
            for block in blocks
        )
        self.out_proj = nn.Linear(hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()

    def forward(self, pos_a: Tensor, x_a: Tensor, pos_b: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
        _check_dtype("x_a", x_a, self.in_proj.weight.dtype)
        _check_dtype("x_b", x_b, self.in_proj.weight.dtype)
        embed_a, embed_b = self.embedding(pos_a), self.embedding(pos_b)
        x_a, x_b = self.in_proj(x_a), self.in_proj(x_b)
        state_a, state_b = torch.zeros_like(x_a), torch.zeros_like(x_b)
        for kind, block in zip(self.block_types, self.blocks):
            if kind == "self":
                x_a, state_a = block(x_a, embed_a)
                x_b, state_b = block(x_b, embed_b)
            else:
                x_a, x_b = block(x_a, state_a, x_b, state_b), block(x_b, state_b, x_a, state_a)
        return self.out_proj(x_a), self.out_proj(x_b)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, {self.out_channels}, "
            f"blocks={list(self.block_types)})"
        )


class LearnableLogOptimalTransport(nn.Module):
    r"""Log-domain Sinkhorn with a learnable dustbin score :math:`\alpha` (SuperGlue / GeoTransformer).

    ``scores [B, M, N]`` with optional ``row_masks [B, M]`` / ``col_masks [B, N]`` (True = real point)
    -> log assignment ``[B, M + 1, N + 1]`` (last row/column = dustbin). Marginals per batch item:
    rows ``1/(m+n)`` each and ``n/(m+n)`` for the dustbin row, columns symmetric, with m, n the numbers
    of real rows/columns. Masked entries come out as a very negative number.
    """

    def __init__(self, num_iterations: int = 100, inf: float = 1e12):
        super().__init__()
        self.num_iterations, self.inf = num_iterations, inf
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(1.0)

    def forward(self, scores: Tensor, row_masks: Tensor | None = None, col_masks: Tensor | None = None,
                num_iterations: int | None = None) -> Tensor:
        """``num_iterations`` overrides the constructor's value (e.g. fewer iterations at inference)."""
        if scores.dim() != 3:
            raise ValueError(f"scores: expected a 3-D tensor [B, M, N], got shape {tuple(scores.shape)}")
        if not scores.is_floating_point():
            raise TypeError(f"scores: expected a floating-point tensor, got dtype {scores.dtype}")
        batch, rows, cols = scores.shape
        if row_masks is None:
            row_masks = torch.ones(batch, rows, dtype=torch.bool, device=scores.device)
        if col_masks is None:
            col_masks = torch.ones(batch, cols, dtype=torch.bool, device=scores.device)
        compute_dtype = torch.promote_types(scores.dtype, torch.float32)
        scores = scores.to(compute_dtype)
        padded = torch.cat([scores, self.alpha.to(compute_dtype).expand(batch, rows, 1)], dim=2)
        padded = torch.cat([padded, self.alpha.to(compute_dtype).expand(batch, 1, cols + 1)], dim=1)
        true_col = torch.ones(batch, 1, dtype=torch.bool, device=scores.device)
        row_valid = torch.cat([row_masks, true_col], dim=1)
        col_valid = torch.cat([col_masks, true_col], dim=1)
        valid = row_valid.unsqueeze(2) & col_valid.unsqueeze(1)
        padded = padded.masked_fill(~valid, -self.inf)

        num_rows = row_masks.sum(dim=1).to(compute_dtype)
        num_cols = col_masks.sum(dim=1).to(compute_dtype)
        norm = -torch.log(num_rows + num_cols)  # [B]
        log_mu = norm.unsqueeze(1).expand(batch, rows + 1).clone()
        log_mu[:, -1] = torch.log(num_cols) + norm
        log_mu = log_mu.masked_fill(~row_valid, -self.inf)
        log_nu = norm.unsqueeze(1).expand(batch, cols + 1).clone()
        log_nu[:, -1] = torch.log(num_rows) + norm
        log_nu = log_nu.masked_fill(~col_valid, -self.inf)

        iterations = self.num_iterations if num_iterations is None else num_iterations
        if torch.is_grad_enabled() and (padded.requires_grad or scores.requires_grad):
            u, v = self._log_domain(padded, log_mu, log_nu, iterations)
        else:
            u, v = self._scaling_domain(padded, log_mu, log_nu, iterations, self.inf)
        return padded + u.unsqueeze(2) + v.unsqueeze(1) - norm.view(batch, 1, 1)

    @staticmethod
    def _log_domain(padded: Tensor, log_mu: Tensor, log_nu: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
        u = torch.zeros_like(log_mu)
        v = torch.zeros_like(log_nu)
        for _ in range(iterations):
            u = log_mu - torch.logsumexp(padded + v.unsqueeze(1), dim=2)
            v = log_nu - torch.logsumexp(padded + u.unsqueeze(2), dim=1)
        return u, v

    @staticmethod
    def _scaling_domain(padded: Tensor, log_mu: Tensor, log_nu: Tensor, iterations: int,
                        inf: float) -> tuple[Tensor, Tensor]:
        """The same iterates as :meth:`_log_domain` with one ``exp`` instead of two per iteration.

        With row maxima :math:`r_i` and :math:`K_{ij} = e^{s_{ij} - r_i} \le 1`, the scalings
        :math:`a = \mu / (K b)`, :math:`b = \nu / (K^\top a)` (from :math:`b = 1`) satisfy
        :math:`a = e^{u + r}`, :math:`b = e^{v}` at every iteration, so :math:`u = \log a - r`,
        :math:`v = \log b`. Every real row holds a 1 (its maximum) and every column a 1 (the dustbin row
        is constant), so no sum underflows; used when no gradient is needed.
        """
        row_max = padded.amax(dim=2, keepdim=True)
        row_max = row_max.masked_fill(row_max < -0.5 * inf, 0.0)  # a masked row keeps its -inf entries
        kernel = torch.exp(padded - row_max)
        mu, nu = log_mu.exp().unsqueeze(2), log_nu.exp().unsqueeze(2)
        tiny = torch.finfo(padded.dtype).tiny
        b = torch.ones_like(nu)
        a = mu
        for _ in range(iterations):
            a = mu / torch.bmm(kernel, b).clamp(min=tiny)
            b = nu / torch.bmm(kernel.transpose(1, 2), a).clamp(min=tiny)
        # masked rows/columns have zero marginals: clamp their log scalings to a finite, very negative value
        u = a.squeeze(2).clamp(min=tiny).log() - row_max.squeeze(2)
        v = b.squeeze(2).clamp(min=tiny).log()
        return u, v

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_iterations={self.num_iterations})"
