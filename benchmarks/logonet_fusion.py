"""Time LoGoNet's point-image fusion and head on a real KITTI frame; prints one JSON object.

* ``fusion``: :class:`geoattn.nn.PointImageFusion` forward+backward for the GoF voxel centroids of KITTI
  frame 000008 (0.2 m voxels) against ``V`` camera images. geoattn lays all pairs out in one padded table
  and calls ``grid_sample`` once per level; the baseline calls it once per image (the obvious loop), with
  the same weights, in the same process. ``V > 1`` replicates CAM2 (Waymo has 5 cameras).
* ``head``: :class:`geoattn.models.LoGoNetHead` (KITTI config: G = 6, C = 128) forward+backward on the 6
  labelled cars jittered twice (12 RoIs).

Usage: ``python benchmarks/logonet_fusion.py --root ../shared/data/fusion [--repeats 5] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from geoattn.data import load_mmdet3d_frame
from geoattn.models import LoGoNetHead, PointSet
from geoattn.nn import CameraSetup, PointImageFusion, project_to_cameras
from geoattn.sparse import voxelize

POINT_RANGE = [0, -40, -3, 70.4, 40, 1]


def median_time(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_image_attention(module: PointImageFusion, query, levels, image_index, reference):
    """Baseline layout: one grid_sample call per image."""
    output = query.new_zeros(query.shape[0], module.embed_dim)
    for image in range(levels[0].shape[0]):
        mask = image_index == image
        if mask.any():
            chosen = mask.nonzero().flatten()
            output = output.index_put((chosen,), module.deformable_attention(
                query[chosen], [level[image:image + 1] for level in levels],
                torch.zeros_like(chosen), reference[chosen]))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder with 000008.{bin,png,pkl}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frame = load_mmdet3d_frame(args.root / "000008.pkl")
    voxels = voxelize(frame.points[:, :3], 0.2, POINT_RANGE, features=frame.points)
    image = torch.nn.functional.avg_pool2d(frame.image.permute(2, 0, 1)[None].float() / 255, 4)
    results = {"frame": "KITTI 000008", "voxels": voxels.num_voxels, "threads": args.threads, "fusion": []}

    module = PointImageFusion(64, 64, 64)
    features = torch.randn(voxels.num_voxels, 64)
    for num_cameras in args.cameras:
        cameras = CameraSetup(frame.lidar2img["CAM2"][None].repeat(num_cameras, 1, 1).float(),
                              torch.zeros(num_cameras, dtype=torch.long), frame.image_hw, frame.image_hw)
        projection = project_to_cameras(voxels.centroids, cameras)
        reference = projection.reference_points(frame.image_hw)
        image_features = torch.randn(num_cameras, 64, *image.shape[-2:], requires_grad=True)
        query = module.query_proj(features)[projection.point_index].detach().requires_grad_(True)

        def batched():
            module.deformable_attention(query, [image_features], projection.camera_index, reference).sum().backward()

        def looped():
            per_image_attention(module, query, [image_features], projection.camera_index, reference).sum().backward()

        with torch.no_grad():
            same = torch.allclose(
                module.deformable_attention(query, [image_features], projection.camera_index, reference),
                per_image_attention(module, query, [image_features], projection.camera_index, reference), atol=1e-5)
        geoattn_s, baseline_s = median_time(batched, args.repeats), median_time(looped, args.repeats)
        results["fusion"].append({"cameras": num_cameras, "pairs": int(projection.point_index.numel()),
                                  "geoattn_s": geoattn_s, "per_image_loop_s": baseline_s,
                                  "speedup": baseline_s / geoattn_s, "outputs_match": bool(same)})

    head = LoGoNetHead()
    stems = torch.nn.ModuleList([torch.nn.Linear(4, 64), torch.nn.Linear(4, 64), torch.nn.Conv2d(3, 64, 1)])
    levels_raw = [voxels, voxelize(frame.points[:, :3], 0.4, POINT_RANGE, features=frame.points)]
    generator = torch.Generator().manual_seed(0)
    rois = frame.boxes.float().repeat(2, 1)
    rois[:, :3] += torch.randn(rois.shape[0], 3, generator=generator) * 0.3
    roi_batch = torch.zeros(len(rois), dtype=torch.long)
    cameras = CameraSetup(frame.lidar2img["CAM2"][None].float(), torch.zeros(1, dtype=torch.long),
                          frame.image_hw, frame.image_hw)
    point_batch = torch.zeros(len(frame.points), dtype=torch.long)

    def head_step():
        levels = [PointSet(v.centroids, stem(v.features), torch.zeros(v.num_voxels, dtype=torch.long))
                  for v, stem in zip(levels_raw, stems)]
        outputs = head(rois, roi_batch, levels, frame.points[:, :3], point_batch, stems[2](image), cameras)
        head.loss(outputs, rois, roi_batch, frame.boxes.float(), torch.zeros(len(frame.boxes), dtype=torch.long))[
            "total"].backward()

    results["head"] = {"rois": len(rois), "grid": 6, "channels": head.channels,
                       "parameters": sum(p.numel() for p in head.parameters()),
                       "forward_backward_s": median_time(head_step, args.repeats)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
