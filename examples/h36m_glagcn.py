"""Train and evaluate GLA-GCN on Human3.6M (VideoPose3D npz files) with a per-action P1/P2 table.

Needs, in ``--root`` (see ``datasets/h36m.md``): ``data_3d_h36m.npz``, ``data_2d_h36m_<keypoints>.npz`` and a
camera file ``cameras.pkl`` (mmpose layout: ``{(subject, camera_id): {R, T, f, c, k, p, w, h}}``).

    python examples/h36m_glagcn.py --root data/h36m --keypoints cpn_ft_h36m_dbb --epochs 80
    python examples/h36m_glagcn.py --root data/h36m --keypoints gt --evaluate runs/glagcn.pt

Protocol (the paper's): train on S1, S5, S6, S7, S8, test on S9, S11; 3D targets in camera coordinates
with the root at 0; 2D in normalised screen coordinates; horizontal-flip augmentation and flip test-time
augmentation; MPJPE loss. Unlike the official script, no checkpoint is selected on the test subjects:
the last epoch is evaluated. P1 = MPJPE, P2 = P-MPJPE, both in mm and averaged over the 15 actions.

Data-parallel training runs under ``torchrun`` (gloo on CPU, NCCL on CUDA; ``--batch-size`` is per process,
every process shuffles with the same seed and takes its share of the batches, see
:func:`geoattn.pose.training.train_epoch`); process 0 writes the checkpoint after every epoch, ``log.csv`` and
``curve.png`` beside it, and evaluates. ``--resume`` continues exactly where the checkpoint left off (the
random streams are saved with it):

    torchrun --standalone --nproc_per_node 2 examples/h36m_glagcn.py --root data/h36m --device cpu
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from geoattn.data.h36m import (H36M_CAMERA_IDS, ChunkedWindows, group_by_action, load_mmpose_cameras,
                               load_positions_2d, load_positions_3d, normalize_screen_coordinates, root_relative,
                               world_to_camera)
from geoattn.io import load_checkpoint, save_checkpoint
from geoattn.models import GLAGCN
from geoattn.pose.training import bn_momentum, pose_metrics, predict, set_bn_momentum, train_epoch
from geoattn.train_log import TrainingLog


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
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end this invocation after that epoch (checkpoint written, schedule unchanged)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="folder of log.csv and curve.png (default: the folder of --checkpoint)")
    parser.add_argument("--dist-timeout", type=float, default=600.0,
                        help="seconds a collective may wait for the other processes before failing (torchrun)")
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


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: CUDA is not available")
    if world > 1:
        if args.evaluate is not None:
            return fail("--evaluate runs in one process, not under torchrun")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=args.dist_timeout))
    try:  # the process group is torn down on every way out, errors included
        return run(args, device)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args, device: torch.device) -> int:
    distributed = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    for name in ("epochs", "batch_size", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return fail(f"--{name.replace('_', '-')}: expected a positive int, got {value}")
    torch.manual_seed(args.seed)  # the same on every process: identical initial weights
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
    config = {"channels": args.channels, "filter_widths": list(widths)}
    model = GLAGCN(channels=args.channels, filter_widths=widths).to(device)
    frames = model.receptive_field()
    test = load_split(args, args.subjects_test.split(","), positions_3d, positions_2d, cameras)

    if args.evaluate is None:
        train = load_split(args, args.subjects_train.split(","), positions_3d, positions_2d, cameras)
        train_windows = ChunkedWindows([v for views, _ in train.values() for v in views],
                                       [v for _, views in train.values() for v in views], frames,
                                       flip=args.flip, frame_stride=args.frame_stride)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr * 0.01)
        start, state = 0, None
        if args.resume:
            if not args.checkpoint.is_file():
                return fail(f"--resume needs an existing --checkpoint, got {args.checkpoint}")
            state = load_checkpoint(args.checkpoint, map_location=device)
            if state.get("config") != config or state.get("epochs") != args.epochs:
                return fail(f"--resume: {args.checkpoint} was trained with {state.get('config')} for "
                            f"{state.get('epochs')} epochs, this run asks for {config} and {args.epochs}")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = state["epoch"]
        rng = np.random.default_rng(args.seed + start)
        if state is not None and "numpy_rng" in state:  # exact continuation of the interrupted run
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"].cpu())
        trained = model
        if distributed:
            if device.type == "cuda":  # torch has no CPU SyncBatchNorm: gloo processes keep their own statistics
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            trained = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        log = None
        if rank == 0:
            log = TrainingLog(args.log_dir or args.checkpoint.parent, resume=args.resume)
            log.truncate(after=start)
        for epoch in range(start, args.epochs):
            set_bn_momentum(trained, bn_momentum(epoch, args.epochs))
            started = time.time()
            with tqdm(total=len(train_windows) // world, desc=f"epoch {epoch + 1}/{args.epochs}",
                      disable=args.quiet or rank != 0, leave=False) as bar:
                loss = train_epoch(trained, train_windows, optimizer, args.batch_size, rng, device, rank=rank,
                                   world_size=world,
                                   progress=lambda n, value: (bar.update(n), bar.set_postfix(loss=f"{value:.4f}")))
            if distributed:
                mean = torch.tensor([loss], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(mean)
                loss = float(mean) / world
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            row = {"epoch": epoch + 1, "train_mpjpe_mm": loss * 1000, "lr": lr,
                   "seconds": round(time.time() - started, 1)}
            if rank == 0:
                print(json.dumps(row), file=sys.stderr, flush=True)
                save_checkpoint(args.checkpoint, {"epoch": epoch + 1, "epochs": args.epochs,
                                                  "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                  "scheduler": scheduler.state_dict(),
                                                  "numpy_rng": rng.bit_generator.state,
                                                  "torch_rng": torch.get_rng_state()}, config=config)
                log.append(row)
                log.plot(title="GLA-GCN, Human3.6M")
            if distributed:
                torch.distributed.barrier()  # nobody runs ahead of the checkpoint
            if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < args.epochs:
                if rank == 0:
                    print(f"stopped after epoch {epoch + 1} of {args.epochs} (--stop-after); continue with --resume",
                          file=sys.stderr)
                return 0
    else:
        if not args.evaluate.is_file():
            return fail(f"--evaluate: no checkpoint at {args.evaluate}")
        model.load_state_dict(load_checkpoint(args.evaluate, map_location=device)["model"])
    if rank != 0:
        return 0

    table = evaluate(model, test, frames, device, args.flip)
    summary = {
        "p1_mm": float(np.mean([row["p1"] for row in table.values()])),
        "p2_mm": float(np.mean([row["p2"] for row in table.values()])),
        "per_action": table,
        "keypoints": args.keypoints,
        "receptive_field": frames,
        "params": sum(p.numel() for p in model.parameters()),
        "world_size": world,
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
        sys.exit(fail(str(error)))
