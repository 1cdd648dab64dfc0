"""Choose settings for ``mocap_glagcn.py`` on a pose-novelty split of the training part only.

The evaluation part of a clip (its last ``1 - --split``) and the evaluation cameras are never scored
here. Inside the training part, the frames ``--holdout START:END`` are held out (and ``--gap`` frames
either side, so no training window overlaps them): one model is trained on the rest exactly as
``mocap_glagcn.py`` trains it (fresh random cameras and limb turns every epoch, flip augmentation,
the same optimiser and schedule) and scored on the held-out frames as seen from 4 random validation
cameras kept ``--camera-margin`` degrees away from the evaluation cameras. It prints the validation
MPJPE every ``--log-every`` epochs and, at the end, with the running and with re-estimated batch-norm
statistics.

The defaults of ``mocap_glagcn.py`` were chosen with this split of CMU 131_01 (frames 170-214: standing up
with the right arm raised, a pose that is rare in the rest of the training part):

    python examples/mocap_glagcn_validation.py --npy cmu_131_01_h36m17.npy --epochs 30 --json

The runs behind the defaults and their figures are listed in ``datasets/h36m.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mocap_glagcn import (camera_ring, count_parameters, load_sequences, matching_baseline_channels,  # noqa: E402
                          print_summary, render)

from geoattn.data.h36m import ChunkedWindows  # noqa: E402
from geoattn.models import GLAGCN, TemporalConvLifter  # noqa: E402
from geoattn.pose.cameras import random_cameras  # noqa: E402
from geoattn.pose.training import (ScaleNormalizedLifter, bn_momentum, pose_metrics, predict,  # noqa: E402
                                   recalibrate_batch_norm, set_bn_momentum, train_epoch)
from geoattn.train_log import TrainingLog  # noqa: E402


def frame_range(text: str) -> tuple[int, int]:
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END frame numbers, got {text!r}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < END, got {text!r}")
    return start, end


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npy", required=True, help="one sequence (T, 17, 3), metres, +Z up, H36M-17 order")
    parser.add_argument("--split", type=float, default=0.7, help="the training part is the first SPLIT of the clip")
    parser.add_argument("--holdout", type=frame_range, default=(170, 215),
                        help="validation frames START:END inside the training part")
    parser.add_argument("--gap", type=int, default=5, help="frames dropped from training either side of the holdout")
    parser.add_argument("--model", choices=["glagcn", "baseline"], default="glagcn")
    parser.add_argument("--filter-widths", default="3,3,3")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--normalize-scale", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--limb-augment", type=float, default=25.0)
    parser.add_argument("--shoulder-augment", type=float, default=120.0)
    parser.add_argument("--train-cameras", type=int, default=16, help="ring size that places the evaluation cameras")
    parser.add_argument("--eval-cameras", type=int, default=4)
    parser.add_argument("--cameras-per-epoch", type=int, default=128)
    parser.add_argument("--camera-margin", type=float, default=10.0)
    parser.add_argument("--frame-stride", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="write log.csv (per-epoch training MPJPE, validation MPJPE every --log-every epochs) "
                             "and curve.png there")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    (clip,) = load_sequences([args.npy], [], "z")
    training_frames = int(round(args.split * len(clip)))
    start, end = args.holdout
    if end > training_frames:
        raise ValueError(f"--holdout: expected frames inside the training part [0, {training_frames}), "
                         f"got {start}:{end}")
    train_sequences = [part for part in (clip[:max(start - args.gap, 0)], clip[end + args.gap:training_frames])
                       if len(part)]
    if not train_sequences:
        raise ValueError(f"--holdout/--gap: {start}:{end} with a gap of {args.gap} leaves no training frames")
    validation_sequences = [clip[start:end]]

    # The same ring as mocap_glagcn.py (centred on the whole clip's root path), so the evaluation cameras
    # that the validation cameras keep away from are the ones the evaluation uses.
    centre = clip[:, 0].mean(0)
    _, eval_cameras = camera_ring(args.train_cameras, args.eval_cameras, centre, args.seed)
    validation_cameras = random_cameras(4, centre, np.random.default_rng([args.seed, 777]), avoid=eval_cameras,
                                        min_separation=args.camera_margin)

    widths = tuple(int(w) for w in args.filter_widths.split(","))
    if args.model == "glagcn":
        model = GLAGCN(channels=args.channels, filter_widths=widths, dropout=args.dropout)
    else:
        reference = GLAGCN(channels=args.channels, filter_widths=widths, dropout=args.dropout)
        channels = matching_baseline_channels(count_parameters(reference), widths)
        model = TemporalConvLifter(channels=channels, filter_widths=widths)
    if args.normalize_scale:
        model = ScaleNormalizedLifter(model)
    model = model.to(args.device)
    frames = model.receptive_field()

    validation_2d, validation_3d, _ = render(validation_sequences, validation_cameras, "ray")
    validation = ChunkedWindows(validation_2d, validation_3d, frames)
    validation_targets = torch.from_numpy(np.concatenate(validation_3d))

    def validation_mpjpe() -> float:  # ray-frame and camera-frame MPJPE agree: each pose is only turned
        return pose_metrics(predict(model, validation, device=args.device), validation_targets)["mpjpe"]

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr * 0.01)
    rng = np.random.default_rng(args.seed)
    history, started = [], time.time()
    log = TrainingLog(args.log_dir) if args.log_dir is not None else None
    for epoch in range(args.epochs):
        rng_epoch = np.random.default_rng([args.seed, epoch])
        cameras = random_cameras(args.cameras_per_epoch, centre, rng_epoch, avoid=eval_cameras,
                                 min_separation=args.camera_margin)
        poses_2d, poses_3d, _ = render(train_sequences, cameras, "ray", args.limb_augment, args.shoulder_augment,
                                       rng_epoch)
        windows = ChunkedWindows(poses_2d, poses_3d, frames, flip=True, frame_stride=args.frame_stride)
        set_bn_momentum(model, bn_momentum(epoch, args.epochs))
        with tqdm(total=len(windows), desc=f"{args.model} {epoch + 1}/{args.epochs}", disable=args.quiet,
                  leave=False) as bar:
            loss = train_epoch(model, windows, optimizer, args.batch_size, rng, args.device,
                               progress=lambda n, value: (bar.update(n), bar.set_postfix(loss=f"{value:.4f}")))
        scheduler.step()
        row = {"epoch": epoch + 1, "train_mpjpe_mm": round(loss * 1000, 1)}
        if args.log_every and (epoch + 1) % args.log_every == 0 and epoch + 1 < args.epochs:
            row["validation_mpjpe_mm"] = round(validation_mpjpe(), 2)
            history.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        if log is not None:
            log.append(row)
            log.plot(title=f"{args.model}, validation split {start}:{end}")
    running = validation_mpjpe()
    recalibrate_batch_norm(model, windows, batch_size=256, device=args.device)
    summary = {
        "model": args.model, "epochs": args.epochs, "holdout": f"{start}:{end}", "seed": args.seed,
        "params": count_parameters(model),
        "validation_mpjpe_mm": running, "validation_mpjpe_recalibrated_bn_mm": validation_mpjpe(),
        "history": history, "seconds": round(time.time() - started, 1),
    }
    print_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
