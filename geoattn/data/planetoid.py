"""Planetoid citation graphs (Cora, CiteSeer, PubMed) from a folder of the original ``ind.<name>.*`` files."""
from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["load_planetoid"]


def load_planetoid(root: str | Path, name: str, workdir: str | Path):
    """The public-split PyG ``Data`` of ``name`` read from ``root/<name>/raw``.

    PyG writes ``processed/`` beside ``raw/``, so the raw files are copied into ``workdir`` first and the
    user's folder (which may be read-only, or shared) is never written to. Features are the raw binary
    bag-of-words (no row normalisation).
    """
    from torch_geometric.datasets import Planetoid

    raw = Path(root) / name / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"--root: {raw} not found; it must hold the Planetoid files ind.{name.lower()}.*")
    shutil.copytree(raw, Path(workdir) / name / "raw")
    return Planetoid(str(workdir), name, split="public")[0]
