"""Train and evaluate GLA-GCN on Human3.6M (VideoPose3D npz files) with a per-action P1/P2 table.

Needs, in ``--root`` (see ``datasets/h36m.md``): ``data_3d_h36m.npz``, ``data_2d_h36m_<keypoints>.npz`` and a
camera file ``cameras.pkl`` (mmpose layout: ``{(subject, camera_id): {R, T, f, c, k, p, w, h}}``).

    python examples/h36m_glagcn.py --root data/h36m --keypoints cpn_ft_h36m_dbb --epochs 80
    python examples/h36m_glagcn.py --root data/h36m --keypoints gt --evaluate runs/glagcn.pt

Protocol (the paper's): train on S1, S5, S6, S7, S8, test on S9, S11; 3D targets in camera coordinates
with the root at 0; 2D in normalised screen coordinates; horizontal-flip augmentation and flip test-time
augmentation; MPJPE loss. Unlike the official script, no checkpoint is selected on the test subjects:
the last epoch is evaluated. P1 = MPJPE, P2 = P-MPJPE, both in mm and averaged over the 15 actions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geoattn.data.h36m import (H36M_CAMERA_IDS, ChunkedWindows, group_by_action, load_mmpose_cameras,
                               load_positions_2d, load_positions_3d, normalize_screen_coordinates, root_relative,
                               world_to_camera)
from geoattn.models import GLAGCN
from geoattn.pose.training import bn_momentum, pose_metrics, predict, set_bn_momentum, train_epoch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder with the npz files and cameras.pkl")
    parser.add_argument("--keypoints", default="cpn_ft_h36m_dbb", help="2D source: gt, cpn_ft_h36m_dbb, ...")
    parser.add_argument("--cameras", type=Path, default=None, help="camera file (default ROOT/cameras.pkl)")
    parser.add_argument("--subjects-train", default="S1,S5,S6,S7,S8")
    parser.add_argument("--subjects-test", default="S9,S11")
    parser.add_argument("--actions", default="*", help="comma-separated action classes or * for all")
    parser.add_argument("--filter-widths", default="3,3,3,3,3", help="3,3,3,3,3 = 243 frames")
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frame-stride", type=int, default=1, help="train on every N-th frame as window centre")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no flip augmentation / flip TTA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/h36m_glagcn.pt"))
    parser.add_argument("--resume", action="store_true", help="continue training from --checkpoint")
    parser.add_argument("--evaluate", type=Path, default=None, help="only evaluate this checkpoint")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def load_split(args, subjects, positions_3d, positions_2d, cameras):
    """Per (subject, action): lists of normalised 2D and root-relative camera-frame 3D sequences."""
    wanted = None if args.actions == "*" else {a.strip() for a in args.actions.split(",")}
    out = {}
    for subject in subjects:
        if subject not in positions_3d or subject not in positions_2d:
            raise ValueError(f"subject {subject} missing from the npz files")
        for action, world in positions_3d[subject].items():
            if subject == "S11" and action.startswith("Directions"):
                continue  # corrupted video in the original dataset (VideoPose3D drops it too)
            if wanted is not None and action.split(" ")[0] not in wanted:
                continue
            views_2d, views_3d = [], []
            for index, keypoints in enumerate(positions_2d[subject][action]):
                camera = cameras[(subject, H36M_CAMERA_IDS[index])]
                frames = min(len(keypoints), len(world))  # 2D is truncated to the mocap length
                views_2d.append(normalize_screen_coordinates(keypoints[:frames], camera.width, camera.height))
                views_3d.append(root_relative(world_to_camera(world[:frames], camera)))
            out[(subject, action)] = (views_2d, views_3d)
    return out


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    torch.save(state, temporary)
    os.replace(temporary, path)


def evaluate(model, test, frames, device, flip) -> dict:
    nested: dict[str, dict[str, None]] = {}
    for subject, action in test:
        nested.setdefault(subject, {})[action] = None
    table = {}
    for action, keys in sorted(group_by_action(nested).items()):
        predictions, targets = [], []
        for key in keys:
            views_2d, views_3d = test[key]
            windows = ChunkedWindows(views_2d, views_3d, frames)
            predictions.append(predict(model, windows, device=device, flip_test=flip))
            targets.append(torch.from_numpy(np.concatenate(views_3d)))
        metrics = pose_metrics(torch.cat(predictions), torch.cat(targets))
        table[action] = {"p1": metrics["mpjpe"], "p2": metrics["p_mpjpe"]}
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    root = args.root
    paths = [root / "data_3d_h36m.npz", root / f"data_2d_h36m_{args.keypoints}.npz",
             args.cameras or root / "cameras.pkl"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"error: missing {', '.join(missing)}; see datasets/h36m.md for how to prepare Human3.6M")
    positions_3d = load_positions_3d(paths[0])
    positions_2d, _ = load_positions_2d(paths[1])
    cameras = load_mmpose_cameras(paths[2])
    widths = tuple(int(w) for w in args.filter_widths.split(","))
    model = GLAGCN(channels=args.channels, filter_widths=widths).to(args.device)
    frames = model.receptive_field()
    test = load_split(args, args.subjects_test.split(","), positions_3d, positions_2d, cameras)

    if args.evaluate is None:
        train = load_split(args, args.subjects_train.split(","), positions_3d, positions_2d, cameras)
        train_windows = ChunkedWindows([v for views, _ in train.values() for v in views],
                                       [v for _, views in train.values() for v in views], frames,
                                       flip=args.flip, frame_stride=args.frame_stride)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr * 0.01)
        start = 0
        if args.resume:
            if not args.checkpoint.is_file():
                raise SystemExit(f"error: --resume needs an existing --checkpoint, got {args.checkpoint}")
            state = torch.load(args.checkpoint, map_location=args.device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = state["epoch"]
        rng = np.random.default_rng(args.seed + start)
        for epoch in range(start, args.epochs):
            set_bn_momentum(model, bn_momentum(epoch, args.epochs))
            started = time.time()
            with tqdm(total=len(train_windows), desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.quiet,
                      leave=False) as bar:
                loss = train_epoch(model, train_windows, optimizer, args.batch_size, rng, args.device,
                                   progress=lambda n, value: (bar.update(n), bar.set_postfix(loss=f"{value:.4f}")))
            scheduler.step()
            print(json.dumps({"epoch": epoch + 1, "train_mpjpe_mm": loss * 1000,
                              "seconds": round(time.time() - started, 1)}), file=sys.stderr, flush=True)
            save_checkpoint(args.checkpoint, {"epoch": epoch + 1, "model": model.state_dict(),
                                              "optimizer": optimizer.state_dict(),
                                              "scheduler": scheduler.state_dict(),
                                              "config": {"channels": args.channels, "filter_widths": widths}})
    else:
        if not args.evaluate.is_file():
            raise SystemExit(f"error: no checkpoint at {args.evaluate}")
        model.load_state_dict(torch.load(args.evaluate, map_location=args.device)["model"])

    table = evaluate(model, test, frames, args.device, args.flip)
    summary = {
        "p1_mm": float(np.mean([row["p1"] for row in table.values()])),
        "p2_mm": float(np.mean([row["p2"] for row in table.values()])),
        "per_action": table,
        "keypoints": args.keypoints,
        "receptive_field": frames,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'action':<14}{'P1 (mm)':>10}{'P2 (mm)':>10}")
        for action, row in table.items():
            print(f"{action:<14}{row['p1']:>10.1f}{row['p2']:>10.1f}")
        print(f"{'average':<14}{summary['p1_mm']:>10.1f}{summary['p2_mm']:>10.1f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
