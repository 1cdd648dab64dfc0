"""Train and score the ScatterFormer / CenterPoint detector on KITTI, Waymo or synthetic KITTI scenes.

Examples::

    # synthetic KITTI scenes (generated once into --out/synthetic), CPU, at most 60 minutes of training
    python examples/train_detector.py --config kitti_scatterformer --synthetic 600 --max-minutes 60 --out runs/kitti
    # a KITTI object folder (training/{velodyne,calib,label_2,image_2}, ImageSets/{train,val}.txt)
    python examples/train_detector.py --config kitti_scatterformer --data-root data/kitti --out runs/kitti
    # OpenPCDet's processed Waymo data, 8 GPUs (the official recipe; the one-cycle schedule counts per-GPU steps)
    torchrun --nproc_per_node 8 examples/train_detector.py --config waymo_scatterformer --data-root data/waymo --device cuda --out runs/waymo
    # score a checkpoint; the last line is the metric object
    python examples/train_detector.py --eval-only --checkpoint runs/kitti/checkpoint.pt --data-root data/kitti --json

``--out`` receives ``checkpoint.pt`` (model, optimiser with its one-cycle position, AMP scaler, epoch,
iteration, elapsed time and the config; rewritten atomically after every epoch and when ``--max-minutes``
stops the run; ``--resume`` continues from it, mid-epoch if need be; after the last epoch the BatchNorm
statistics are recomputed over ``--bn-batches`` training batches and saved in it), ``log.csv`` and ``curve.png`` (per-epoch
loss, learning rate, metrics), and after the final evaluation ``predictions/<frame>.txt`` (KITTI label format
with scores) or ``predictions_waymo.pt``. ``--max-minutes`` stops training cleanly after the budget while the
learning-rate schedule stays the one planned for ``--epochs`` full epochs. GT sampling (when the config has
it) is switched off for the last ``NUM_EPOCHS_NO_GT_SAMPLING`` epochs; a missing KITTI GT database is built
first. Under ``torchrun`` the processes use gloo on CPU and NCCL on CUDA, each process reads its shard of every
epoch, and on CUDA BatchNorm becomes SyncBatchNorm (torch's SyncBatchNorm has no CPU kernel, so CPU processes
keep per-process batch statistics; DDP broadcasts rank 0's running statistics every step); AMP (float16 autocast + GradScaler) is used on CUDA only.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from geoattn.detection.config import load_config
from geoattn.detection.dataset import build_dataset, collate_detection
from geoattn.detection.optim import build_optimizer
from geoattn.detection.postprocess import CenterHeadPostProcessor
from geoattn.detection.training import (DEFAULT_CHECKPOINT, DetectionCriterion, EpochSampler,
                                        build_detector_from_config, checkpoint_state, distributed_info,
                                        evaluate_predictions, export_detector, gather_objects, kitti_annotations, load_detector,
                                        predict, recompute_batchnorm_statistics, train_one_epoch, unwrap,
                                        write_kitti_predictions)
from geoattn.detection.config import point_cloud_range, voxel_size
from geoattn.io import load_checkpoint, save_checkpoint
from geoattn.train_log import TrainingLog


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="kitti_scatterformer | waymo_scatterformer | PATH.yaml (default: kitti_scatterformer; "
                             "with --eval-only the checkpoint's own config)")
    parser.add_argument("--data-root", type=Path, help="KITTI object folder or processed Waymo root")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="generate N synthetic KITTI scenes into --out/synthetic and train on them")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("--out", type=Path, default=Path("runs/detector"))
    parser.add_argument("--epochs", type=int, help="default: OPTIMIZATION.NUM_EPOCHS")
    parser.add_argument("--batch-size", type=int, help="per process; default: OPTIMIZATION.BATCH_SIZE_PER_GPU")
    parser.add_argument("--lr", type=float, help="peak one-cycle LR; default: OPTIMIZATION.LR")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--max-minutes", type=float, help="stop training after this many minutes (then evaluate)")
    parser.add_argument("--stop-after", type=int, metavar="K",
                        help="stop training after K iterations of this run, as --max-minutes does (smoke runs)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--eval-split", default=None, help="split to score (default: DATA_SPLIT.test)")
    parser.add_argument("--eval-only", action="store_true", help="score --checkpoint on --data-root and exit")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"checkpoint for --eval-only (default: the shipped {DEFAULT_CHECKPOINT.name})")
    parser.add_argument("--export", type=Path, default=None,
                        help="with --eval-only: first write a compact float16 copy of --checkpoint (weights + config, "
                             "no optimiser) here, then score that copy")
    parser.add_argument("--bn-batches", type=int, default=32, metavar="N",
                        help="after training, recompute BatchNorm statistics over N training batches (0: keep the "
                             "running averages)")
    parser.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                        help="seconds a collective may wait under torchrun before the run fails (no hang)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--json", action="store_true", help="print the final result as one JSON line (rank 0)")
    return parser.parse_args(argv)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def make_loader(dataset, batch_size: int, workers: int, sampler) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_detection, pin_memory=False, drop_last=False)


def gt_sampling_entry(data_cfg: dict):
    augmentor = data_cfg.get("DATA_AUGMENTOR") or {}
    disabled = augmentor.get("DISABLE_AUG_LIST") or []
    for entry in augmentor.get("AUG_CONFIG_LIST") or []:
        if entry.get("NAME") == "gt_sampling" and "gt_sampling" not in disabled:
            return entry
    return None


def without_gt_sampling(data_cfg: dict) -> dict:
    data_cfg = copy.deepcopy(data_cfg)
    augmentor = data_cfg.setdefault("DATA_AUGMENTOR", {"AUG_CONFIG_LIST": []})
    augmentor["DISABLE_AUG_LIST"] = list(augmentor.get("DISABLE_AUG_LIST") or []) + ["gt_sampling"]
    return data_cfg


def ensure_gt_database(config: dict, root: Path, train_split: str, verbose: bool) -> None:
    """Build the KITTI GT database named by gt_sampling's DB_INFO_PATH when it is missing (rank 0)."""
    entry = gt_sampling_entry(config["DATA_CONFIG"])
    if entry is None:
        return
    paths = entry.get("DB_INFO_PATH") or []
    paths = [paths] if isinstance(paths, str) else list(paths)
    missing = [p for p in paths if not (Path(p) if Path(p).is_absolute() else root / p).exists()]
    if not missing:
        return
    if config["DATA_CONFIG"]["DATASET"] != "KittiDataset":
        raise FileNotFoundError(f"GT database {missing} not found under {root}; create it with OpenPCDet's Waymo "
                                "preprocessing (only KITTI databases are built here)")
    from geoattn.detection.gt_database import create_gt_database

    expected = f"kitti_dbinfos_{train_split}.pkl"
    if missing != [expected]:
        raise FileNotFoundError(f"GT database {missing} not found under {root} (this script builds {expected}; "
                                "run `geoattn create-gt-database` for other names)")
    if verbose:
        print(f"building the GT database {root / expected}", file=sys.stderr)
    create_gt_database(root, split=train_split, progress=verbose, overwrite=True,
                       num_point_features=int(entry.get("NUM_POINT_FEATURES", 4)))


