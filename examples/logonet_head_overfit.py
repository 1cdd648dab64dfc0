"""Wire LoGoNet's second stage to one KITTI frame and overfit it: a worked example of the fusion API.

What it shows (all public geoattn API):

* readers: ``geoattn.data.load_mmdet3d_frame`` (mmdetection3d info pickle) or ``load_kitti_frame``;
* augmentation: every step draws a ``geoattn.sparse.LidarAugmentation`` (flip, rotation, scale), applies it
  to points and boxes, and records it in the ``CameraSetup`` so the projection undoes it;
* voxel levels: ``geoattn.sparse.voxelize`` -> ``VoxelTensor`` -> ``geoattn.models.PointSet.from_voxels``
  (features positioned at their points' centroids, as LoGoNet's GoF does);
* the head: ``geoattn.models.LoGoNetHead`` with GoF, LoF, FDA, and its losses; proposals are the labelled
  boxes with fixed noise (augmented with the frame), subsampled by ``geoattn.models.sample_rois``.

The 3D and image backbones are stand-ins (one linear layer on voxel mean features, one 1x1 convolution on
a 4x-downsampled image): this trains the head alone on one frame, it is not a detector.

Example::

    python examples/logonet_head_overfit.py --root path/to/demo/data/kitti --frame 000008 --steps 50 --json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from geoattn.data import load_kitti_frame, load_mmdet3d_frame
from geoattn.models import LoGoNetHead, PointSet, assign_targets, sample_rois
from geoattn.nn import CameraSetup
from geoattn.sparse import LidarAugmentation, boxes_iou3d, voxelize

BASE_VOXEL = 0.05
STRIDES = (4, 8)  # LoGoNet's KITTI levels x_conv3 / x_conv4 (GoF fuses the first)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True,
                        help="folder with <frame>.pkl (mmdetection3d info) or the KITTI training/ layout")
    parser.add_argument("--frame", default="000008")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--copies", type=int, default=4, help="noisy proposals per labelled box")
    parser.add_argument("--rois-per-image", type=int, default=128)
    parser.add_argument("--no-augment", action="store_true", help="train on the raw frame")
    parser.add_argument("--checkpoint", type=Path, default=None, help="write a checkpoint here every 10 steps")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one final JSON line")
    return parser.parse_args(argv)


def load_frame(root: Path, frame: str):
    if not root.is_dir():
        raise SystemExit(f"error: --root {root} is not a folder; see datasets/kitti.md")
    if (root / f"{frame}.pkl").exists():
        return load_mmdet3d_frame(root / f"{frame}.pkl")
    for split in ("training", ""):
        if (root / split / "velodyne" / f"{frame}.bin").exists():
            return load_kitti_frame(root, frame, split=split)
    raise SystemExit(f"error: no {frame}.pkl or training/velodyne/{frame}.bin under {root}; see datasets/kitti.md")


class StandInBackbones(torch.nn.Module):
    """One linear layer per voxel level and a 1x1 convolution for the image (placeholders)."""

    def __init__(self, point_features: int = 4, channels: int = 64, image_channels: int = 64):
        super().__init__()
        self.levels = torch.nn.ModuleList(torch.nn.Linear(point_features, channels) for _ in STRIDES)
        self.image = torch.nn.Conv2d(3, image_channels, 1)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".pt", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    frame = load_frame(args.root, args.frame)
    if frame.image is None or len(frame.boxes) == 0:
        raise SystemExit("error: the frame needs an image and at least one labelled box")
    # the range must contain the augmented cloud: LoGoNet's KITTI range widened for flips/rotations
    point_range = [-70.4, -70.4, -3.0, 70.4, 70.4, 1.0]
    image = torch.nn.functional.avg_pool2d(frame.image.permute(2, 0, 1)[None].float() / 255, 4).to(device)
    points_raw = frame.points.to(device)
    gt_raw = frame.boxes.float().to(device)
    lidar2img = frame.lidar2img["CAM2"][None].float()

    head = LoGoNetHead().to(device)
    backbones = StandInBackbones(points_raw.shape[1]).to(device)
    optimiser = torch.optim.Adam(list(head.parameters()) + list(backbones.parameters()), lr=args.lr)
    start = 0
    if args.resume:
        if args.checkpoint is None or not args.checkpoint.exists():
            raise SystemExit("error: --resume needs an existing --checkpoint")
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
        head.load_state_dict(state["head"])
        backbones.load_state_dict(state["backbones"])
        optimiser.load_state_dict(state["optimiser"])
        start = int(state["step"])
    # fixed noisy proposals in the raw frame: each step sees them through that step's augmentation
    proposal_generator = torch.Generator().manual_seed(args.seed)
    proposals_raw = gt_raw.repeat(args.copies, 1)
    noise = torch.randn(proposals_raw.shape[0], 7, generator=proposal_generator).to(device)
    proposals_raw[:, :3] += noise[:, :3] * 0.25
    proposals_raw[:, 3:6] *= torch.exp(noise[:, 3:6] * 0.1)
    proposals_raw[:, 6] += noise[:, 6] * 0.3
    generator = torch.Generator().manual_seed(args.seed + 1 + start)
    history = []
    for step in tqdm(range(start, args.steps), desc="overfit", disable=args.json):
        augmentation = (LidarAugmentation() if args.no_augment else
                        LidarAugmentation.sample(generator, rotation_range=(-0.785, 0.785)))
        points = augmentation.apply_points(points_raw)
        gt_boxes = augmentation.apply_boxes(gt_raw)
        proposals = augmentation.apply_boxes(proposals_raw)
        roi_batch = torch.zeros(len(proposals), dtype=torch.long, device=device)
        gt_batch = torch.zeros(len(gt_boxes), dtype=torch.long, device=device)
        iou, _ = assign_targets(proposals, roi_batch, gt_boxes, gt_batch)
        keep = sample_rois(iou, roi_batch, args.rois_per_image, generator=generator)
        rois, roi_batch = proposals[keep], roi_batch[keep]

        point_batch = torch.zeros(len(points), dtype=torch.long, device=device)
        levels = []
        for stride, stem in zip(STRIDES, backbones.levels):
            size = BASE_VOXEL * stride
            grouped = voxelize(points[:, :3], size, point_range, features=points)
            voxels = grouped.to_tensor(stem(grouped.features))  # stand-in for the sparse backbone's output
            levels.append(PointSet.from_voxels(voxels, points, size, point_range, point_batch))
        cameras = CameraSetup(lidar2img, torch.zeros(1, dtype=torch.long), frame.image_hw, frame.image_hw,
                              augmentations=[augmentation])
        outputs = head(rois, roi_batch, levels, points[:, :3], point_batch, backbones.image(image), cameras)
        losses = head.loss(outputs, rois, roi_batch, gt_boxes, gt_batch)
        optimiser.zero_grad()
        losses["total"].backward()
        optimiser.step()
        with torch.no_grad():  # box quality on the RoIs the regression trains on (IoU > 0.55)
            foreground = losses["iou"] > 0.55
            refined = boxes_iou3d(outputs["boxes"][foreground].detach(), gt_boxes).max(1).values.mean()
        record = {"step": step + 1, **{k: round(v.item(), 5) for k, v in losses.items() if k != "iou"},
                  "fg_rois": int(foreground.sum()),
                  "fg_proposal_iou": round(float(losses["iou"][foreground].mean()), 4),
                  "fg_refined_iou": round(float(refined), 4)}
        history.append(record)
        if args.checkpoint is not None and ((step + 1) % 10 == 0 or step + 1 == args.steps):
            save_checkpoint(args.checkpoint, {"head": head.state_dict(), "backbones": backbones.state_dict(),
                                              "optimiser": optimiser.state_dict(), "step": step + 1})
    metrics = {"frame": frame.sample_id, "steps": args.steps, "first": history[0] if history else None,
               "last": history[-1] if history else None}
    if args.json:
        print(json.dumps(metrics))
    else:
        for record in history[:: max(1, len(history) // 10)] + history[-1:]:
            print(record)
    return metrics


if __name__ == "__main__":
    main()
