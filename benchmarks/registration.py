"""Registration benchmark: RoITr (geoattn register's default method) against Open3D FPFH + RANSAC + ICP.

For each shared pair (GeoTransformer demo, Open3D feature pair, a synthetic bunny pair) the source is
rotated by ``--rotations`` uniform random rotations about the origin (plus the unrotated "original"
condition); both methods run on the same inputs in the same process. Success: RRE < 15 deg and
RTE < 0.3 m (0.03 m for the bunny). Prints JSON with per-pair success counts, median RRE / RTE and
median seconds per method, and the time ratio roitr / fpfh.

    python benchmarks/registration.py --pairs ../shared/data/registration --rotations 10 --json

The model is loaded once before timing; times cover preprocessing (downsampling, normals), matching and
pose estimation for both methods. The unrotated input is timed ``--repeats`` times per method (median).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from geoattn.registration import (RoITrRegistration, load_roitr, read_point_cloud, register,
                                  relative_rotation_error, relative_translation_error)
from geoattn.sparse.geometry import invert_transform, make_transform, random_rotation, transform_points


def _euler_zyx(z_deg: float, y_deg: float, x_deg: float) -> torch.Tensor:
    z, y, x = (math.radians(v) for v in (z_deg, y_deg, x_deg))
    rz = torch.tensor([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]], dtype=torch.float64)
    ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]], dtype=torch.float64)
    return rz @ ry @ rx


def load_pairs(root: Path) -> list[dict]:
    """The three shared pairs: name, src, tgt (float64), ground truth, voxel size and RTE threshold."""
    pairs = []
    demo = root / "geotransformer_demo"
    if demo.is_dir():
        pairs.append({"name": "geotransformer_demo", "src": read_point_cloud(demo / "src.npy").double(),
                      "tgt": read_point_cloud(demo / "ref.npy").double(),
                      "truth": torch.from_numpy(np.load(demo / "gt.npy")).double(), "voxel": 0.05, "rte": 0.3})
    feature = root / "open3d_feature"
    if feature.is_dir():
        pairs.append({"name": "open3d_feature_1to0", "src": read_point_cloud(feature / "cloud_bin_1.pcd").double(),
                      "tgt": read_point_cloud(feature / "cloud_bin_0.pcd").double(),
                      "truth": torch.from_numpy(np.loadtxt(feature / "gt_1_to_0.txt")).double(), "voxel": 0.05,
                      "rte": 0.3})
    bunny_path = root / "bunny" / "bun_zipper_res3.ply"
    if bunny_path.is_file():
        bunny = read_point_cloud(bunny_path).double()
        truth = make_transform(_euler_zyx(30, -20, 10), torch.tensor([0.05, -0.02, 0.03], dtype=torch.float64))
        noise = torch.randn(bunny.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5e-4
        pairs.append({"name": "bunny_res3_synthetic", "src": transform_points(bunny, invert_transform(truth)) + noise,
                      "tgt": bunny, "truth": truth, "voxel": 0.005, "rte": 0.03})
    if not pairs:
        raise FileNotFoundError(f"{root}: none of geotransformer_demo/, open3d_feature/, bunny/ found")
    return pairs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, required=True, help="folder with the shared registration pairs")
    parser.add_argument("--rotations", type=int, default=10)
    parser.add_argument("--methods", default="roitr,fpfh")
    parser.add_argument("--weights", type=Path, help="RoITr checkpoint (default: the shipped one)")
    parser.add_argument("--estimator", choices=("sc2", "lgr", "ransac"), default="sc2")
    parser.add_argument("--icp", action="store_true", help="ICP refinement after RoITr")
    parser.add_argument("--num-coarse", type=int, default=None,
                        help="RoITr superpoint correspondences (default: the pipeline's rule)")
    parser.add_argument("--sinkhorn-iterations", type=int, default=None, help="RoITr inference OT iterations (default: the pipeline's)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of the unrotated input per method (median kept)")
    parser.add_argument("--only", nargs="*", help="restrict to these pair names")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive count, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    model = load_roitr(args.weights) if "roitr" in methods else None
    pairs = [p for p in load_pairs(args.pairs) if not args.only or p["name"] in args.only]
    generator = torch.Generator().manual_seed(args.seed)
    # options left out keep RoITrRegistration's defaults (the ones `geoattn register` uses)
    optional = {} if args.sinkhorn_iterations is None else {"sinkhorn_iterations": args.sinkhorn_iterations}
    # warm-up (library initialisation, first-call allocations) outside the timed runs, for both methods
    warm = pairs[0]
    for method in methods:
        if method == "roitr":
            warm_pipeline = RoITrRegistration(model, voxel_size=warm["voxel"], **optional)
            warm_pipeline(warm["src"].float(), warm["tgt"].float())
            optional["sinkhorn_iterations"] = warm_pipeline.sinkhorn_iterations  # reported below
        else:
            register(warm["src"].float(), warm["tgt"].float(), method=method, voxel_size=warm["voxel"])
    report = {"rotations": args.rotations, "original_repeats": args.repeats, "num_coarse": args.num_coarse,
              "sinkhorn_iterations": optional.get("sinkhorn_iterations"), "threads": torch.get_num_threads(), "estimator": args.estimator,
              "icp_after_roitr": args.icp, "weights": str(args.weights) if args.weights else "shipped",
              "results": []}
    for pair in pairs:
        rotations = random_rotation(args.rotations, generator=generator, dtype=torch.float64)
        conditions = [("original", torch.eye(3, dtype=torch.float64).unsqueeze(0))]
        if args.rotations > 0:
            conditions.append(("rotated", rotations))
        for condition, rotation_set in conditions:
            entry = {"pair": pair["name"], "condition": condition, "runs": len(rotation_set),
                     "rte_threshold": pair["rte"], "methods": {}}
            for method in methods:
                rre, rte, seconds, successes = [], [], [], 0
                pipeline = None
                if method == "roitr":
                    pipeline = RoITrRegistration(model, voxel_size=pair["voxel"], estimator=args.estimator,
                                                 icp=args.icp, seed=args.seed, num_coarse=args.num_coarse,
                                                 **optional)
                for rotation in rotation_set:
                    motion = make_transform(rotation, torch.zeros(3, dtype=torch.float64))
                    src = transform_points(pair["src"], motion).float()
                    truth = pair["truth"] @ invert_transform(motion)
                    # the unrotated condition is one input: time it --repeats times (both methods are
                    # deterministic, so only the time varies) and keep the median, like the rotated runs
                    timings = []
                    for _ in range(args.repeats if condition == "original" else 1):
                        if pipeline is not None:
                            result = pipeline(src, pair["tgt"].float())
                        else:
                            result = register(src, pair["tgt"].float(), method=method, voxel_size=pair["voxel"],
                                              seed=args.seed)
                        timings.append(result.seconds)
                    rre.append(float(relative_rotation_error(result.transform, truth)))
                    rte.append(float(relative_translation_error(result.transform, truth)))
                    seconds.append(statistics.median(timings))
                    successes += rre[-1] < 15.0 and rte[-1] < pair["rte"]
                entry["methods"][method] = {
                    "successes": successes, "median_rre_deg": statistics.median(rre),
                    "median_rte": statistics.median(rte), "median_seconds": statistics.median(seconds),
                }
            if "roitr" in entry["methods"] and "fpfh" in entry["methods"]:
                entry["time_ratio_roitr_over_fpfh"] = (entry["methods"]["roitr"]["median_seconds"]
                                                       / entry["methods"]["fpfh"]["median_seconds"])
            report["results"].append(entry)
            if not args.json:
                print(json.dumps(entry), file=sys.stderr)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
