"""Before/after pictures of a registration (matplotlib, written atomically)."""
from __future__ import annotations

from pathlib import Path

import torch

from geoattn.io import atomic_write_bytes, figure_png
from geoattn.sparse.geometry import transform_points

__all__ = ["render_alignment", "alignment_png"]


def _subset(points: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if points.size(0) <= limit:
        return points
    keep = torch.randperm(points.size(0), generator=torch.Generator().manual_seed(seed))[:limit]
    return points[keep]


def render_alignment(src: torch.Tensor, tgt: torch.Tensor, transform: torch.Tensor, path: str | Path,
                     title: str | None = None, max_points: int = 4000, dpi: int = 110) -> None:
    """Write :func:`alignment_png` to ``path`` (atomically, mode ``0o666 & ~umask``)."""
    atomic_write_bytes(path, alignment_png(src, tgt, transform, title, max_points, dpi))


def alignment_png(src: torch.Tensor, tgt: torch.Tensor, transform: torch.Tensor, title: str | None = None,
                  max_points: int = 4000, dpi: int = 110) -> bytes:
    """A PNG (bytes) with two 3-D views: the clouds as given, and the source moved by ``transform``.

    Source points are orange, target points blue; at most ``max_points`` of each are drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    src = _subset(src.detach().cpu().double(), max_points, 0)
    tgt = _subset(tgt.detach().cpu().double(), max_points, 1)
    aligned = transform_points(src, transform.detach().cpu().double())
    figure = plt.figure(figsize=(11, 5.2))
    try:
        for column, (moved, label) in enumerate(((src, "before"), (aligned, "after"))):
            axes = figure.add_subplot(1, 2, column + 1, projection="3d")
            axes.scatter(*tgt.T.numpy(), s=0.6, c="#1f77b4", label="target", depthshade=False)
            axes.scatter(*moved.T.numpy(), s=0.6, c="#ff7f0e", label="source", depthshade=False)
            both = torch.cat([tgt, moved])
            centre = both.mean(0)
            half = max(float((both.max(0).values - both.min(0).values).max()) / 2, 1e-6)
            for setter, value in zip((axes.set_xlim, axes.set_ylim, axes.set_zlim), centre.tolist()):
                setter(value - half, value + half)
            axes.set_title(label)
            axes.set_axis_off()
            if column == 0:
                axes.legend(loc="upper left", markerscale=8, fontsize=8)
        if title:
            figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        return figure_png(figure, dpi)
    finally:
        plt.close(figure)