def evaluate(model, config: dict, root: Path, split: str, args, device, amp: bool, out_dir: Path | None,
             verbose: bool) -> dict:
    """Predictions over ``split`` (sharded over ranks, gathered), written under ``out_dir``, and the metric."""
    rank, world = distributed_info()
    dataset = build_dataset(config["DATA_CONFIG"], config["CLASS_NAMES"], root, split, training=False,
                            seed=args.seed)
    sampler = EpochSampler(len(dataset), shuffle=False, rank=rank, world_size=world, pad=False)
    batch_size = args.batch_size or int(config["OPTIMIZATION"]["BATCH_SIZE_PER_GPU"])
    loader = make_loader(dataset, batch_size, args.workers, sampler)
    post = CenterHeadPostProcessor.from_config(config["MODEL"]["DENSE_HEAD"], point_cloud_range(config),
                                               voxel_size(config))
    predictions = predict(model, loader, post, device, amp=amp, progress=verbose)
    predictions = [{**p, "order": i} for p, i in zip(predictions, sampler)]
    predictions = gather_objects(predictions)
    predictions.sort(key=lambda p: p["order"])
    metric = str(config["MODEL"].get("POST_PROCESSING", {}).get("EVAL_METRIC", "kitti")).lower()
    if rank != 0:
        return {}
    detections = None
    if metric == "kitti":
        detections = kitti_annotations(predictions, config["CLASS_NAMES"])
        if out_dir is not None:
            write_kitti_predictions(predictions, detections, out_dir / "predictions")
    elif out_dir is not None:
        save_checkpoint(out_dir / "predictions_waymo.pt",
                        {"frames": [{k: p[k] for k in ("frame_id", "boxes", "scores", "labels")} for p in predictions]})
    return evaluate_predictions(predictions, config, dataset=dataset, detections=detections)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: CUDA is not available")
    if world > 1 and not torch.distributed.is_initialized():
        if not args.dist_timeout > 0:
            return fail(f"--dist-timeout: expected a positive number of seconds, got {args.dist_timeout}")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=args.dist_timeout))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    rank, world = distributed_info()
    verbose = rank == 0 and not args.json
    try:
        return run(args, device, rank, world, verbose)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args, device: torch.device, rank: int, world: int, verbose: bool) -> int:
    amp = device.type == "cuda" and not args.no_amp
    for name in ("epochs", "batch_size", "synthetic", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return fail(f"--{name.replace('_', '-')}: expected a positive int, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        return fail(f"--lr: expected a positive number, got {args.lr}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        return fail(f"--max-minutes: expected a positive number, got {args.max_minutes}")

    # ---- data root -------------------------------------------------------------------------------------
    if args.synthetic is not None and args.data_root is not None:
        return fail("give --data-root or --synthetic N, not both")
    if args.synthetic is not None:
        root = args.out / "synthetic"
        if rank == 0:
            from geoattn.detection.synthetic import write_synthetic_kitti

            write_synthetic_kitti(root, args.synthetic, seed=args.synthetic_seed, progress=verbose)
        barrier()
    elif args.data_root is not None:
        root = args.data_root
        if not root.is_dir():
            return fail(f"--data-root: no such folder {root}")
    else:
        return fail("--data-root DIR or --synthetic N is required")

    # ---- evaluation only -------------------------------------------------------------------------------
    if args.eval_only:
        checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
        if not checkpoint.is_file():
            return fail(f"--checkpoint: no such file {checkpoint}")
        try:
            if args.export is not None:
                if rank == 0:
                    export_detector(checkpoint, args.export)
                barrier()
                checkpoint = args.export
            wanted = load_config(args.config) if args.config else None
            model, config, _ = load_detector(checkpoint, wanted, map_location="cpu")
        except (FileNotFoundError, ValueError) as error:
            return fail(str(error))
        model.to(device)
        split = args.eval_split or config["DATA_CONFIG"].get("DATA_SPLIT", {}).get("test", "val")
        try:
            metrics = evaluate(model, config, root, split, args, device, amp, None, verbose)
        except (FileNotFoundError, ValueError) as error:
            return fail(str(error))
        if rank == 0:
            if not args.json:
                from geoattn.detection.kitti_eval import format_kitti_table

                if any(key.endswith("_R40") for key in metrics):
                    print(format_kitti_table({k: v for k, v in metrics.items() if k != "frames"}))
            print(json.dumps(metrics))
        return 0

    # ---- configuration ---------------------------------------------------------------------------------
    try:
        config = load_config(args.config or "kitti_scatterformer")
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    optimization = config["OPTIMIZATION"]
    if args.epochs is not None:
        optimization["NUM_EPOCHS"] = args.epochs
        optimization["NUM_EPOCHS_NO_GT_SAMPLING"] = min(int(optimization["NUM_EPOCHS_NO_GT_SAMPLING"]), args.epochs)
    if args.batch_size is not None:
        optimization["BATCH_SIZE_PER_GPU"] = args.batch_size
    if args.lr is not None:
        optimization["LR"] = args.lr
    epochs = int(optimization["NUM_EPOCHS"])
    no_gt_epochs = int(optimization["NUM_EPOCHS_NO_GT_SAMPLING"])
    batch_size = int(optimization["BATCH_SIZE_PER_GPU"])
    checkpoint_path = args.out / "checkpoint.pt"
    resume_state = None
    if args.resume:
        if not checkpoint_path.is_file():
            return fail(f"--resume: no checkpoint at {checkpoint_path}")
        try:
            resume_state = load_checkpoint(checkpoint_path, map_location="cpu")
        except ValueError as error:
            return fail(str(error))
        from geoattn.detection.config import check_same_model

        try:
            check_same_model(resume_state["config"], config, source=str(checkpoint_path))
        except (KeyError, ValueError) as error:
            return fail(f"--resume: {error}")
        saved_opt = resume_state["config"]["OPTIMIZATION"]
        for key in ("NUM_EPOCHS", "BATCH_SIZE_PER_GPU", "LR"):  # the schedule must stay the planned one
            if saved_opt.get(key) != optimization[key]:
                return fail(f"--resume: OPTIMIZATION.{key} is {optimization[key]!r}, the checkpoint was trained "
                            f"with {saved_opt.get(key)!r}")
    torch.manual_seed(args.seed)

    # ---- datasets --------------------------------------------------------------------------------------
    splits = config["DATA_CONFIG"].get("DATA_SPLIT", {}) or {}
    train_split = str(splits.get("train", "train"))
    uses_gt_sampling = gt_sampling_entry(config["DATA_CONFIG"]) is not None and no_gt_epochs < epochs
    data_cfg = config["DATA_CONFIG"] if uses_gt_sampling else without_gt_sampling(config["DATA_CONFIG"])
    try:
        if rank == 0 and uses_gt_sampling:
            ensure_gt_database(config, root, train_split, verbose)
        barrier()
        train_set = build_dataset(data_cfg, config["CLASS_NAMES"], root, "train", training=True, seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    if len(train_set) == 0:
        return fail(f"the training split {train_split!r} of {root} is empty")
    sampler = EpochSampler(len(train_set), shuffle=True, seed=args.seed, rank=rank, world_size=world)
    iterations_per_epoch = math.ceil(sampler.per_rank() / batch_size)
    total_iterations = iterations_per_epoch * epochs

    # ---- model, optimiser ------------------------------------------------------------------------------
    model = build_detector_from_config(config)
    if world > 1 and device.type == "cuda":  # torch's SyncBatchNorm runs on CUDA only; gloo/CPU keeps per-process BN
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], optimization, total_iterations)
    scaler = torch.amp.GradScaler("cuda", init_scale=float(optimization.get("LOSS_SCALE_FP16", 2.0 ** 16)),
                                  enabled=amp)
    start_epoch, iteration, elapsed = 0, 0, 0.0
    log = TrainingLog(args.out, resume=args.resume)
    if resume_state is not None:
        unwrap(model).load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if "scaler" in resume_state and amp:
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch, iteration = int(resume_state["epoch"]), int(resume_state["iteration"])
        elapsed = float(resume_state.get("elapsed", 0.0))
        if rank == 0:  # rows of iterations after the checkpoint (a crash before the next save) go
            log.truncate(after=round(iteration / iterations_per_epoch, 3) + 1e-9)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
    criterion = DetectionCriterion(config)
    grad_clip = float(optimization.get("GRAD_NORM_CLIP", 0) or 0)

    # ---- training --------------------------------------------------------------------------------------
    started = time.monotonic() - elapsed
    deadline = started + args.max_minutes * 60 if args.max_minutes else None
    stopped = False
    first_iteration = iteration
    last: dict = {}
    epoch_bar = None
    if verbose:
        from tqdm.auto import tqdm

        epoch_bar = tqdm(total=epochs, initial=start_epoch, desc="epochs", dynamic_ncols=True)
    epoch = start_epoch
    while epoch < epochs:
        skip_batches = iteration - epoch * iterations_per_epoch
        if skip_batches >= iterations_per_epoch:  # the saved iteration already finished this epoch
            epoch += 1
            continue
        sampler.set_epoch(epoch, skip=max(0, skip_batches) * batch_size)
        train_set.set_epoch(epoch)
        if epoch >= epochs - no_gt_epochs:
            train_set.disable_gt_sampling()
        loader = make_loader(train_set, batch_size, args.workers, sampler)
        max_iterations = None
        if args.stop_after is not None:
            max_iterations = args.stop_after - (iteration - first_iteration)
            if max_iterations <= 0:
                stopped = True
                break
        last = train_one_epoch(train_model, loader, optimizer, criterion, device=device, iteration=iteration,
                               grad_norm_clip=grad_clip, scaler=scaler, amp=amp, deadline=deadline,
                               max_iterations=max_iterations,
                               progress=verbose, description=f"epoch {epoch + 1}/{epochs}")
        iteration = last["iteration"]
        stopped = last["stopped"]
        finished = not stopped
        completed = epoch + 1 if finished else epoch
        elapsed = time.monotonic() - started
        if rank == 0:
            save_checkpoint(checkpoint_path, checkpoint_state(
                model, optimizer, scaler, epoch=completed, iteration=iteration, elapsed=elapsed,
                planned_iterations=total_iterations, world_size=world, seed=args.seed,
                data=("synthetic" if args.synthetic else str(root))), config)
            if last["iterations"] > 0:
                row = {"epoch": epoch + 1 if finished else round(epoch + last["iterations"] / iterations_per_epoch, 3),
                       "iteration": iteration, "minutes": round(elapsed / 60, 3), "lr": last["lr"],
                       "loss": last.get("loss"), **{k: v for k, v in last.items() if k.endswith("loss")
                                                    and k != "loss"},
                       "grad_norm": last.get("grad_norm"),
                       "s_per_iteration": last["seconds"] / max(last["iterations"], 1)}
                log.append(row)
                log.plot(title=f"{args.config or 'kitti_scatterformer'}: training")
        barrier()
        if epoch_bar is not None:
            epoch_bar.update(1 if finished else 0)
            epoch_bar.set_postfix(loss=f"{last.get('loss', float('nan')):.3f}")
        if stopped:
            if verbose:
                print(f"--max-minutes {args.max_minutes}: stopped at iteration {iteration} of {total_iterations}",
                      file=sys.stderr)
            break
        epoch += 1
    if epoch_bar is not None:
        epoch_bar.close()
    # Exact BN statistics for the final weights (the running averages lag them; see
    # recompute_batchnorm_statistics). Not after a --stop-after smoke stop, which a --resume continues.
    if iteration > first_iteration and args.bn_batches > 0 and not (stopped and args.stop_after is not None):
        sampler.set_epoch(epochs)  # one fixed order past the schedule: a resumed run recomputes the same
        train_set.set_epoch(epochs)
        used = recompute_batchnorm_statistics(model, make_loader(train_set, batch_size, args.workers, sampler),
                                              device, args.bn_batches, progress=verbose)
        if rank == 0:
            save_checkpoint(checkpoint_path, checkpoint_state(
                model, optimizer, scaler, epoch=completed, iteration=iteration, elapsed=time.monotonic() - started,
                planned_iterations=total_iterations, world_size=world, seed=args.seed,
                data=("synthetic" if args.synthetic else str(root)), bn_batches=used), config)
        barrier()

    # ---- evaluation ------------------------------------------------------------------------------------
    result = {"config": args.config or "kitti_scatterformer", "world_size": world, "epochs": epochs,
              "iteration": iteration, "planned_iterations": total_iterations, "stopped_early": stopped,
              "minutes": round((time.monotonic() - started) / 60, 3), "loss": last.get("loss"),
              "s_per_iteration": (last["seconds"] / last["iterations"]) if last.get("iterations") else None,
              "checkpoint": str(checkpoint_path)}
    if not args.no_eval:
        split = args.eval_split or str(splits.get("test", "val"))
        try:
            metrics = evaluate(model, config, root, split, args, device, amp, args.out, verbose)
        except (FileNotFoundError, ValueError) as error:
            if rank == 0:
                print(f"evaluation skipped: {error}", file=sys.stderr)
            metrics = {}
        if rank == 0 and metrics:
            result["metrics"] = metrics
            keys = [k for k in metrics if k.endswith("3d/moderate_R40") or k.endswith("L2 mAPH")]
            log.append({"epoch": log.rows[-1]["epoch"] if log.rows else 0, **{k: metrics[k] for k in keys}})
            log.plot(title=f"{result['config']}: training")
    if rank == 0:
        print(json.dumps(result) if args.json else f"result: {json.dumps(result)}")
    loss = result["loss"]
    return 0 if loss is None or math.isfinite(loss) else 1


if __name__ == "__main__":
    sys.exit(main())
