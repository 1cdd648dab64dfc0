"""Logic behind ``geoattn register`` and ``geoattn evaluate-3dmatch`` (the CLI module only wires it up).

Errors a user can cause (missing or unreadable files, empty clouds, NaNs, bad options) surface as
``ValueError``/``OSError`` with a one-line message; :mod:`geoattn.cli` prints it and exits 2. Every output
argument is checked before any work, outputs are written only once everything has been computed, and JSON
is strict (NaN is written as ``null``).
Imports of torch and friends happen inside the functions so that ``geoattn --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
from pathlib import Path

from geoattn.backends import check_device

__all__ = ["add_register_arguments", "add_evaluate_arguments", "run_register", "run_evaluate"]


def add_register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", nargs="?", type=Path, help="source cloud (.ply/.pcd/.xyz/.npy), moved onto TGT")
    parser.add_argument("tgt", nargs="?", type=Path, help="target cloud")
    parser.add_argument("--demo", action="store_true",
                        help="register two synthetic scans generated on the fly (source randomly rotated)")
    parser.add_argument("--demo-seed", type=int, default=0, help="which synthetic pair --demo generates")
    parser.add_argument("--method", choices=("roitr", "fpfh"), default="roitr",
                        help="roitr (learned, default) or fpfh (Open3D FPFH + RANSAC + ICP); no silent fallback")
    parser.add_argument("--weights", type=Path, help="RoITr checkpoint (default: the one shipped with geoattn)")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="downsampling grid in the clouds' units")
    parser.add_argument("--estimator", choices=("sc2", "lgr", "ransac"), default="sc2", help="RoITr pose estimator")
    parser.add_argument("--icp", action="store_true", help="refine the RoITr pose with point-to-plane ICP")
    parser.add_argument("--out", type=Path, help="write the 4x4 transform to T.txt (text) or T.json")
    parser.add_argument("--render", type=Path, help="write a before/after picture (.png)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--seed", type=int, default=0)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="3DMatch root (see datasets/3dmatch.md)")
    parser.add_argument("--benchmark", choices=("3DMatch", "3DLoMatch"), default="3DMatch")
    parser.add_argument("--method", choices=("roitr", "fpfh"), default="roitr")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--estimator", choices=("sc2", "lgr", "ransac"), default="sc2")
    parser.add_argument("--icp", action="store_true")
    parser.add_argument("--scenes", nargs="*", help="restrict to these scene names")
    parser.add_argument("--max-pairs", type=int, help="evaluate only the first N pairs")
    parser.add_argument("--out", type=Path, help="write the full JSON report (with per-pair records) here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_outputs(inputs: list[Path], outputs: dict[str, Path | None], suffixes: dict[str, tuple[str, ...]]) -> None:
    """Refuse, before any work, every output argument that could not be written or would destroy something:
    an input file, a wrong suffix, a folder or other non-file, a folder that cannot be created or written,
    two outputs on one path, and (``--render``) an existing file that is not a PNG picture."""
    resolved = {p.resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        target = path.resolve()
        if target in resolved:
            raise ValueError(f"{option} {path}: refusing to overwrite an input file")
        if target in seen:
            raise ValueError(f"{option} {path}: the same file as {seen[target]}")
        seen[target] = option
        if path.suffix.lower() not in suffixes[option]:
            raise ValueError(f"{option} {path}: expected a file ending in {' or '.join(suffixes[option])}")
        if path.is_dir():
            raise ValueError(f"{option} {path}: is a folder")
        if path.exists() and not path.is_file():
            raise ValueError(f"{option} {path}: exists and is not a regular file")
        if path.is_file() and suffixes[option] == (".png",):
            with open(path, "rb") as handle:
                if handle.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
                    raise ValueError(f"{option} {path}: exists and is not a PNG picture; refusing to overwrite it")
        folder = target.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ValueError(f"{option} {path}: cannot create its folder ({folder} is a file)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {path}: the folder {folder} is not writable")
    if outputs.get("--render") is not None and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--render: needs matplotlib (pip install 'geoattn[plot]')")


def _make_registrar(args: argparse.Namespace):
    """A function ``(src, tgt) -> (RegistrationResult, src_corr | None, tgt_corr | None)`` for ``args``."""
    from geoattn.registration.pipeline import RoITrRegistration, load_roitr, register

    if args.voxel_size is None or not math.isfinite(args.voxel_size) or args.voxel_size <= 0:
        raise ValueError(f"--voxel-size: expected a positive number, got {args.voxel_size}")
    if args.method == "roitr":
        model = load_roitr(args.weights, args.device)
        pipeline = RoITrRegistration(model, voxel_size=args.voxel_size, estimator=args.estimator, icp=args.icp,
                                     seed=args.seed)

        def run(src, tgt):
            result = pipeline(src, tgt)
            return result, result.correspondences.src, result.correspondences.tgt
        return run
    if args.weights is not None:
        raise ValueError("--weights: only used with --method roitr")

    def run(src, tgt):
        return register(src, tgt, method="fpfh", voxel_size=args.voxel_size, seed=args.seed), None, None
    return run


def run_register(args: argparse.Namespace) -> int:
    import torch

    from geoattn.registration.io import atomic_write_bytes, json_dumps, read_point_cloud, write_transform
    from geoattn.registration.metrics import relative_rotation_error, relative_translation_error

    check_device(args.device)
    truth = None
    if args.demo:
        if args.src is not None or args.tgt is not None:
            raise ValueError("--demo: takes no SRC/TGT files")
        from geoattn.data.scenes import EVAL_SEEDS, fragment_pair
        from geoattn.sparse.geometry import (compose_transforms, invert_transform, make_transform, random_rotation,
                                             transform_points)

        pair = fragment_pair(EVAL_SEEDS[args.demo_seed], voxel_size=0.025, views=2)
        generator = torch.Generator().manual_seed(args.demo_seed)
        motion = make_transform(random_rotation(generator=generator, dtype=torch.float64),
                                torch.randn(3, generator=generator, dtype=torch.float64))
        src = transform_points(pair.src.double(), motion).float()
        tgt = pair.tgt
        truth = compose_transforms(pair.transform.double(), invert_transform(motion))
        inputs = []
    else:
        if args.src is None or args.tgt is None:
            raise ValueError("expected SRC and TGT point cloud files (or --demo)")
        inputs = [args.src, args.tgt]
    _check_outputs(inputs, {"--out": args.out, "--render": args.render},
                   {"--out": (".txt", ".json"), "--render": (".png",)})
    if not args.demo:
        src, tgt = read_point_cloud(args.src), read_point_cloud(args.tgt)
    result, _, _ = _make_registrar(args)(src, tgt)
    report = result.to_dict()
    if truth is not None:
        report["demo"] = {"seed": args.demo_seed, "rre_deg": float(relative_rotation_error(result.transform, truth)),
                          "rte": float(relative_translation_error(result.transform, truth)),
                          "ground_truth": truth.tolist()}
    picture = None
    if args.render is not None:  # rendered before anything is written: a failure leaves no --out behind
        from geoattn.registration.render import alignment_png

        picture = alignment_png(src, tgt, result.transform,
                                title=f"{result.method}: {result.num_correspondences} correspondences, "
                                      f"{'inlier ratio' if result.method == 'roitr' else 'fitness'} "
                                      f"{result.inlier_ratio:.2f}, {result.seconds:.2f} s")
    if args.out is not None:
        write_transform(args.out, result.transform, extra={k: v for k, v in report.items() if k != "transform"})
    if picture is not None:
        atomic_write_bytes(args.render, picture)
    if args.json:
        print(json_dumps(report))
    else:
        print("transform (source -> target):")
        for row in result.transform.tolist():
            print("  " + " ".join(f"{value: .6f}" for value in row))
        label = "correspondence inlier ratio" if result.method == "roitr" else "fitness (ICP inlier fraction)"
        print(f"{label}: {result.inlier_ratio:.3f} ({result.num_correspondences} correspondences)")
        print(f"time: {result.seconds:.3f} s ({result.method}, {result.num_points[0]} / {result.num_points[1]} points)")
        if truth is not None:
            print(f"demo ground truth: RRE {report['demo']['rre_deg']:.2f} deg, RTE {report['demo']['rte']:.3f} m")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from geoattn.registration.evaluation import evaluate_3dmatch
    from geoattn.registration.io import atomic_write_bytes, json_dumps

    check_device(args.device)
    if not args.root.is_dir():
        raise FileNotFoundError(f"--root {args.root}: no such folder")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ValueError(f"--max-pairs: expected a positive number of pairs, got {args.max_pairs}")
    _check_outputs([], {"--out": args.out}, {"--out": (".json",)})
    summary = evaluate_3dmatch(args.root, args.benchmark, _make_registrar(args), scenes=args.scenes,
                               max_pairs=args.max_pairs, progress=not args.json)
    summary["protocol"].update({"method": args.method, "estimator": args.estimator, "icp": args.icp,
                                "voxel_size": args.voxel_size, "seed": args.seed})
    if args.out is not None:
        atomic_write_bytes(args.out, (json_dumps(summary, indent=2) + "\n").encode())
    brief = {k: v for k, v in summary.items() if k not in ("pairs", "scenes")}
    if args.json:
        print(json_dumps(brief))
    else:
        def fmt(value):
            return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
        print(f"{args.benchmark} ({len(summary['pairs'])} pairs, {len(summary['scenes'])} scenes, {args.method})")
        for key in ("inlier_ratio", "feature_matching_recall", "registration_recall", "median_rre", "median_rte"):
            print(f"  {key}: {fmt(brief[key])}")
    return 0
