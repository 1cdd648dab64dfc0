"""Bird's-eye pictures of a LiDAR frame with its detected (and ground-truth) boxes (matplotlib, atomic write)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from geoattn.io import atomic_write_figure
from geoattn.sparse.boxes import box_corners, check_boxes

__all__ = ["render_bev"]

_CLASS_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def render_bev(points: Tensor, path: str | Path, boxes: Tensor | None = None, labels: Tensor | None = None,
               scores: Tensor | None = None, class_names: Sequence[str] = (), gt_boxes: Tensor | None = None,
               point_range: Sequence[float] | None = None, title: str | None = None, max_points: int = 60000,
               max_labels: int = 40, dpi: int = 110) -> None:
    """Write a PNG of ``points [N, >=3]`` seen from above with boxes ``[P, 7]`` drawn as oriented rectangles.

    Detections are coloured by ``labels [P]`` (0-based into ``class_names``) with a tick from the centre along
    the heading and the score beside it; ground-truth boxes ``[M, 7]``, when given, are drawn dashed in black.
    Points are coloured by height (viridis, -2 to 0.5 m). ``point_range`` (x_min, y_min, z_min, x_max, y_max, z_max) fixes the view;
    otherwise it follows the points; boxes centred outside the view are left out. At most ``max_points`` points
    are drawn (an evenly strided subset) and the ``max_labels`` best-scoring detections get a text label.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points: expected a 2-D tensor [N, >=3], got shape {tuple(points.shape)}")
    for name, value in (("boxes", boxes), ("gt_boxes", gt_boxes)):
        if value is not None:
            check_boxes(value, name)
    points = points.detach().cpu().float()
    if points.shape[0] > max_points:
        points = points[:: -(-points.shape[0] // max_points)]
    figure, axes = plt.subplots(figsize=(8, 8))
    axes.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=0.5, c=points[:, 2].numpy(), cmap="viridis",
                 vmin=-2.0, vmax=0.5, linewidths=0)
    axes.set_facecolor("#f7f7f7")

    def draw(box_set: Tensor, colours: list[str], style: str, texts: list[str] | None) -> None:
        corners = box_corners(box_set.detach().cpu().double())[:, :4, :2]
        for index, (outline, colour) in enumerate(zip(corners, colours)):
            closed = torch.cat([outline, outline[:1]])
            axes.plot(closed[:, 0].numpy(), closed[:, 1].numpy(), style, color=colour, linewidth=1.0)
            front = outline[[0, 3]].mean(0)
            centre = outline.mean(0)
            axes.plot([centre[0], front[0]], [centre[1], front[1]], style, color=colour, linewidth=1.0)
            if texts and texts[index]:
                axes.text(float(outline[0, 0]), float(outline[0, 1]), texts[index], color=colour, fontsize=5,
                          clip_on=True)

    if point_range is None:
        low, high = points[:, :2].min(0).values, points[:, :2].max(0).values
        point_range = (float(low[0]), float(low[1]), 0.0, float(high[0]), float(high[1]), 0.0)

    def in_view(box_set: Tensor) -> Tensor:
        centre = box_set[:, :2].detach().cpu()
        return ((centre[:, 0] >= point_range[0]) & (centre[:, 0] <= point_range[3]) & (centre[:, 1] >= point_range[1])
                & (centre[:, 1] <= point_range[4]) & torch.isfinite(box_set.detach().cpu()).all(1)
                & (box_set[:, 3:5].detach().cpu() < 50).all(1))

    if gt_boxes is not None and gt_boxes.shape[0]:
        gt_boxes = gt_boxes[in_view(gt_boxes)]
    if boxes is not None and boxes.shape[0]:
        keep = in_view(boxes)
        boxes = boxes[keep]
        labels = labels[keep.to(labels.device)] if labels is not None else None
        scores = scores[keep.to(scores.device)] if scores is not None else None
    if gt_boxes is not None and gt_boxes.shape[0]:
        draw(gt_boxes, ["black"] * gt_boxes.shape[0], "--", None)
    if boxes is not None and boxes.shape[0]:
        label_list = labels.tolist() if labels is not None else [0] * boxes.shape[0]
        colours = [_CLASS_COLOURS[int(k) % len(_CLASS_COLOURS)] for k in label_list]
        texts = None
        if scores is not None:
            names = [class_names[int(k)] if 0 <= int(k) < len(class_names) else str(k) for k in label_list]
            # label only the best few so that a crowded picture stays readable
            best = set(torch.argsort(scores.detach().cpu(), descending=True)[:max_labels].tolist())
            texts = [f"{name} {score:.2f}" if i in best else "" for i, (name, score)
                     in enumerate(zip(names, scores.tolist()))]
        draw(boxes, colours, "-", texts)
    axes.set_xlim(point_range[0], point_range[3])
    axes.set_ylim(point_range[1], point_range[4])
    axes.set_aspect("equal")
    axes.set_xlabel("x (m, forward)")
    axes.set_ylabel("y (m, left)")
    if class_names:
        handles = [plt.Line2D([], [], color=_CLASS_COLOURS[i % len(_CLASS_COLOURS)], label=name)
                   for i, name in enumerate(class_names)]
        if gt_boxes is not None:
            handles.append(plt.Line2D([], [], color="black", linestyle="--", label="ground truth"))
        axes.legend(handles=handles, loc="upper right", fontsize=7)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    try:
        atomic_write_figure(path, figure, dpi=dpi)
    finally:
        plt.close(figure)
