"""snap-patents (LINKX release, ``snap_patents.mat``): citation graph with year-quantile labels.

The ``.mat`` file holds ``edge_index`` ``[2, E]`` (directed citations), ``node_feat`` (sparse ``[N, 269]``)
and ``years`` ``[1, N]``. Following LINKX / LargeGT, labels are ``num_classes`` quantile bins of the
grant year (``even_quantile_labels``) and splits are random 50/25/25 per run; unlike the official code
the split permutation is seeded.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["even_quantile_labels", "load_snap_patents", "random_split"]


def even_quantile_labels(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ``c`` holds the values in ``[q_c, q_{c+1})`` of the ``num_classes``-quantiles (last bin closed)."""
    values = np.asarray(values).ravel()
    if num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes}")
    edges = np.quantile(values, np.linspace(0.0, 1.0, num_classes + 1))
    return np.clip(np.searchsorted(edges[1:-1], values, side="right"), 0, num_classes - 1).astype(np.int64)


def random_split(num_nodes: int, seed: int, fractions=(0.5, 0.25)) -> dict[str, torch.Tensor]:
    """Seeded random ``{'train', 'valid', 'test'}`` split (default 50/25/25)."""
    permutation = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed))
    num_train, num_valid = int(fractions[0] * num_nodes), int(fractions[1] * num_nodes)
    return {"train": permutation[:num_train], "valid": permutation[num_train : num_train + num_valid],
            "test": permutation[num_train + num_valid :]}


def load_snap_patents(path: str | os.PathLike, num_classes: int = 5):
    """Read ``snap_patents.mat``: returns ``(x [N, F] float32, edge_index [2, E] int64, y [N] int64)``."""
    import scipy.io
    import scipy.sparse as sp

    path = Path(path)
    if path.is_dir():
        path = path / "snap_patents.mat"
    if not path.is_file():
        raise FileNotFoundError(f"path: {str(path)!r} not found (expected snap_patents.mat from the LINKX release)")
    content = scipy.io.loadmat(str(path))
    missing = [key for key in ("edge_index", "node_feat", "years") if key not in content]
    if missing:
        raise ValueError(f"path: {str(path)!r} lacks the keys {missing} of the LINKX snap_patents.mat")
    edge_index = torch.from_numpy(np.asarray(content["edge_index"], dtype=np.int64))
    features = content["node_feat"]
    features = features.toarray() if sp.issparse(features) else np.asarray(features)
    x = torch.from_numpy(features.astype(np.float32, copy=False))
    y = torch.from_numpy(even_quantile_labels(content["years"], num_classes))
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index: expected shape [2, E] in {str(path)!r}, got {tuple(edge_index.shape)}")
    return x, edge_index, y
