"""Graph transforms: LargeGT's hop features and token sampling, LAGNN's generated neighbour features."""
from __future__ import annotations

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from geoattn.data.largegt import sample_node_sequences
from geoattn.nn.local_augmentation import LocalAugmenter
from geoattn.sparse.graph import hop_features

__all__ = ["HopFeatures", "SampleTokens", "GenerateNeighbourFeatures"]


def _require(data: Data, name: str, transform: str):
    value = getattr(data, name, None)
    if value is None:
        raise ValueError(f"data: {transform} needs data.{name}, which is missing")
    return value


class HopFeatures(BaseTransform):
    r"""``data.hop_x [N, K + 1, F]``: :math:`x, \hat A x, \dots, \hat A^K x` with
    :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}` (LargeGT / NAGphormer hop tokens, through
    :func:`geoattn.sparse.hop_features`). ``attr`` names the output attribute."""

    def __init__(self, num_hops: int = 2, attr: str = "hop_x"):
        if not isinstance(num_hops, int) or num_hops < 0:
            raise ValueError(f"num_hops: expected a non-negative int, got {num_hops!r}")
        self.num_hops, self.attr = num_hops, attr

    def forward(self, data: Data) -> Data:
        x = _require(data, "x", "HopFeatures")
        edge_index = _require(data, "edge_index", "HopFeatures")
        data[self.attr] = hop_features(x, edge_index, self.num_hops)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_hops={self.num_hops})"


class SampleTokens(BaseTransform):
    r"""LargeGT's token sets as edges: ``data.token_index [2, N (K - 1)]`` holds ``j -> i`` for the
    ``K - 1`` nodes sampled for target ``i`` (1- and 2-hop neighbours, see
    :func:`geoattn.data.largegt.sample_node_sequences`), the ``edge_index`` that
    :class:`geoattn.nn.LargeGTConv` takes; ``data.tokens [N, K]`` keeps the sequences (target first) for the
    dense :class:`geoattn.nn.LargeGTLocalAttention` (its ids are not shifted when graphs are batched, unlike
    ``token_index``'s). The draw depends on ``seed`` only, so a dataset gives the same tokens every epoch; pass
    a new seed to re-sample."""

    def __init__(self, sequence_length: int, seed: int = 0):
        if not isinstance(sequence_length, int) or sequence_length < 1:
            raise ValueError(f"sequence_length: expected an int >= 1, got {sequence_length!r}")
        self.sequence_length, self.seed = sequence_length, seed

    def forward(self, data: Data) -> Data:
        edge_index = _require(data, "edge_index", "SampleTokens")
        tokens = sample_node_sequences(edge_index, self.sequence_length, seed=self.seed,
                                       num_nodes=data.num_nodes).to(edge_index.device)
        sources = tokens[:, 1:]
        targets = torch.arange(tokens.size(0), device=tokens.device).unsqueeze(1).expand_as(sources)
        data.tokens = tokens
        data.token_index = torch.stack([sources.reshape(-1), targets.reshape(-1)])
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(sequence_length={self.sequence_length}, seed={self.seed})"


class GenerateNeighbourFeatures(BaseTransform):
    r"""``data.x_generated``: features drawn from a fitted LAGNN :class:`~geoattn.nn.LocalAugmenter` for every
    node, ``[N, F]`` (or ``[S, N, F]`` with ``num_samples = S``), row-normalised when ``normalize``.

    The draw is seeded (``seed``), so the transform is reproducible; the augmenter is used in eval mode and
    is not trained here (fit it with :meth:`LocalAugmenter.fit` first)."""

    def __init__(self, augmenter: LocalAugmenter, num_samples: int | None = None, normalize: bool = False,
                 seed: int = 0):
        if not isinstance(augmenter, LocalAugmenter):
            raise TypeError(f"augmenter: expected a LocalAugmenter, got {type(augmenter).__name__}")
        self.augmenter, self.num_samples, self.normalize, self.seed = augmenter, num_samples, normalize, seed

    def forward(self, data: Data) -> Data:
        x = _require(data, "x", "GenerateNeighbourFeatures")
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        data.x_generated = self.augmenter.sample(x, self.num_samples, generator=generator, normalize=self.normalize)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.augmenter!r}, num_samples={self.num_samples})"
