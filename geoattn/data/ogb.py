"""OGB node-property-prediction datasets that load under torch >= 2.6, plus a small synthetic one.

ogb 1.3.6 reloads its processed file with a bare ``torch.load``. Since torch 2.6 that call defaults to
``weights_only=True`` and rejects the PyG containers and numpy scalars stored in the file
("Weights only load failed", snap-stanford/ogb #497). Two fixes are common and both are too broad:
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns the check off for every load in the process, and
``weights_only=False`` allows arbitrary code on unpickling. :func:`load_ogb_node_dataset` instead keeps
the weights-only unpickler and allow-lists, only for the duration of the dataset's construction,
the handful of *data* classes such a file contains (:data:`OGB_SAFE_GLOBALS`). None of them runs code
on unpickling beyond restoring attributes.

:func:`write_synthetic_ogb_node_dataset` writes a small learnable node-classification graph in the
OGB format with ``ogb.io.DatasetSaver``, so the whole loading path can run offline and in tests.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "OGB_SAFE_GLOBALS",
    "load_ogb_node_dataset",
    "ogb_node_split",
    "write_synthetic_ogb_node_dataset",
    "ogb_evaluator",
]


def _numpy_multiarray():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core to np._core
    return core.multiarray


def _safe_globals() -> list:
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
               np.uint64, np.float16, np.float32, np.float64)
    multiarray = _numpy_multiarray()
    return [DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage, EdgeStorage, multiarray.scalar,
            multiarray._reconstruct, np.ndarray, np.dtype] + [type(np.dtype(t)) for t in numeric]


#: Classes allow-listed for ``torch.load(weights_only=True)`` while OGB files are read: PyG's attribute
#: containers, numpy's scalar and array reconstructors and numeric numpy dtypes.
OGB_SAFE_GLOBALS: list = _safe_globals()


def _require_ogb():
    try:
        import ogb  # noqa: F401
    except ImportError as error:  # pragma: no cover - ogb is in the 'graph' extra
        raise ImportError("OGB datasets need the 'ogb' package: pip install 'geoattn[graph]'") from error


def _read_meta_dict(root: Path) -> dict | None:
    """The meta_dict of a DatasetSaver-written dataset under ``root``, with its path made current."""
    meta_path = root / "meta_dict.pt"
    if not meta_path.is_file():
        return None
    meta = torch.load(meta_path, weights_only=True)  # a plain dict of str/int
    # The stored dir_path is absolute and goes stale when the folder is moved: rebuild it.
    meta["dir_path"] = str(root / meta["download_name"])
    return meta


def load_ogb_node_dataset(name: str, root: str | os.PathLike, *, download: bool = False):
    """Load an OGB node-property-prediction dataset as a ``PygNodePropPredDataset``.

    Args:
        name: dataset name such as ``"ogbn-arxiv"`` (or the name a synthetic dataset was written with).
        root: the folder that holds ``ogbn_arxiv/`` (the official layout), or a folder written by
            :func:`write_synthetic_ogb_node_dataset` / ``ogb.io.DatasetSaver`` (it holds ``meta_dict.pt``).
        download: allow ogb to download a missing official dataset (it asks on stdin first).
            Off by default so that a wrong ``root`` fails with a clear message instead of a prompt.

    Returns:
        the dataset; ``dataset[0]`` is a ``Data`` with ``x``, ``edge_index``, ``y [N, 1]`` and
        :func:`ogb_node_split` gives ``{'train', 'valid', 'test'}`` index tensors.

    The processed file is read with the weights-only unpickler and :data:`OGB_SAFE_GLOBALS`
    allow-listed (see the module docstring); nothing else is unpickled.
    """
    _require_ogb()
    from ogb.nodeproppred import PygNodePropPredDataset

    if not isinstance(name, str) or not name.startswith("ogbn-"):
        raise ValueError(f"name: expected an OGB node dataset name starting with 'ogbn-', got {name!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: OGB dataset folder {str(root)!r} does not exist")
    meta = _read_meta_dict(root)
    if meta is None:
        official_dir = root / "_".join(name.split("-"))
        if not download and not (official_dir.is_dir() or official_dir.with_name(official_dir.name + "_pyg").is_dir()):
            raise FileNotFoundError(
                f"root: no {official_dir.name}/ (official OGB layout) or meta_dict.pt (DatasetSaver layout) "
                f"in {str(root)!r}; download {name} from https://ogb.stanford.edu or pass download=True")
    with torch.serialization.safe_globals(OGB_SAFE_GLOBALS):
        if meta is not None:
            return PygNodePropPredDataset(name, meta_dict=meta)
        return PygNodePropPredDataset(name, root=str(root))


def ogb_node_split(dataset) -> dict[str, torch.Tensor]:
    """``dataset.get_idx_split()`` as long tensors, read under the same allow-list as the dataset
    (DatasetSaver stores the split as numpy arrays, which the weights-only unpickler rejects)."""
    with torch.serialization.safe_globals(OGB_SAFE_GLOBALS):
        split = dataset.get_idx_split()
    return {key: torch.as_tensor(np.asarray(value), dtype=torch.long) for key, value in split.items()}


def ogb_evaluator(name: str):
    """``ogb.nodeproppred.Evaluator`` for ``name``; names unknown to ogb (synthetic data sets written by
    :func:`write_synthetic_ogb_node_dataset`) get the ogbn-arxiv evaluator: the same single-task accuracy."""
    _require_ogb()
    from ogb.nodeproppred import Evaluator

    with contextlib.redirect_stdout(io.StringIO()):  # ogb prints the name it rejects
        try:
            return Evaluator(name)
        except ValueError:
            return Evaluator("ogbn-arxiv")


def write_synthetic_ogb_node_dataset(root: str | os.PathLike, name: str = "ogbn-synthetic", *,
                                     num_nodes: int = 2000, num_features: int = 32, num_classes: int = 5,
                                     avg_degree: float = 8.0, homophily: float = 0.8, signal: float = 0.3,
                                     seed: int = 0) -> Path:
    """Write a small OGB-format node-classification data set with ``ogb.io.DatasetSaver``.

    Nodes get a class uniformly at random; each directed edge ends in the source's class with probability
    ``homophily`` (else a random node); features are ``signal`` times a random class mean plus unit
    Gaussian noise, so single nodes are ambiguous and a GNN beats an MLP. The split is random 60/20/20. The result loads with :func:`load_ogb_node_dataset`.

    Args:
        root: a folder that must not exist yet or be empty; it is created.
        name: an OGB-style name, ``"ogbn-<something>"``.

    Returns:
        ``root`` as a Path (it holds ``meta_dict.pt`` and the dataset folder).
    """
    _require_ogb()
    if not isinstance(name, str) or not name.startswith("ogbn-") or len(name) <= 5:
        raise ValueError(f"name: expected 'ogbn-<name>', got {name!r}")
    for arg, value, low in (("num_nodes", num_nodes, 2), ("num_features", num_features, 1),
                            ("num_classes", num_classes, 2)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{arg}: expected an int >= {low}, got {value!r}")
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"homophily: expected a value in [0, 1], got {homophily}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"root: {str(root)!r} exists and is not empty; give a new folder")
    root.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_nodes)
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    num_edges = int(round(avg_degree * num_nodes))
    source = rng.integers(0, num_nodes, num_edges)
    target = rng.integers(0, num_nodes, num_edges)
    same_class = rng.random(num_edges) < homophily
    for index in np.flatnonzero(same_class):
        candidates = members[labels[source[index]]]
        target[index] = candidates[rng.integers(0, len(candidates))]
    keep = source != target
    edge_index = np.stack([source[keep], target[keep]]).astype(np.int64)
    class_means = rng.standard_normal((num_classes, num_features))
    features = (signal * class_means[labels] + rng.standard_normal((num_nodes, num_features))).astype(np.float32)

    # DatasetSaver asks on stdin when its folder exists and writes '<root>_<prefix>_<suffix>', so it is
    # pointed at '<root>/saver' and the result is moved up into root.
    saver_root = root / "saver"
    with contextlib.redirect_stdout(io.StringIO()):  # DatasetSaver narrates every step
        meta = _save_with_ogb(saver_root, name, edge_index, num_nodes, features, labels, num_classes, rng, root)
    dataset_dir = Path(meta["dir_path"])
    submission_dir = Path(meta["dir_path"]).parent
    os.replace(dataset_dir, root / dataset_dir.name)
    os.replace(submission_dir / "meta_dict.pt", root / "meta_dict.pt")
    for leftover in (submission_dir, root / "mapping"):
        for path in sorted(leftover.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        leftover.rmdir()
    return root


def _save_with_ogb(saver_root, name, edge_index, num_nodes, features, labels, num_classes, rng, root) -> dict:
    from ogb.io import DatasetSaver

    saver = DatasetSaver(name, is_hetero=False, version=1, root=str(saver_root))
    saver.save_graph_list([{"edge_index": edge_index, "num_nodes": num_nodes, "node_feat": features,
                            "edge_feat": None}])
    saver.save_target_labels(labels.reshape(-1, 1).astype(np.int64))
    permutation = rng.permutation(num_nodes)
    num_train, num_valid = int(0.6 * num_nodes), int(0.2 * num_nodes)
    saver.save_split({"train": permutation[:num_train],
                      "valid": permutation[num_train:num_train + num_valid],
                      "test": permutation[num_train + num_valid:]}, split_name="random")
    mapping_dir = root / "mapping"
    mapping_dir.mkdir()
    (mapping_dir / "README.md").write_text("Synthetic data set: node i is node i; no external ids.\n")
    saver.copy_mapping_dir(str(mapping_dir))
    saver.save_task_info(task_type="multiclass classification", eval_metric="acc", num_classes=num_classes)
    return saver.get_meta_dict()
