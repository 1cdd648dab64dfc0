"""Project a KITTI LiDAR frame into its camera and check the geometry LoGoNet's fusion relies on.

Reads either an mmdetection3d info pickle (``<root>/<frame>.pkl``, e.g. mmdetection3d's
``demo/data/kitti``) or the raw KITTI layout (``<root>/training/{velodyne,image_2,calib,label_2}``), then

* projects the points with :func:`geoattn.nn.project_to_cameras` and compares the pixels with a direct
  float64 ``lidar2img`` product,
* optionally (``--augment``) applies a random recorded LiDAR augmentation and projects the augmented cloud,
  which must land on the same pixels once the augmentation is undone,
* counts the points inside every labelled box (compared with ``num_lidar_pts`` when the info stores it),
* with ``--render``, writes a PNG overlay of the LiDAR depth and the projected 3D boxes on the image.

Example::

    python examples/kitti_projection.py --root path/to/demo/data/kitti --frame 000008 --render overlay.png --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from geoattn.data import load_kitti_frame, load_mmdet3d_frame
from geoattn.nn import CameraSetup, project_to_cameras
from geoattn.sparse import LidarAugmentation, box_corners, points_in_boxes

# edges of box_corners' 8 corners: bottom face, top face, verticals
_BOX_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True,
                        help="folder with <frame>.pkl (mmdetection3d info) or the KITTI training/ layout")
    parser.add_argument("--frame", default="000008", help="frame id (default 000008)")
    parser.add_argument("--camera", default="CAM2", help="camera of the info pickle to use (default CAM2)")
    parser.add_argument("--augment", action="store_true",
                        help="apply a random flip/rotation/scale/translation and project through its inverse")
    parser.add_argument("--render", type=Path, default=None, metavar="PNG",
                        help="write an overlay of LiDAR depth and projected boxes on the image to this PNG")
    parser.add_argument("--max-depth", type=float, default=40.0, help="depth of the far end of the colour map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the metrics as one final JSON line")
    return parser.parse_args(argv)


def load_frame(root: Path, frame: str, camera: str):
    if not root.is_dir():
        raise SystemExit(f"error: --root {root} is not a folder; point it at KITTI data (e.g. mmdetection3d's "
                         "demo/data/kitti, or a folder holding training/velodyne, image_2, calib, label_2); "
                         "see datasets/kitti.md")
    info = root / f"{frame}.pkl"
    if info.exists():
        return load_mmdet3d_frame(info, camera=camera)
    for split in ("training", ""):
        if (root / split / "velodyne" / f"{frame}.bin").exists():
            return load_kitti_frame(root, frame, split=split)
    raise SystemExit(f"error: neither {info} nor {root}/training/velodyne/{frame}.bin exists; see datasets/kitti.md")


def render_overlay(path: Path, image: torch.Tensor, uv: np.ndarray, depth: np.ndarray, corners_uv: list,
                   max_depth: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = image.shape[:2]
    figure = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.imshow(image.numpy())
    order = np.argsort(-depth)  # near points drawn last, on top
    axes.scatter(uv[order, 0], uv[order, 1], c=depth[order], cmap="turbo_r", vmin=0, vmax=max_depth,
                 s=1.5, linewidths=0, alpha=0.9)
    for corners in corners_uv:
        for start, end in _BOX_EDGES:
            axes.plot(corners[[start, end], 0], corners[[start, end], 1], color="lime", linewidth=1.2)
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    frame = load_frame(args.root, args.frame, args.camera)
    if args.render is not None and args.render.resolve().parent == args.root.resolve() and args.render.exists():
        raise SystemExit(f"error: --render {args.render} would overwrite a file in the input folder")
    points = frame.points[:, :3].to(device=device, dtype=torch.float64)
    lidar2img = frame.lidar2img[args.camera if args.camera in frame.lidar2img else "CAM2"]
    cameras = CameraSetup(lidar2img[None], torch.zeros(1, dtype=torch.long), frame.image_hw, frame.image_hw)
    projection = project_to_cameras(points, cameras)

    homogeneous = np.concatenate([points.cpu().numpy(), np.ones((points.shape[0], 1))], 1) @ lidar2img.numpy().T
    expected = homogeneous[:, :2] / homogeneous[:, 2:3]
    index = projection.point_index.cpu().numpy()
    metrics = {
        "frame": frame.sample_id, "points": int(points.shape[0]), "projected": int(index.size),
        "in_front": int((homogeneous[:, 2] > 0).sum()),
        "max_pixel_error_px": float(np.abs(projection.uv.cpu().numpy() - expected[index]).max()) if index.size else 0.0,
    }
    if args.augment:
        generator = torch.Generator().manual_seed(args.seed)
        augmentation = LidarAugmentation.sample(generator, translation_std=0.5)
        augmented = augmentation.apply_points(points)
        undone = project_to_cameras(augmented, CameraSetup(lidar2img[None], torch.zeros(1, dtype=torch.long),
                                                           frame.image_hw, frame.image_hw, [augmentation]))
        same = torch.equal(undone.point_index, projection.point_index)
        metrics["augmentation"] = repr(augmentation)
        metrics["augmented_max_pixel_error_px"] = float((undone.uv - projection.uv).abs().max()) if same else None
        metrics["augmentation_round_trip_m"] = float((augmentation.invert_points(augmented) - points).abs().max())
    if len(frame.boxes):
        counts = points_in_boxes(points.cpu(), frame.boxes).sum(0)
        metrics["points_in_boxes"] = counts.tolist()
        if frame.num_lidar_pts is not None:
            metrics["num_lidar_pts"] = frame.num_lidar_pts.tolist()
    if args.render is not None:
        if frame.image is None:
            raise SystemExit("error: --render needs the camera image, which this frame lacks")
        corners_uv = []
        for corners in box_corners(frame.boxes):
            h = np.concatenate([corners.numpy(), np.ones((8, 1))], 1) @ lidar2img.numpy().T
            if (h[:, 2] > 0.1).all():
                corners_uv.append(h[:, :2] / h[:, 2:3])
        render_overlay(args.render, frame.image, projection.uv.cpu().numpy(), projection.depth.cpu().numpy(),
                       corners_uv, args.max_depth)
        metrics["render"] = str(args.render)
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key}: {value}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
