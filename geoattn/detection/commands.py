"""Logic behind ``geoattn detect``, ``evaluate-kitti``, ``evaluate-waymo``, ``synthetic-kitti`` and
``create-gt-database`` (the CLI module only wires it up).

Errors a user can cause (missing or malformed files, a checkpoint of another configuration, bad options)
surface as ``ValueError``/``OSError`` with a one-line message; :mod:`geoattn.cli` prints it and exits 2.
Heavy imports happen inside the functions so that ``geoattn --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from geoattn.backends import check_device

__all__ = [
    "add_detect_arguments", "add_evaluate_kitti_arguments", "add_evaluate_waymo_arguments",
    "add_synthetic_kitti_arguments", "add_create_gt_database_arguments",
    "run_detect", "run_evaluate_kitti", "run_evaluate_waymo", "run_synthetic_kitti", "run_create_gt_database",
]


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("frame", nargs="?", type=Path, help="LiDAR frame: KITTI velodyne .bin (float32 x 4 per point)")
    parser.add_argument("--demo", action="store_true", help="detect on a synthetic KITTI-like scene generated now")
    parser.add_argument("--demo-seed", type=int, default=0, help="which synthetic scene --demo generates")
    parser.add_argument("--checkpoint", type=Path,
                        help="detector checkpoint (default: the KITTI checkpoint shipped with geoattn)")
    parser.add_argument("--config", help="kitti_scatterformer, waymo_scatterformer or a YAML file; must be the "
                                         "checkpoint's own configuration (default: the one stored in it)")
    parser.add_argument("--calib", type=Path, help="KITTI calibration .txt (default: ../calib/<frame>.txt beside "
                                                   "the velodyne folder); needed for camera-frame KITTI labels")
    parser.add_argument("--image-shape", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image size for the 2-D boxes (default: image_2/<frame>.png beside the frame, "
                             "else 375 1242)")
    parser.add_argument("--out", type=Path, help="write the detections as a KITTI label file (.txt)")
    parser.add_argument("--render", type=Path, help="write a bird's-eye picture of points and boxes (.png)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="keep detections scoring at least this (default: the configuration's SCORE_THRESH)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")


def add_evaluate_kitti_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, required=True, help="folder of KITTI label_2 files (ground truth)")
    parser.add_argument("--predictions", type=Path, required=True,
                        help="folder of KITTI-format detections (16 columns, score last), named like the labels")
    parser.add_argument("--classes", default="Car,Pedestrian,Cyclist", help="comma-separated classes to score")
    parser.add_argument("--frames", type=Path, help="ImageSets-style list of frame ids to score (default: all labels)")
    parser.add_argument("--out", type=Path, help="also write the metric object to this .json file")
    parser.add_argument("--json", action="store_true", help="print one JSON object (OpenPCDet keys, percent)")


def add_evaluate_waymo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", type=Path, required=True,
                        help="OpenPCDet result pickle: a list of {frame_id, name, score, boxes_lidar}")
    parser.add_argument("--ground-truth", type=Path, required=True,
                        help="OpenPCDet processed Waymo infos pickle (waymo_infos_val.pkl or a segment's .pkl)")
    parser.add_argument("--classes", default="Vehicle,Pedestrian,Cyclist", help="comma-separated classes to score")
    parser.add_argument("--out", type=Path, help="also write the metric object to this .json file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_synthetic_kitti_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="new folder for training/ and ImageSets/")
    parser.add_argument("--frames", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene seed; other seeds give independent scenes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_create_gt_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="KITTI root with training/ and ImageSets/")
    parser.add_argument("--split", default="train", help="ImageSets split whose objects go into the database")
    parser.add_argument("--classes", default=None, help="comma-separated classes (default: every labelled class)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing database")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _classes(text: str, option: str = "--classes") -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"{option}: expected comma-separated class names, got {text!r}")
    return names


def _check_output(option: str, path: Path | None, suffixes: tuple[str, ...], inputs: list[Path]) -> None:
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: expected a file ending in {' or '.join(suffixes)}")
    if path.exists() and path.is_dir():
        raise ValueError(f"{option} {path}: is a folder")
    if any(path.resolve() == source.resolve() for source in inputs):
        raise ValueError(f"{option} {path}: refusing to overwrite an input file")
    if not path.parent.resolve().is_dir():
        raise ValueError(f"{option} {path}: no such folder {path.parent}")


def _write_json(path: Path, payload: dict) -> None:
    from geoattn.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())


def run_evaluate_kitti(args: argparse.Namespace) -> int:
    from geoattn.data.kitti import read_image_set
    from geoattn.detection.kitti_eval import evaluate_kitti_folders, format_kitti_table

    for option, folder in (("--labels", args.labels), ("--predictions", args.predictions)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{option} {folder}: no such folder")
    _check_output("--out", args.out, (".json",), [])
    frame_ids = None
    if args.frames is not None:
        frame_ids = read_image_set(args.frames.parent.parent, args.frames.stem) if args.frames.parent.name == \
            "ImageSets" else [line.strip() for line in args.frames.read_text().splitlines() if line.strip()]
    result = evaluate_kitti_folders(args.labels, args.predictions, _classes(args.classes), frame_ids=frame_ids)
    if args.out is not None:
        _write_json(args.out, result)
    print(json.dumps(result) if args.json else format_kitti_table(result))
    return 0


def run_evaluate_waymo(args: argparse.Namespace) -> int:
    from geoattn.data.kitti import load_info_pickle
    from geoattn.detection.waymo_eval import evaluate_waymo_infos

    for option, path in (("--predictions", args.predictions), ("--ground-truth", args.ground_truth)):
        if not path.is_file():
            raise FileNotFoundError(f"{option} {path}: no such file")
    _check_output("--out", args.out, (".json",), [args.predictions, args.ground_truth])
    results = load_info_pickle(args.predictions)
    infos = load_info_pickle(args.ground_truth)
    for option, path, value in (("--predictions", args.predictions, results),
                                ("--ground-truth", args.ground_truth, infos)):
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ValueError(f"{option} {path}: expected a pickled list of dicts, got {type(value).__name__}")
    result = evaluate_waymo_infos(infos, results, _classes(args.classes))
    if args.out is not None:
        _write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value:.4f}")
    return 0


def run_synthetic_kitti(args: argparse.Namespace) -> int:
    from geoattn.detection.synthetic import write_synthetic_kitti

    if args.frames < 1:
        raise ValueError(f"--frames: expected a positive number of scenes, got {args.frames}")
    write_synthetic_kitti(args.out, args.frames, args.seed, progress=not args.quiet)
    print(f"wrote {args.frames} synthetic KITTI scenes (seed {args.seed}) to {args.out}")
    return 0


def run_create_gt_database(args: argparse.Namespace) -> int:
    from geoattn.detection.gt_database import create_gt_database

    if not args.root.is_dir():
        raise FileNotFoundError(f"root {args.root}: no such folder")
    classes = _classes(args.classes) if args.classes else None
    summary = create_gt_database(args.root, split=args.split, class_names=classes, overwrite=args.overwrite,
                                 progress=not args.quiet)
    print(summary if isinstance(summary, str) else json.dumps(summary, default=str))
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from geoattn.detection.inference import Detector, read_frame_for_detection

    check_device(args.device)
    if args.demo == (args.frame is not None):
        raise ValueError("expected one LiDAR FRAME.bin or --demo")
    inputs = [path for path in (args.frame, args.calib, args.checkpoint) if path is not None]
    _check_output("--out", args.out, (".txt",), inputs)
    _check_output("--render", args.render, (".png",), inputs)
    detector = Detector.load(args.checkpoint, config=args.config, device=args.device)
    frame = read_frame_for_detection(args.frame, calib=args.calib, image_shape=args.image_shape,
                                     num_point_features=detector.num_point_features, demo_seed=args.demo_seed
                                     if args.demo else None)
    result = detector(frame, score_threshold=args.score_threshold)
    if args.out is not None:
        result.write_kitti(args.out)
    if args.render is not None:
        result.render(args.render)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.format_table())
    return 0
