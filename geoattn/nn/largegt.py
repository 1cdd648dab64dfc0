r"""LargeGT layers: local attention over sampled token sets and codebook global attention.

Both follow "Graph Transformers for Large Graphs" (Dwivedi et al., 2023) and its official code, with the
pitfalls of that code removed (batch size 1, int16 assignments, per-forward ``unique`` over all nodes,
unused parameters). See ``docs/reference/largegt.md`` of the project for the original.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoattn import backends

__all__ = ["LargeGTLocalAttention", "CodebookGlobalAttention"]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax normalisers of half-precision inputs are computed in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_tensor(name: str, value, ndim: int, last: int | None = None, shape_text: str = "",
                  dtype: torch.dtype | None = None) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim or (last is not None and value.size(-1) != last):
        expected = f"a {ndim}-D tensor {shape_text}" + (f" with last dimension {last}" if last is not None else "")
        raise ValueError(f"{name}: expected {expected}, got shape {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the layer's parameters), got {value.dtype}")


class LargeGTLocalAttention(nn.Module):
    r"""Pre-norm multi-head self-attention over a target's token set and an attention readout.

    For tokens :math:`X \in \mathbb{R}^{B \times T \times C}` (token 0 is the target itself):

    .. math::
        Z &= X W_{in},\qquad Y = \mathrm{LN}(Z),\\
        A &= \mathrm{softmax}\big((Y W_Q^h)(Y W_K^h)^\top / \sqrt{d}\big)\ (Y W_V^h)\quad (h = 1..H),\\
        O &= \mathrm{LN}\big(Z W_{skip} + \mathrm{Dropout}([A^1 \| \dots \| A^H] W_O)\big) \in \mathbb{R}^{B\times T\times Hd},\\
        s_t &= w^\top [O_0 \,\|\, O_t],\quad
        \mathrm{out} = O_0 + \textstyle\sum_{t \ge 1} \mathrm{softmax}_t(s_t)\, O_t \in \mathbb{R}^{B \times Hd}.

    As in the official code the per-head size defaults to ``d = channels`` (not ``channels / heads``) and
    there is no feed-forward block; the output has ``heads * head_channels`` features. Without positional
    encodings the output is invariant to any permutation of tokens ``1..T-1``.

    Runs in the dtype of its parameters (float32, float64 or bfloat16; ``tokens`` must match): bfloat16
    computes in bfloat16 except the readout softmax, normalised in float32.

    Args:
        channels: token width ``C``.
        heads: number of heads ``H``.
        head_channels: per-head width ``d`` (default ``channels``, as in the official code).
        dropout: dropout after the attention output and the residual (official 0.3).
        attn_dropout: dropout on the attention weights (official 0).

    Shapes:
        input ``tokens [B, T, C]`` with ``T >= 1``; output ``[B, H * d]``; with
        ``return_attention=True`` also the readout weights ``[B, T - 1]``.
    """

    def __init__(self, channels: int, heads: int = 2, head_channels: int | None = None, dropout: float = 0.3,
                 attn_dropout: float = 0.0):
        super().__init__()
        if channels < 1 or heads < 1:
            raise ValueError(f"channels, heads: expected positive ints, got {channels}, {heads}")
        self.channels = channels
        self.heads = heads
        self.head_channels = head_channels or channels
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        width = self.heads * self.head_channels
        self.lin_in = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.lin_qkv = nn.Linear(channels, 3 * width)
        self.lin_out = nn.Linear(width, width)
        self.lin_skip = nn.Linear(channels, width)
        self.norm_out = nn.LayerNorm(width)
        self.readout = nn.Linear(2 * width, 1)
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.heads * self.head_channels

    def reset_parameters(self) -> None:
        # official init: N(0, 0.02) weights, zero biases
        for module in (self.lin_in, self.lin_qkv, self.lin_out, self.lin_skip, self.readout):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        self.norm.reset_parameters()
        self.norm_out.reset_parameters()

    def forward(self, tokens: Tensor, return_attention: bool = False):
        _check_tensor("tokens", tokens, 3, self.channels, "[B, T, C]", self.lin_in.weight.dtype)
        if tokens.size(1) < 1:
            raise ValueError("tokens: expected at least one token (the target) per set, got T = 0")
        batch, num_tokens, _ = tokens.shape
        z = self.lin_in(tokens)
        y = self.norm(z)
        q, k, v = self.lin_qkv(y).view(batch, num_tokens, 3, self.heads, self.head_channels).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).reshape(batch, num_tokens, self.out_channels)
        attended = F.dropout(self.lin_out(attended), self.dropout, self.training)
        out = self.norm_out(F.dropout(self.lin_skip(z) + attended, self.dropout, self.training))
        node, neighbours = out[:, 0], out[:, 1:]
        scores = self.readout(torch.cat([node.unsqueeze(1).expand_as(neighbours), neighbours], dim=-1))
        weights = torch.softmax(scores.squeeze(-1).to(_accumulation_dtype(out.dtype)), dim=1).to(out.dtype)  # [B, T-1]; fp32 normaliser
        result = node + torch.einsum("bt,btc->bc", weights, neighbours)
        return (result, weights) if return_attention else result

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
                f"head_channels={self.head_channels})")


class CodebookGlobalAttention(nn.Module):
    r"""Attention of each target against ``C`` centroids kept by mini-batch EMA k-means (GOAT / LargeGT).

    The query input is :math:`q_x = [x W_g \,\|\, p] \in \mathbb{R}^{D}`, ``D = global_channels +
    pos_channels`` (``p`` an optional positional encoding). Centroids :math:`\mu_c` live in the
    BatchNorm-normalised space of :math:`q_x` and are de-normalised for attention,
    :math:`\tilde\mu_c = \mu_c \sqrt{\sigma^2 + \epsilon} + m`:

    .. math::
        \alpha_{bc} = \mathrm{softmax}_c\Big(\frac{(q_x W_Q)_b \cdot (\tilde\mu_c W_K)}{\sqrt d} + \log n_c\Big),\qquad
        \mathrm{out}_b = \sum_c \alpha_{bc}\, \tilde\mu_c^{[:g]} W_V,

    per head, with ``n_c`` the number of graph nodes currently assigned to centroid ``c``: an empty
    cluster gets ``log 0 = -inf``, i.e. weight exactly 0. Values use only the feature part of a centroid.

    In training mode each call also updates the codebook (no gradient): ``BN(q_x)`` (batch statistics,
    running stats updated), nearest centroid by squared L2, EMA with decay ``decay`` of cluster sizes
    (Laplace-smoothed) and of member sums, :math:`\mu_c = w_c / n^{ema}_c`, and the int32 assignment of
    the batch's nodes. Counts ``n_c`` are maintained incrementally (``cluster_counts`` always sums to
    ``num_nodes``), never recomputed over all nodes. Unlike GOAT the EMA sizes start at 1 and the EMA
    sums at the initial centroids, so unused centroids keep their position instead of drifting.
    In eval mode nothing changes.

    A batch with a non-finite query (NaN or inf in ``x``, ``pos_enc`` or the weights) leaves the codebook,
    the running statistics and the assignments unchanged: one bad batch would otherwise turn every
    centroid NaN for good. The choice is made on the device (no host synchronisation); with
    ``GEOATTN_DEBUG=1`` such a batch raises ``ValueError`` instead.

    Runs in the dtype of its parameters (float32, float64 or bfloat16; ``x`` and ``pos_enc`` must match).
    Attention logits and softmax are computed in float32 for bfloat16; the codebook update is computed in
    at least float32 and stored in the buffers' dtype.

    Args:
        in_channels: width of ``x``.
        num_nodes: number of graph nodes ``N`` (size of the assignment buffer).
        num_centroids: ``C`` (official 4096).
        global_channels: ``g`` (official 64).
        pos_channels: width of the positional encoding (0: none).
        heads, head_channels: attention heads and per-head width ``d`` (default ``in_channels``).
        decay: EMA decay (0.99); eps: BatchNorm/Laplace epsilon; attn_dropout: dropout on ``alpha``.

    Shapes:
        ``x [B, in_channels]``, ``node_index [B]`` (global node ids; required in training),
        ``pos_enc [B, pos_channels]``; output ``[B, heads * head_channels]``; with
        ``return_attention=True`` also ``alpha [B, heads, C]``.
    """

    def __init__(self, in_channels: int, num_nodes: int, num_centroids: int = 4096, global_channels: int = 64,
                 pos_channels: int = 0, heads: int = 2, head_channels: int | None = None, decay: float = 0.99,
                 eps: float = 1e-5, attn_dropout: float = 0.0):
        super().__init__()
        if num_centroids < 1 or num_nodes < 1:
            raise ValueError(f"num_centroids, num_nodes: expected positive ints, got {num_centroids}, {num_nodes}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        if num_centroids > 2**31 - 1:
            raise ValueError(f"num_centroids: at most 2^31 - 1 for the int32 assignment, got {num_centroids}")
        self.in_channels = in_channels
        self.num_nodes = num_nodes
        self.num_centroids = num_centroids
        self.global_channels = global_channels
        self.pos_channels = pos_channels
        self.heads = heads
        self.head_channels = head_channels or in_channels
        self.decay = decay
        self.eps = eps
        self.attn_dropout = attn_dropout
        dim = global_channels + pos_channels
        width = self.heads * self.head_channels
        self.lin_global = nn.Linear(in_channels, global_channels)
        self.lin_query = nn.Linear(dim, width)
        self.lin_key = nn.Linear(dim, width)
        self.lin_value = nn.Linear(global_channels, width)
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=eps)
        self.register_buffer("embedding", torch.empty(num_centroids, dim))
        self.register_buffer("embedding_output", torch.empty(num_centroids, dim))
        self.register_buffer("ema_cluster_size", torch.empty(num_centroids))
        self.register_buffer("ema_w", torch.empty(num_centroids, dim))
        self.register_buffer("assignment", torch.empty(num_nodes, dtype=torch.int32))
        self.register_buffer("cluster_counts", torch.empty(num_centroids, dtype=torch.long))
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.heads * self.head_channels

    def reset_parameters(self) -> None:
        for module in (self.lin_global, self.lin_query, self.lin_key, self.lin_value):
            module.reset_parameters()
        self.norm.reset_parameters()
        with torch.no_grad():
            self.embedding.normal_()
            self.embedding_output.copy_(self.embedding)  # running stats start at mean 0, var 1
            self.ema_cluster_size.fill_(1.0)
            self.ema_w.copy_(self.embedding)
            self.assignment.copy_(torch.randint(0, self.num_centroids, (self.num_nodes,), dtype=torch.int32,
                                                device=self.assignment.device))
            self.cluster_counts.copy_(torch.bincount(self.assignment.long(), minlength=self.num_centroids))

    @torch.no_grad()
    def _update(self, queries: Tensor, node_index: Tensor) -> None:
        work = torch.promote_types(self.embedding.dtype, torch.float32)
        queries = queries.to(work)
        running_mean, running_var = self.norm.running_mean.to(work), self.norm.running_var.to(work)
        if queries.size(0) > 1:
            # BatchNorm1d in training mode, written out so that it runs in `work` whatever the buffers' dtype
            mean, var = queries.mean(dim=0), queries.var(dim=0, unbiased=False)
            normalised = (queries - mean) / torch.sqrt(var + self.eps)
            momentum = self.norm.momentum
            unbiased = var * (queries.size(0) / (queries.size(0) - 1))
            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var = (1 - momentum) * running_var + momentum * unbiased
        else:
            # a single sample has no batch statistics: use the running ones (and leave them unchanged)
            normalised = (queries - running_mean) / torch.sqrt(running_var + self.eps)
        finite = torch.isfinite(normalised).all()
        if backends.debug_checks() and not bool(finite):
            raise ValueError("x: expected finite queries for the codebook update, got NaN or inf "
                             "(in x, pos_enc or the layer's weights)")
        nearest = torch.cdist(normalised, self.embedding.to(work)).pow(2).argmin(dim=1)
        # index_add_ rather than bincount, which reads the maximum back to the host on CUDA
        counts = torch.zeros(self.num_centroids, dtype=work, device=queries.device).index_add_(
            0, nearest, torch.ones_like(nearest, dtype=work))
        size = self.ema_cluster_size.to(work) * self.decay + counts * (1 - self.decay)
        total = size.sum()
        size = (size + self.eps) / (total + self.num_centroids * self.eps) * total
        sums = torch.zeros(self.ema_w.shape, dtype=work, device=queries.device).index_add_(0, nearest, normalised)
        ema_w = self.ema_w.to(work) * self.decay + sums * (1 - self.decay)
        embedding = ema_w / size[:, None]
        embedding_output = embedding * torch.sqrt(running_var + self.eps) + running_mean
        # a non-finite batch keeps every state as it was: selected on the device, no host synchronisation
        for buffer, value in ((self.norm.running_mean, running_mean), (self.norm.running_var, running_var),
                              (self.ema_cluster_size, size), (self.ema_w, ema_w), (self.embedding, embedding),
                              (self.embedding_output, embedding_output)):
            buffer.copy_(torch.where(finite, value, buffer.to(work)))
        if queries.size(0) > 1:
            self.norm.num_batches_tracked.add_(finite.long())
        # assignments: one entry per distinct node (the last occurrence wins), counts kept in sync. Fixed
        # shapes (a stable sort and additive updates, no unique): nothing is read back to the host.
        nodes, order = torch.sort(node_index, stable=True)
        last = torch.ones_like(nodes, dtype=torch.bool)
        last[:-1] = nodes[1:] != nodes[:-1]
        old = self.assignment[nodes].long()
        new = torch.where(finite & last, nearest[order], old)
        self.cluster_counts.index_add_(0, old, -last.long())
        self.cluster_counts.index_add_(0, new, last.long())
        self.assignment.index_add_(0, nodes, (new - old).to(torch.int32))

    def forward(self, x: Tensor, node_index: Tensor | None = None, pos_enc: Tensor | None = None,
                return_attention: bool = False):
        dtype = self.lin_global.weight.dtype
        _check_tensor("x", x, 2, self.in_channels, "[B, in_channels]", dtype)
        batch = x.size(0)
        parts = [self.lin_global(x)]
        if self.pos_channels:
            if pos_enc is None:
                raise ValueError(f"pos_enc: expected a tensor [B, {self.pos_channels}] (pos_channels > 0), got None")
            _check_tensor("pos_enc", pos_enc, 2, self.pos_channels, "[B, pos_channels]", dtype)
            if pos_enc.size(0) != batch:
                raise ValueError(f"pos_enc: expected {batch} rows (as x), got {pos_enc.size(0)}")
            parts.append(pos_enc)
        elif pos_enc is not None:
            raise ValueError("pos_enc: this layer was built with pos_channels=0, got a tensor")
        queries = torch.cat(parts, dim=-1)
        if self.training:
            if node_index is None:
                raise ValueError("node_index: required in training mode (the codebook assigns graph nodes)")
            if not isinstance(node_index, Tensor) or node_index.dtype not in (torch.int64, torch.int32):
                kind = node_index.dtype if isinstance(node_index, Tensor) else type(node_index).__name__
                raise TypeError(f"node_index: expected an int64 or int32 tensor, got {kind}")
            if node_index.shape != (batch,):
                raise ValueError(f"node_index: expected shape ({batch},) (one id per row of x), "
                                 f"got {tuple(node_index.shape)}")
            if batch and backends.debug_checks():
                low, high = torch.stack(node_index.aminmax()).tolist()
                if low < 0 or high >= self.num_nodes:
                    raise ValueError(f"node_index: expected ids in [0, {self.num_nodes}), got range [{low}, {high}]")
            if batch:
                self._update(queries.detach(), node_index.long())
        centroids = self.embedding_output.to(x.dtype)
        q = self.lin_query(queries).view(batch, self.heads, self.head_channels)
        k = self.lin_key(centroids).view(-1, self.heads, self.head_channels)
        v = self.lin_value(centroids[:, : self.global_channels]).view(-1, self.heads, self.head_channels)
        accumulate = _accumulation_dtype(x.dtype)
        logits = torch.einsum("bhd,chd->bhc", q, k).to(accumulate) / math.sqrt(self.head_channels)
        logits = logits + torch.log(self.cluster_counts.to(accumulate))[None, None, :]  # log 0 = -inf: weight 0
        alpha = torch.softmax(logits, dim=-1).to(x.dtype)
        dropped = F.dropout(alpha, self.attn_dropout, self.training)
        out = torch.einsum("bhc,chd->bhd", dropped, v).reshape(batch, self.out_channels)
        return (out, alpha) if return_attention else out

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, num_centroids={self.num_centroids}, "
                f"global_channels={self.global_channels}, pos_channels={self.pos_channels}, heads={self.heads}, "
                f"num_nodes={self.num_nodes})")
