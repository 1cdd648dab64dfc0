"""OGB loading under torch >= 2.6 (weights-only unpickler) on a synthetic DatasetSaver data set."""
import shutil

import pytest
import torch

pytest.importorskip("ogb")

from geoattn.data.ogb import (load_ogb_node_dataset, ogb_evaluator, ogb_node_split,  # noqa: E402
                              write_synthetic_ogb_node_dataset)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return write_synthetic_ogb_node_dataset(tmp_path_factory.mktemp("ogb") / "synthetic", num_nodes=120,
                                            num_features=6, num_classes=3, seed=1)


def test_write_then_load_and_reload(synthetic_root, tmp_path):
    dataset = load_ogb_node_dataset("ogbn-synthetic", synthetic_root)
    data = dataset[0]
    assert data.x.shape == (120, 6) and data.x.dtype == torch.float32
    assert data.y.shape == (120, 1) and int(data.y.max()) < 3 and dataset.num_classes == 3
    assert data.edge_index.shape[0] == 2 and data.edge_index.dtype == torch.long
    split = ogb_node_split(dataset)
    assert {key: len(value) for key, value in split.items()} == {"train": 72, "valid": 24, "test": 24}
    everything = torch.cat(list(split.values()))
    assert torch.equal(everything.sort().values, torch.arange(120))
    # The second construction reads the processed file (the step that fails with a bare ogb 1.3.6),
    # here from a moved copy, so the stored absolute path is not relied upon either.
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_root, moved)
    again = load_ogb_node_dataset("ogbn-synthetic", moved)[0]
    assert torch.equal(again.x, data.x) and torch.equal(again.edge_index, data.edge_index)


def test_synthetic_is_deterministic(tmp_path):
    first = write_synthetic_ogb_node_dataset(tmp_path / "a", num_nodes=50, seed=3)
    second = write_synthetic_ogb_node_dataset(tmp_path / "b", num_nodes=50, seed=3)
    a = load_ogb_node_dataset("ogbn-synthetic", first)[0]
    b = load_ogb_node_dataset("ogbn-synthetic", second)[0]
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)


def test_evaluator_accuracy():
    evaluator = ogb_evaluator("ogbn-synthetic")
    y = torch.tensor([[0], [1], [2], [1]])
    assert evaluator.eval({"y_true": y, "y_pred": torch.tensor([[0], [1], [0], [1]])})["acc"] == 0.75


def test_bad_arguments(tmp_path, synthetic_root):
    with pytest.raises(FileNotFoundError, match="ogbn_arxiv"):
        load_ogb_node_dataset("ogbn-arxiv", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ogb_node_dataset("ogbn-arxiv", tmp_path / "missing")
    with pytest.raises(ValueError, match="name"):
        load_ogb_node_dataset("cora", tmp_path)
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_ogb_node_dataset(synthetic_root)
    with pytest.raises(ValueError, match="num_classes"):
        write_synthetic_ogb_node_dataset(tmp_path / "c", num_classes=1)
