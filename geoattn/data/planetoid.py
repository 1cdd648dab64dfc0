"""Planetoid citation graphs (Cora, CiteSeer, PubMed) from a folder of the original ``ind.<name>.*`` files."""
from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

__all__ = ["PLANETOID_NAMES", "PLANETOID_FILES", "load_planetoid"]

PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
#: the raw files of one graph, ``ind.<name>.<suffix>`` (what PyG's ``Planetoid`` reads)
PLANETOID_FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def load_planetoid(root: str | Path, name: str, workdir: str | Path):
    """The public-split PyG ``Data`` of ``name`` read from ``root/<name>/raw``.

    PyG writes ``processed/`` beside ``raw/``, so the raw files are copied into ``workdir/<name>/raw`` first and
    the user's folder (which may be read-only, or shared) is never written to. A second call with the same
    ``workdir`` reuses its copy (and PyG's ``processed/``) when the raw files are unchanged, and starts over
    when they differ. Features are the raw binary bag-of-words (no row normalisation).

    Raises ``ValueError`` for an unknown ``name`` or a ``workdir`` that is ``root`` itself, and
    ``FileNotFoundError`` naming the folder or the first missing raw file (nothing is ever downloaded).
    """
    if name not in PLANETOID_NAMES:
        raise ValueError(f"name: expected one of {', '.join(PLANETOID_NAMES)}, got {name!r}")
    raw = Path(root) / name / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"--root: {raw} not found; it must hold the Planetoid files ind.{name.lower()}.*")
    files = [f"ind.{name.lower()}.{suffix}" for suffix in PLANETOID_FILES]
    missing = [file for file in files if not (raw / file).is_file()]
    if missing:
        raise FileNotFoundError(f"--root: {raw / missing[0]} not found ({len(missing)} of the {len(files)} Planetoid "
                                f"files ind.{name.lower()}.{{{','.join(PLANETOID_FILES)}}} are missing)")
    copy = Path(workdir) / name / "raw"
    if copy.resolve() == raw.resolve():
        raise ValueError(f"workdir: {workdir} is the data folder itself; PyG would write processed/ into it")
    from torch_geometric.datasets import Planetoid

    copy.mkdir(parents=True, exist_ok=True)
    changed = False
    for file in files:
        if not ((copy / file).is_file() and filecmp.cmp(raw / file, copy / file, shallow=False)):
            shutil.copyfile(raw / file, copy / file)
            changed = True
    if changed:  # a processed/ of other raw files must not be reused
        shutil.rmtree(Path(workdir) / name / "processed", ignore_errors=True)
    return Planetoid(str(workdir), name, split="public")[0]
