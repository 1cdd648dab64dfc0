r"""LargeGT: local token-set attention + codebook global attention for node classification on large graphs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoattn.nn.largegt import CodebookGlobalAttention, LargeGTLocalAttention

__all__ = ["LargeGT"]

_MODES = ("local", "global", "full")


class _BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a single-sample training batch instead of raising."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.size(0) == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        return super().forward(x)


class LargeGT(nn.Module):
    r"""LargeGT (Dwivedi et al., 2023) for mini-batch node classification.

    * target encoder ``fc_in`` (global branch only): Linear(F, h) -> BN -> ReLU -> Dropout -> Linear(h, h),
      applied to the target's features ``x``;
    * token encoder: Linear(F, h) -> ReLU -> Dropout -> Linear(h, h) on the ``[B, 3K, F]`` tokens, then
      :class:`~geoattn.nn.LargeGTLocalAttention` -> ``[B, H d]`` (``mode`` ``'local'``/``'full'``);
    * :class:`~geoattn.nn.CodebookGlobalAttention` on the encoded target (and optional positional
      encoding) -> ``[B, H d]`` (``mode`` ``'global'``/``'full'``);
    * head: concat -> Linear -> BN -> ReLU -> Dropout -> Linear(., h) -> BN -> ReLU -> Dropout -> Linear(h, classes).

    Batch normalisation falls back to running statistics for a batch of one, so ``B = 1`` works in
    training and inference. No experiment tracker is involved. Runs in the dtype of its parameters
    (float32, float64 or bfloat16, see the layers for what bfloat16 computes in float32); the inputs
    must match it.

    Args:
        in_channels: node feature width ``F``; hidden_channels: ``h``; out_channels: number of classes.
        num_nodes: nodes in the graph (codebook assignment buffer; needed for ``'global'``/``'full'``).
        mode: ``'local'``, ``'global'`` or ``'full'``.
        heads, head_channels: attention heads and per-head width (default ``h``, as in the official code).
        global_channels, pos_channels, num_centroids: codebook sizes (official 64, 64 (node2vec), 4096).
        dropout: feed-forward dropout (0.5); local_dropout: local attention dropout (0.3);
        attn_dropout: attention-weight dropout (0); input_dropout: dropout on the input features of every
        token and of ``x`` (0 as in the official code; useful on small labelled sets such as Planetoid).

    Forward:
        ``tokens [B, 3K, F]`` (may be ``None`` in ``'global'`` mode), ``x [B, F]`` (default ``tokens[:, 0]``,
        the raw target features), ``node_index [B]`` (global ids, required for training the codebook),
        ``pos_enc [B, pos_channels]``; returns logits ``[B, out_channels]``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_nodes: int | None = None,
                 mode: str = "full", heads: int = 2, head_channels: int | None = None, global_channels: int = 64,
                 pos_channels: int = 0, num_centroids: int = 4096, dropout: float = 0.5, local_dropout: float = 0.3,
                 attn_dropout: float = 0.0, input_dropout: float = 0.0):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        if mode != "local" and num_nodes is None:
            raise ValueError(f"num_nodes: required for mode={mode!r} (codebook assignments), got None")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.mode = mode
        self.dropout = dropout
        self.input_dropout = input_dropout
        h = hidden_channels
        self.fc_in = self.local = self.token_encoder = self.global_attention = None
        width = 0
        if mode in ("local", "full"):
            self.token_encoder = nn.Sequential(nn.Linear(in_channels, h), nn.ReLU(), nn.Dropout(dropout),
                                               nn.Linear(h, h))
            self.local = LargeGTLocalAttention(h, heads, head_channels, local_dropout, attn_dropout)
            width += self.local.out_channels
        if mode in ("global", "full"):
            self.fc_in = nn.Sequential(nn.Linear(in_channels, h), _BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(h, h))
            self.global_attention = CodebookGlobalAttention(h, num_nodes, num_centroids, global_channels,
                                                            pos_channels, heads, head_channels,
                                                            attn_dropout=attn_dropout)
            width += self.global_attention.out_channels
        branch = width // (2 if mode == "full" else 1)
        self.head = nn.Sequential(
            nn.Linear(width, branch), _BatchNorm1d(branch), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(branch, h), _BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(h, out_channels),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, tokens: Tensor | None, x: Tensor | None = None, node_index: Tensor | None = None,
                pos_enc: Tensor | None = None) -> Tensor:
        if tokens is None and (self.mode != "global" or x is None):
            raise ValueError(f"tokens: required for mode={self.mode!r} (or pass x in 'global' mode), got None")
        if tokens is not None and (tokens.dim() != 3 or tokens.size(-1) != self.in_channels):
            raise ValueError(f"tokens: expected a 3-D tensor [B, 3K, F] with F={self.in_channels}, "
                             f"got shape {tuple(tokens.shape)}")
        dtype = self.head[0].weight.dtype
        for name, value in (("tokens", tokens), ("x", x), ("pos_enc", pos_enc)):
            if value is not None and value.dtype != dtype:
                raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the model's parameters), "
                                f"got {value.dtype}")
        branches = []
        if self.local is not None:
            branches.append(self.local(self.token_encoder(F.dropout(tokens, self.input_dropout, self.training))))
        if self.global_attention is not None:
            target = self.fc_in(F.dropout(tokens[:, 0] if x is None else x, self.input_dropout, self.training))
            branches.append(self.global_attention(target, node_index, pos_enc))
        return self.head(branches[0] if len(branches) == 1 else torch.cat(branches, dim=-1))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, {self.out_channels}, "
                f"mode={self.mode!r})")
