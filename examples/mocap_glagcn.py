"""Train GLA-GCN and a same-budget VideoPose3D-style baseline on motion capture seen by virtual cameras.

3D sequences (T, 17, 3) in metres (H36M-17 joint order) are filmed by virtual pinhole cameras. Both
models are trained on the training sequences as seen from training cameras and evaluated on the
evaluation sequences as seen from held-out cameras that training never uses (flip test-time
augmentation on). Both get the same windows, epochs, batch size, optimiser and schedule;
the baseline's width is chosen so that its parameter count matches GLA-GCN's (``--baseline-channels``
overrides it). No model selection on the evaluation data: the last epoch is reported.

The done-criterion run of the CMU clip (first 70 % for training, last 30 % for evaluation):

    python examples/mocap_glagcn.py --train-npy cmu_131_01_h36m17.npy --eval-npy cmu_131_01_h36m17.npy \
        --split 0.7 --json

Defaults are sized for a shared CPU: 27-frame windows (``--filter-widths 3,3,3``), 32 channels,
window centres on every 16th frame per camera (staggered, so the cameras together cover every
frame), flip augmentation, batch 32, Adam (amsgrad, lr 2e-3, cosine decay), 60 epochs. The seeded
ring has 16 + 4 cameras (heights 0.6-2.2 m, distances 4.5-6 m); the 4 evaluation cameras sit between
training ones. By default (``--camera-sampling random``) the training views are 128 fresh random
cameras every epoch (``--cameras-per-epoch``), drawn from the same distance and height ranges at
any azimuth at least ``--camera-margin`` (10) degrees from every evaluation camera. Each epoch, half
of the training (sequence, camera) pairs are rendered from a copy of the sequence whose hips, knees
and elbows are turned by up to 25 degrees (``--limb-augment``) and whose shoulders by up to 120
degrees (``--shoulder-augment``): arms move most freely, and the wide range puts raised, lowered and
stretched arms on every body pose of a short recording. Left/right mirroring needs no option of its
own: the flip augmentation (2D and 3D mirrored, left and right swapped) is exactly the mirrored
sequence filmed by the mirrored camera.

Inputs are ray-aligned (``--input-2d ray``): every frame is seen by the camera virtually turned to
look along the root joint's viewing ray (a perspective crop with the known intrinsics), the 3D target
is expressed in that turned frame and predictions are turned back before scoring in camera axes. A
root-relative 2D pose does not say where in the image the subject stands, yet the camera-frame pose
of a subject seen 10-15 degrees off the optical axis is turned by that angle (about 37 mm MPJPE on the
last 30 % of the CMU clip from the evaluation cameras if ignored); the ray-aligned frame removes this
ambiguity exactly. Both models also see every window divided by its centre frame's 2D size (the RMS
distance of the joints from the root, ``--normalize-scale``, on by default): a subject's image size
changes with its distance to the camera, its pose in metres does not. After training, each model
keeps its running batch-norm averages or takes statistics re-estimated on the last epoch's windows,
whichever gives the lower error on the training sequences seen from 4 extra random validation
cameras (``--bn-statistics``). All of this applies to both
models. The paper's setting is ``--filter-widths 3,3,3,3,3 --channels 96``.

Measured with the command above (seed 0, ``--threads 1``, 1330 s for both models on a shared 2-core
machine): GLA-GCN 44.3 mm MPJPE / 35.0 mm P-MPJPE against 59.4 / 44.9 mm for the baseline
(100,460 vs 101,712 parameters); with ``--seed 1`` / ``--seed 2`` 41.0 / 38.6 against 58.5 / 53.8 mm
MPJPE. Most of the remaining error (seed 0) is the right arm, raised sideways above
the shoulder in 81 of the 125 evaluation frames but in only 37 of the 290 training frames (53.4 mm on
evaluation frames 50-124 against 30.6 mm on frames 0-49), seen from the lowest evaluation camera
(0.7 m high: 73.6 mm against 27.1-43.3 mm from the other three), where the raised arm points away
from the camera and its depth is least visible in 2D. The defaults were chosen on splits of the
training part only, lately a pose-novelty split (``mocap_glagcn_validation.py``); the runs and their
figures are in ``datasets/h36m.md``.

``--train-bvh`` / ``--eval-bvh`` read BVH files or folders of them instead (mapped to H36M-17 by joint
names; 50 fps), ``--train-asf-amc`` / ``--eval-asf-amc`` the CMU database's own ASF/AMC clips
(:func:`geoattn.data.load_asf_amc`; ``SKELETON.asf CLIP.amc ...`` or folders). With several evaluation
clips the summary reports MPJPE / P-MPJPE of both models per clip (``per_clip``) and over all frames.
``--split`` cuts the npy / BVH clips only; ASF/AMC trials are used whole. All shared clips (the BVH
clip's first 70 % and CMU subjects 02 and 03 without one held-out trial each for training; the held-out
trials and the BVH clip's last 30 % for evaluation):

    python examples/mocap_glagcn.py --train-npy ../shared/data/pose/cmu_131_01_h36m17.npy \
        --train-asf-amc ../shared/data/pose/cmu_asfamc/02/02.asf ../shared/data/pose/cmu_asfamc/02/02_0[2-9].amc \
        ../shared/data/pose/cmu_asfamc/03/03.asf ../shared/data/pose/cmu_asfamc/03/03_0[1-3].amc \
        --eval-npy ../shared/data/pose/cmu_131_01_h36m17.npy \
        --eval-asf-amc ../shared/data/pose/cmu_asfamc/02/02.asf ../shared/data/pose/cmu_asfamc/02/02_10.amc \
        ../shared/data/pose/cmu_asfamc/03/03.asf ../shared/data/pose/cmu_asfamc/03/03_04.amc --split 0.7 --json
Without any input a small synthetic walking sequence is generated so the script can be tried out.
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

from geoattn.data.asf_amc import load_asf_amc
from geoattn.data.bvh import load_bvh_h36m17
from geoattn.data.h36m import ChunkedWindows, centre_on_root, root_relative
from geoattn.models import GLAGCN, TemporalConvLifter
from geoattn.pose.augment import LIMB_JOINTS, SHOULDER_JOINTS, random_limb_rotations
from geoattn.pose.cameras import random_cameras, ray_aligned_pairs, ray_frame_to_camera, render_pairs, virtual_cameras
from geoattn.pose.metrics import mpjpe
from geoattn.io import load_checkpoint, save_checkpoint
from geoattn.pose.training import (ScaleNormalizedLifter, bn_momentum, pose_metrics, predict, recalibrate_batch_norm,
                                   recalibrate_if_better, set_bn_momentum, train_epoch)
from geoattn.train_log import TrainingLog


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-npy", nargs="+", default=[], help="training sequences (T, 17, 3), metres")
    parser.add_argument("--eval-npy", nargs="+", default=[], help="evaluation sequences (T, 17, 3), metres")
    parser.add_argument("--train-bvh", nargs="+", default=[], help="training BVH files or folders of them")
    parser.add_argument("--eval-bvh", nargs="+", default=[], help="evaluation BVH files or folders of them")
    parser.add_argument("--train-asf-amc", nargs="+", default=[],
                        help="training ASF/AMC clips: SKELETON.asf CLIP.amc [CLIP.amc ...] groups or folders "
                             "(every .amc below with the .asf beside it; CMU: 120 fps)")
    parser.add_argument("--eval-asf-amc", nargs="+", default=[], help="evaluation ASF/AMC clips, as --train-asf-amc")
    parser.add_argument("--split", type=float, default=None,
                        help="keep the first SPLIT of every npy/BVH training sequence and the last 1-SPLIT of "
                             "every npy/BVH evaluation sequence (a train/eval split of one clip); ASF/AMC trials "
                             "are used whole")
    parser.add_argument("--up", choices=["x", "y", "z"], default="z", help="world up axis of the npy inputs")
    parser.add_argument("--filter-widths", default="3,3,3", help="temporal widths; 3,3,3 = 27 frames")
    parser.add_argument("--channels", type=int, default=32, help="GLA-GCN width (96 in the paper)")
    parser.add_argument("--baseline-channels", type=int, default=None, help="baseline width (default: match params)")
    parser.add_argument("--input-2d", choices=["ray", "relative", "centred", "absolute"], default="ray",
                        help="2D input: ray-aligned (default: seen by the camera turned to look along the root's "
                             "ray, targets in that frame, predictions turned back), joints minus the root "
                             "(relative), the same with the root's screen position in its slot (centred), or "
                             "screen coordinates (absolute)")
    parser.add_argument("--normalize-scale", action=argparse.BooleanOptionalAction, default=True,
                        help="both models see every window divided by its centre frame's 2D size (RMS joint "
                             "distance from the root), so a subject's distance to the camera need not be learnt")
    parser.add_argument("--limb-augment", type=float, default=25.0,
                        help="each epoch, half of the (sequence, camera) training pairs see a copy of the sequence "
                             "with hips, knees and elbows (shoulders: --shoulder-augment) turned by up to this many "
                             "degrees (off when this and --shoulder-augment are 0)")
    parser.add_argument("--shoulder-augment", type=float, default=120.0,
                        help="the bound for the shoulders in those augmented pairs instead of --limb-augment: arms "
                             "move most freely, and a wide range puts raised or stretched arms on every body pose")
    parser.add_argument("--train-cameras", type=int, default=16,
                        help="training cameras of the seeded ring (which, with --eval-cameras, places the evaluation "
                             "cameras); the training views with --camera-sampling fixed")
    parser.add_argument("--cameras-per-epoch", type=int, default=128,
                        help="with --camera-sampling random: fresh random training cameras drawn every epoch")
    parser.add_argument("--eval-cameras", type=int, default=4)
    parser.add_argument("--camera-sampling", choices=["random", "fixed"], default="random",
                        help="random: draw fresh training cameras every epoch (same distance/height ranges, any "
                             "azimuth at least --camera-margin degrees from every evaluation camera); fixed: the "
                             "seeded ring's training cameras every epoch")
    parser.add_argument("--camera-margin", type=float, default=10.0,
                        help="minimum azimuth gap in degrees between a random training camera and the evaluation "
                             "cameras")
    parser.add_argument("--frame-stride", type=int, default=16,
                        help="train on windows centred on every N-th frame of each (sequence, camera) pair, "
                             "staggered so the pairs together cover every frame (50 fps frames are redundant)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--dropout", type=float, default=0.1, help="GLA-GCN dropout (0.1 in the paper)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bn-statistics", choices=["auto", "running", "recalibrated"], default="auto",
                        help="batch-norm statistics for evaluation: the running averages from training, statistics "
                             "re-estimated on the last epoch's windows for the final weights, or (auto) whichever "
                             "gives the lower MPJPE on the training sequences seen from 4 extra random validation "
                             "cameras (chosen per model, never on the evaluation data)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also log evaluation MPJPE every N epochs (monitoring only; the last epoch is reported)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file written after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end this invocation after that epoch (checkpoint written, schedule unchanged); "
                             "--resume continues exactly where it stopped")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="folder of log.csv (per-epoch training MPJPE of both models) and curve.png; default: "
                             "the folder of --checkpoint (no log without either)")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def synthetic_walk(frames: int = 400, fps: float = 50.0) -> np.ndarray:
    """A stick figure walking along +Y with swinging limbs (H36M-17, metres, +Z up)."""
    t = np.arange(frames) / fps
    phase = 2 * np.pi * 0.9 * t
    rest = np.array([
        [0, 0, 0.95], [-0.12, 0, 0.95], [-0.12, 0, 0.5], [-0.12, 0, 0.08], [0.12, 0, 0.95], [0.12, 0, 0.5],
        [0.12, 0, 0.08], [0, 0, 1.2], [0, 0, 1.45], [0, 0.05, 1.55], [0, 0, 1.68], [0.17, 0, 1.42],
        [0.2, 0, 1.15], [0.22, 0, 0.9], [-0.17, 0, 1.42], [-0.2, 0, 1.15], [-0.22, 0, 0.9]])
    poses = np.repeat(rest[None], frames, axis=0)
    swing = 0.25 * np.sin(phase)
    for joints, sign in (((2, 3), 1.0), ((5, 6), -1.0), ((15, 16), -1.0), ((12, 13), 1.0)):
        for depth, joint in enumerate(joints, start=1):
            poses[:, joint, 1] += sign * swing * depth * 0.6
    poses[:, :, 1] += 1.1 * t[:, None] - 1.1 * t.mean()
    poses[:, :, 2] += 0.02 * np.sin(2 * phase)[:, None]
    return poses.astype(np.float32)


def asf_amc_pairs(items) -> list[tuple[Path, Path]]:
    """(ASF, AMC) pairs of ``--train-asf-amc`` / ``--eval-asf-amc``: ``SKELETON.asf CLIP.amc [CLIP.amc ...]``
    groups and folders (every ``*.amc`` below, with the one ``*.asf`` of its folder), in the given order."""
    pairs, skeleton = [], None
    for item in map(Path, items):
        if item.is_dir():
            for amc in sorted(item.rglob("*.amc")):
                skeletons = sorted(amc.parent.glob("*.asf"))
                if len(skeletons) != 1:
                    raise ValueError(f"--*-asf-amc: {amc.parent} holds {len(skeletons)} .asf files, expected one "
                                     f"skeleton beside {amc.name}")
                pairs.append((skeletons[0], amc))
            skeleton = None
        elif item.suffix.lower() == ".asf":
            skeleton = item
        elif item.suffix.lower() == ".amc" and skeleton is not None:
            pairs.append((skeleton, item))
        else:
            raise ValueError(f"--*-asf-amc: expected folders or SKELETON.asf CLIP.amc [CLIP.amc ...], got {item}")
    return pairs


def load_clips(npy_paths, bvh_paths, up: str, asf_amc=()) -> list[tuple[str, np.ndarray]]:
    """(name, H36M-17 sequence [T, 17, 3] in metres, Z up, 50 fps) of every input; folders among
    ``bvh_paths`` stand for the ``*.bvh`` files below them."""
    clips = []
    for path in npy_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
        poses = np.load(path).astype(np.float32)
        if poses.ndim != 3 or poses.shape[1:] != (17, 3):
            raise ValueError(f"{path}: expected an array (T, 17, 3), got {poses.shape}")
        if up != "z":  # rotate so that the chosen axis becomes +Z (right-handed cyclic permutation)
            poses = poses[..., [1, 2, 0]] if up == "y" else poses[..., [2, 0, 1]]
        clips.append((str(path), poses))
    for path in map(Path, bvh_paths):
        for file in sorted(path.rglob("*.bvh")) if path.is_dir() else [path]:
            clips.append((str(file), load_bvh_h36m17(file, fps=50.0, up="z")))
    for skeleton, amc in asf_amc_pairs(asf_amc):
        clips.append((str(amc), load_asf_amc(skeleton, amc, fps=50.0, up="z")))
    return clips


def load_sequences(npy_paths, bvh_paths, up: str) -> list[np.ndarray]:
    return [sequence for _, sequence in load_clips(npy_paths, bvh_paths, up)]


def render(sequences, cameras, input_2d: str, limb_augment: float = 0.0, shoulder_augment: float | None = None,
           rng: np.random.Generator | None = None):
    """2D inputs, 3D targets and, for ``input_2d='ray'``, the per-frame rotations back to camera axes.

    Half of the (sequence, camera) pairs (when a bound is positive) see limbs turned by up to ``limb_augment``
    degrees, the shoulders by up to ``shoulder_augment`` (default: ``limb_augment``)."""
    shoulder_augment = limb_augment if shoulder_augment is None else shoulder_augment
    bounds = [shoulder_augment if joint in SHOULDER_JOINTS else limb_augment for joint in LIMB_JOINTS]
    poses_2d, poses_3d, rotations = [], [], []
    for sequence in sequences:
        for camera in cameras:
            if max(bounds) > 0 and rng.random() < 0.5:
                sequence_seen = random_limb_rotations(sequence, rng, bounds)
            else:
                sequence_seen = sequence
            if input_2d == "ray":
                two_d, three_d, rotation = ray_aligned_pairs(sequence_seen, camera)
                rotations.append(rotation)
            else:
                two_d, three_d = render_pairs(sequence_seen, camera)
            if input_2d == "relative":
                two_d = root_relative(two_d)
            elif input_2d == "centred":
                two_d = centre_on_root(two_d)
            poses_2d.append(two_d)
            poses_3d.append(three_d)
    return poses_2d, poses_3d, rotations


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matching_baseline_channels(target_params: int, widths) -> int:
    low, high = 8, 4096
    while low < high:  # smallest width whose parameter count reaches the target
        middle = (low + high) // 2
        if count_parameters(TemporalConvLifter(filter_widths=widths, channels=middle)) < target_params:
            low = middle + 1
        else:
            high = middle
    return low


def camera_ring(num_train: int, num_eval: int, centre, seed: int):
    """``(training cameras, evaluation cameras)`` of one seeded ring of ``num_train + num_eval`` cameras around
    ``centre``; the evaluation cameras sit between training ones."""
    total = num_train + num_eval
    cameras = virtual_cameras(total, centre, seed=seed)
    eval_ids = sorted({int((j + 0.5) * total / num_eval) % total for j in range(num_eval)})
    return [c for i, c in enumerate(cameras) if i not in eval_ids], [cameras[i] for i in eval_ids]


def print_summary(summary: dict, as_json: bool) -> None:
    """One JSON line, or one aligned ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(summary))
        return
    width = max(map(len, summary))
    for key, value in summary.items():
        if key == "per_clip":  # one line per evaluation clip
            for clip, figures in value.items():
                print(f"{'clip':>{width}}: {clip}: " + ", ".join(
                    f"{name} {number:.1f}" if isinstance(number, float) else f"{name} {number}"
                    for name, number in figures.items()))
            continue
        print(f"{key:>{width}}: {value:.2f}" if isinstance(value, float) else f"{key:>{width}}: {value}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stop_after is not None and (args.checkpoint is None or args.stop_after < 1):
        raise SystemExit(f"error: --stop-after needs --checkpoint and a positive epoch, got {args.stop_after} "
                         f"with --checkpoint {args.checkpoint}")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.filter_widths.split(","))
    train_clips = load_clips(args.train_npy, args.train_bvh, args.up)
    eval_clips = load_clips(args.eval_npy, args.eval_bvh, args.up)
    train_trials = load_clips((), (), args.up, args.train_asf_amc)  # whole trials: --split does not cut them
    eval_trials = load_clips((), (), args.up, args.eval_asf_amc)
    if not train_clips + train_trials and not eval_clips + eval_trials:
        print("no --train-npy/--train-bvh given: using a synthetic walking sequence (70 % / 30 % split)",
              file=sys.stderr)
        train_clips = eval_clips = [("synthetic walk", synthetic_walk())]
        args.split = 0.7 if args.split is None else args.split
    if not train_clips + train_trials or not eval_clips + eval_trials:
        raise SystemExit("error: give both training and evaluation sequences")
    if args.split is not None:
        if not 0.0 < args.split < 1.0:
            raise SystemExit(f"error: --split must lie in (0, 1), got {args.split}")
        train_clips = [(name, s[: int(round(args.split * len(s)))]) for name, s in train_clips]
        eval_clips = [(name, s[int(round(args.split * len(s))):]) for name, s in eval_clips]
    train_clips, eval_clips = train_clips + train_trials, eval_clips + eval_trials
    train_sequences = [sequence for _, sequence in train_clips]
    eval_sequences = [sequence for _, sequence in eval_clips]

    # One seeded ring of cameras; the evaluation cameras sit between training cameras.
    centre = np.concatenate([s[:, 0] for s in train_sequences + eval_sequences]).mean(0)
    train_cameras, eval_cameras = camera_ring(args.train_cameras, args.eval_cameras, centre, args.seed)

    glagcn = GLAGCN(channels=args.channels, filter_widths=widths, dropout=args.dropout).to(args.device)
    frames = glagcn.receptive_field()
    baseline_channels = args.baseline_channels or matching_baseline_channels(count_parameters(glagcn), widths)
    baseline = TemporalConvLifter(channels=baseline_channels, filter_widths=widths).to(args.device)
    models = {"glagcn": glagcn, "baseline": baseline}
    if args.normalize_scale:
        models = {name: ScaleNormalizedLifter(model) for name, model in models.items()}

    def epoch_windows(epoch: int) -> ChunkedWindows:
        """The training windows of one epoch: its cameras and limb turns depend only on (seed, epoch)."""
        rng_epoch = np.random.default_rng([args.seed, epoch])
        seen_from = train_cameras
        if args.camera_sampling == "random":
            seen_from = random_cameras(args.cameras_per_epoch, centre, rng_epoch, avoid=eval_cameras,
                                       min_separation=args.camera_margin)
        poses_2d, poses_3d, _ = render(train_sequences, seen_from, args.input_2d, args.limb_augment,
                                       args.shoulder_augment, rng_epoch)
        return ChunkedWindows(poses_2d, poses_3d, frames, flip=True, frame_stride=args.frame_stride)

    eval_2d, eval_3d, eval_rotations = render(eval_sequences, eval_cameras, args.input_2d)
    eval_windows = ChunkedWindows(eval_2d, eval_3d, frames)
    eval_targets = torch.from_numpy(np.concatenate(eval_3d))
    if eval_rotations:  # score in camera axes: turn targets and predictions back from the ray frames
        eval_rotations = np.concatenate(eval_rotations)
        eval_targets = ray_frame_to_camera(eval_targets, eval_rotations)

    # rows of each evaluation clip in the predictions: render() goes clip by clip, camera by camera
    clip_rows = np.cumsum([0] + [len(sequence) * len(eval_cameras) for sequence in eval_sequences])

    def evaluate(model) -> dict:
        """Metrics over all evaluation frames, and per clip under "per_clip"."""
        prediction = predict(model, eval_windows, device=args.device)
        if len(eval_rotations):
            prediction = ray_frame_to_camera(prediction, eval_rotations)
        metrics = pose_metrics(prediction, eval_targets)
        metrics["per_clip"] = {name: pose_metrics(prediction[begin:end], eval_targets[begin:end])
                               for (name, _), begin, end in zip(eval_clips, clip_rows[:-1], clip_rows[1:])}
        return metrics

    optimizers = {name: torch.optim.Adam(m.parameters(), lr=args.lr, amsgrad=True) for name, m in models.items()}
    schedulers = {name: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=args.epochs, eta_min=args.lr * 0.01)
                  for name, o in optimizers.items()}
    start_epoch, history = 0, []
    if args.resume:
        if args.checkpoint is None or not args.checkpoint.is_file():
            raise SystemExit(f"error: --resume needs an existing --checkpoint, got {args.checkpoint}")
        state = load_checkpoint(args.checkpoint, map_location=args.device)
        for name in models:
            models[name].load_state_dict(state["models"][name])
            optimizers[name].load_state_dict(state["optimizers"][name])
            schedulers[name].load_state_dict(state["schedulers"][name])
        start_epoch, history = state["epoch"], state["history"]

    rng = np.random.default_rng(args.seed + start_epoch)
    if args.resume and "numpy_rng" in state:  # the random streams where the checkpoint left them: exact resume
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
    log_dir = args.log_dir or (args.checkpoint.parent if args.checkpoint is not None else None)
    log = TrainingLog(log_dir, resume=args.resume) if log_dir is not None else None
    if log is not None and args.resume:
        log.truncate(after=start_epoch)  # rows of epochs after the checkpoint are redone
    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        record = {"epoch": epoch + 1}
        windows = epoch_windows(epoch)  # fresh cameras and limb turns every epoch, the same for both models
        for name, model in models.items():
            set_bn_momentum(model, bn_momentum(epoch, args.epochs))
            with tqdm(total=len(windows), desc=f"{name} {epoch + 1}/{args.epochs}", disable=args.quiet,
                      leave=False) as bar:
                loss = train_epoch(model, windows, optimizers[name], args.batch_size, rng, args.device,
                                   progress=lambda n, value: (bar.update(n), bar.set_postfix(loss=f"{value:.4f}")))
            schedulers[name].step()
            record[f"{name}_train_mpjpe_mm"] = loss * 1000
            if args.eval_every and (epoch + 1) % args.eval_every == 0:
                metrics = evaluate(model)
                record[f"{name}_eval_mpjpe_mm"] = metrics["mpjpe"]
                record[f"{name}_eval_p_mpjpe_mm"] = metrics["p_mpjpe"]
        history.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
        if log is not None:
            log.append(record)
            log.plot(title="GLA-GCN and baseline, motion capture")
        if args.checkpoint is not None:
            save_checkpoint(args.checkpoint, {
                "epoch": epoch + 1, "history": history,
                "args": {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
                         for k, v in vars(args).items()},
                "models": {n: m.state_dict() for n, m in models.items()},
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            })
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < args.epochs:
            print(f"stopped after epoch {epoch + 1} of {args.epochs} (--stop-after); continue with --resume",
                  file=sys.stderr)
            return 0

    results, recalibrated = {}, {}
    train_windows = epoch_windows(args.epochs - 1)  # the last epoch's windows
    if args.bn_statistics == "auto":
        # Validation views: the training sequences from fresh random cameras (none near an evaluation camera).
        validation_cameras = random_cameras(4, centre, np.random.default_rng([args.seed, 1_000_003]),
                                            avoid=eval_cameras, min_separation=args.camera_margin)
        validation_2d, validation_3d, _ = render(train_sequences, validation_cameras, args.input_2d)
        validation = ChunkedWindows(validation_2d, validation_3d, frames)  # every frame: inference is cheap
        validation_targets = validation.get(np.arange(validation.num_frames))[1][:, 0]

        def validation_error(model) -> float:
            # Ray-frame and camera-frame MPJPE agree: each pose is only turned.
            return float(mpjpe(predict(model, validation, device=args.device), validation_targets))

    for name, model in models.items():
        if args.bn_statistics == "recalibrated":
            recalibrate_batch_norm(model, train_windows, batch_size=256, device=args.device)
        elif args.bn_statistics == "auto":
            recalibrated[name] = recalibrate_if_better(model, train_windows, validation_error, batch_size=256,
                                                       device=args.device)
        results[name] = evaluate(model)
    summary = {
        "mpjpe_mm": results["glagcn"]["mpjpe"],
        "p_mpjpe_mm": results["glagcn"]["p_mpjpe"],
        "n_mpjpe_mm": results["glagcn"]["n_mpjpe"],
        "baseline_mpjpe_mm": results["baseline"]["mpjpe"],
        "baseline_p_mpjpe_mm": results["baseline"]["p_mpjpe"],
        "baseline_n_mpjpe_mm": results["baseline"]["n_mpjpe"],
        "params": count_parameters(glagcn),
        "baseline_params": count_parameters(baseline),
        "channels": args.channels,
        "baseline_channels": baseline_channels,
        "receptive_field": frames,
        "input_2d": args.input_2d,
        "normalize_scale": args.normalize_scale,
        "bn_statistics": args.bn_statistics,
        "recalibrated_bn": recalibrated or {name: args.bn_statistics == "recalibrated" for name in models},
        "limb_augment": args.limb_augment,
        "shoulder_augment": args.shoulder_augment,
        "camera_sampling": args.camera_sampling,
        "epochs": args.epochs,
        "train_windows": len(train_windows),
        "eval_frames": eval_windows.num_frames,
        "train_cameras": len(train_cameras) if args.camera_sampling == "fixed" else args.cameras_per_epoch,
        "eval_cameras": len(eval_cameras),
        "seconds": round(time.time() - started, 1),
        "per_clip": {name: {"frames": len(sequence),
                            "mpjpe_mm": results["glagcn"]["per_clip"][name]["mpjpe"],
                            "p_mpjpe_mm": results["glagcn"]["per_clip"][name]["p_mpjpe"],
                            "baseline_mpjpe_mm": results["baseline"]["per_clip"][name]["mpjpe"],
                            "baseline_p_mpjpe_mm": results["baseline"]["per_clip"][name]["p_mpjpe"]}
                     for name, sequence in eval_clips},
    }
    print_summary(summary, args.json)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
