"""snap-patents .mat reader and year-quantile labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geoattn.data.snap_patents import even_quantile_labels, load_snap_patents, random_split


def test_even_quantile_labels_balanced_and_ordered():
    years = np.arange(1000) % 97 + 1950
    labels = even_quantile_labels(years, 5)
    counts = np.bincount(labels, minlength=5)
    assert counts.sum() == 1000 and counts.min() > 150
    order = np.argsort(years, kind="stable")
    assert (np.diff(labels[order]) >= 0).all()  # monotone in the year
    assert even_quantile_labels(np.array([3.0, 3.0]), 2).tolist() == [1, 1]


def test_load_mat_round_trip(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    import scipy.sparse as sp

    edge_index = np.array([[0, 1, 2], [1, 2, 3]])
    features = sp.csr_matrix(np.eye(4, 3))
    scipy_io.savemat(tmp_path / "snap_patents.mat", {"edge_index": edge_index, "node_feat": features,
                                                     "years": np.array([[1990, 1991, 1992, 1993]])})
    x, loaded_edges, y = load_snap_patents(tmp_path, num_classes=2)
    assert torch.equal(loaded_edges, torch.from_numpy(edge_index)) and x.shape == (4, 3) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1]
    with pytest.raises(FileNotFoundError, match="snap_patents.mat"):
        load_snap_patents(tmp_path / "missing")
    scipy_io.savemat(tmp_path / "bad.mat", {"edge_index": edge_index})
    with pytest.raises(ValueError, match="node_feat"):
        load_snap_patents(tmp_path / "bad.mat")


def test_random_split_is_seeded_partition():
    split = random_split(100, seed=3)
    assert [len(split[k]) for k in ("train", "valid", "test")] == [50, 25, 25]
    assert torch.equal(torch.cat(list(split.values())).sort().values, torch.arange(100))
    assert torch.equal(split["train"], random_split(100, seed=3)["train"])
