"""Train RoITr on 3DMatch (``--root``) or, by default, on geoattn's synthetic indoor fragment pairs.

Examples::

    # synthetic data (no download), CPU-sized network, stop after 60 minutes
    python examples/train_roitr_3dmatch.py --config small --time-budget 60 --out runs/roitr.ckpt
    # 3DMatch in the Predator/GeoTransformer layout (see datasets/3dmatch.md), paper-sized network
    torchrun --nproc_per_node 4 examples/train_roitr_3dmatch.py --root data/3DMatch --config paper --device cuda

Checkpoints (model, optimiser, scheduler, step, config, random streams) are written to a temporary file and
renamed; ``--resume`` continues from ``--out`` exactly where it stopped (for a step budget; ``--time-budget``
depends on the clock). Every checkpoint also rewrites ``log.csv`` and ``curve.png`` beside ``--out``
(running losses and learning rate per checkpoint step). Under ``torchrun`` (gloo on CPU, NCCL on CUDA,
``--dist-timeout``) every process starts from rank 0's weights, walks one shared permutation of the pairs
(process r takes items r, r + world, ...) and gradients are averaged; process 0 writes and validates. ``--export PATH`` additionally writes a weights-only checkpoint
loadable with ``geoattn register --weights PATH``. Synthetic training uses seeds from
``geoattn.data.scenes.TRAIN_SEEDS``; ``--val-pairs`` held-out pairs come from ``EVAL_SEEDS``.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from geoattn.data.scenes import EVAL_SEEDS, TRAIN_SEEDS, fragment_pair
from geoattn.data.threedmatch import ThreeDMatchPairs
from geoattn.models.roitr import RoITr, RoITrConfig
from geoattn.train_log import TrainingLog
from geoattn.io import atomic_write_bytes, load_checkpoint, save_checkpoint
from geoattn.registration import (
    RoITrRegistration,
    prepare_cloud,
    relative_rotation_error,
    relative_translation_error,
    roitr_training_loss,
    save_roitr,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="3DMatch root (Predator/GeoTransformer layout); synthetic if omitted")
    parser.add_argument("--config", choices=("small", "paper"), default="small")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="training grid in metres (default: the config's voxel size)")
    parser.add_argument("--max-points", type=int, default=2048, help="points per fragment after downsampling")
    parser.add_argument("--fragment-voxel", type=float, default=None,
                        help="grid of the generated synthetic fragments before the training grid (default: the "
                             "training grid; a finer one makes the training grid cut them irregularly, as on real scans)")
    parser.add_argument("--init", type=Path, help="start from these weights (fine-tuning; the config comes with them)")
    parser.add_argument("--pairs", type=int, default=200, help="synthetic training pairs (generated once, cached)")
    parser.add_argument("--val-pairs", type=int, default=8, help="held-out synthetic pairs for validation")
    parser.add_argument("--patch-pairs", type=int, default=128,
                        help="ground-truth patch pairs per step in the transport loss (the paper: 128)")
    parser.add_argument("--steps", type=int, default=100000, help="maximum optimisation steps")
    parser.add_argument("--time-budget", type=float, default=None, help="stop after this many minutes")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--lr-decay", type=float, default=0.95, help="multiplied every --decay-every steps")
    parser.add_argument("--decay-every", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/roitr.ckpt"))
    parser.add_argument("--export", type=Path, help="also write weights-only checkpoint here at each save")
    parser.add_argument("--cache", type=Path, help="cache file of generated synthetic pairs")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dist-timeout", type=float, default=600.0,
                        help="seconds a collective may wait for the other processes before failing (torchrun)")
    parser.add_argument("--json", action="store_true", help="print a final JSON line of metrics")
    return parser.parse_args(argv)


def synthetic_pool(count: int, seeds, voxel_size: float, cache: Path | None, desc: str) -> list:
    if cache is not None and cache.is_file():
        pool = torch.load(cache, weights_only=True)
        if len(pool) >= count:
            return pool[:count]
    pool = []
    for seed in tqdm(list(seeds)[:count], desc=desc, leave=False):
        pair = fragment_pair(seed, voxel_size=voxel_size, views=2)
        pool.append({"src": pair.src, "tgt": pair.tgt, "transform": pair.transform, "seed": pair.seed})
    if cache is not None:
        buffer = io.BytesIO()
        torch.save(pool, buffer)
        atomic_write_bytes(cache, buffer.getvalue())
    return pool


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(torch.device(args.device))
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo",
                                             timeout=datetime.timedelta(seconds=args.dist_timeout))
    try:  # the process group is torn down on every way out, errors included
        return run(args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args) -> int:
    distributed = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    config = RoITrConfig.small() if args.config == "small" else RoITrConfig()
    initial = None
    if args.init is not None:
        if not args.init.is_file():
            print(f"--init: no checkpoint at {args.init}", file=sys.stderr)
            return 2
        initial = torch.load(args.init, map_location="cpu", weights_only=True)
        config = RoITrConfig(**initial["config"])
    voxel = args.voxel_size or config.voxel_size
    if args.voxel_size:
        config = RoITrConfig(**{**config.to_dict(), "voxel_size": voxel})
    model = RoITr(config)
    if initial is not None:
        model.load_state_dict(initial["state_dict"])
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.decay_every, args.lr_decay)
    # one permutation of the training items shared by all processes; patch sampling per process
    generator = torch.Generator().manual_seed(args.seed + rank)
    step, elapsed, state = 0, 0.0, None
    if args.resume:
        if not args.out.is_file():
            print(f"--resume: no checkpoint at {args.out}", file=sys.stderr)
            return 2
        state = load_checkpoint(args.out, map_location=device)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed = state["step"], state.get("elapsed", 0.0)
        if "generator" in state and len(state["generator"]) == world:  # exact continuation (same world size)
            generator.set_state(state["generator"][rank].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
    if distributed:  # every process starts from rank 0's weights
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)

    def average_gradients() -> None:
        # Data parallelism by explicit all-reduce: the transport layer is used by the loss outside the
        # network's forward, which DistributedDataParallel's per-forward bookkeeping does not allow.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for param, grad in zip(model.parameters(), grads):
            param.grad = flat[offset:offset + grad.numel()].view_as(param).clone()
            offset += grad.numel()

    if args.root is not None:
        if not args.root.is_dir():
            print(f"--root: {args.root} is not a folder; see datasets/3dmatch.md for the expected layout",
                  file=sys.stderr)
            return 2
        dataset = ThreeDMatchPairs(args.root, "train")

        def get_pair(index: int):
            src, tgt, transform, _ = dataset[index % len(dataset)]
            return src, tgt, transform
        num_items = len(dataset)
    else:
        pool = synthetic_pool(args.pairs, TRAIN_SEEDS, args.fragment_voxel or voxel, args.cache,
                              "generating synthetic pairs")

        def get_pair(index: int):
            item = pool[index % len(pool)]
            return item["src"], item["tgt"], item["transform"]
        num_items = len(pool)
    val_cache = args.cache.with_suffix(".val.pt") if args.cache is not None else None
    validation = (synthetic_pool(args.val_pairs, EVAL_SEEDS, args.fragment_voxel or voxel, val_cache, "validation pairs")
                  if rank == 0 else [])

    log = TrainingLog(args.out.parent, resume=args.resume, x="step") if rank == 0 else None
    if log is not None:
        log.truncate(after=step)  # rows past the checkpoint are redone
    running: dict[str, float] = dict(state.get("running", {})) if state is not None else {}

    def save() -> None:
        generators = [generator.get_state()]
        if distributed:  # every process's patch-sampling stream, for an exact --resume
            generators = [None] * world
            torch.distributed.all_gather_object(generators, generator.get_state())
        if rank != 0:
            return
        save_checkpoint(args.out, {"config": config.to_dict(), "state_dict": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "step": step, "elapsed": elapsed, "generator": generators,
                                   "torch_rng": torch.get_rng_state(), "running": running})
        if args.export:
            save_roitr(model, args.export, meta={"steps": step, "train_minutes": round(elapsed / 60, 1),
                                                 "data": "synthetic" if args.root is None else str(args.root.name),
                                                 "voxel_size": voxel, "max_points": args.max_points,
                                                 "fragment_voxel": args.fragment_voxel or voxel,
                                                 "init": args.init.name if args.init else None})
        if running and (not log.rows or float(log.rows[-1]["step"]) < step):
            log.append({"step": step, **{key: round(value, 6) for key, value in running.items()},
                        "lr": optimizer.param_groups[0]["lr"], "minutes": round(elapsed / 60, 2)})
            log.plot(title="RoITr training")

    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter() - elapsed
    progress = tqdm(total=args.steps, initial=step, desc="train", disable=rank != 0, dynamic_ncols=True)
    model.train()
    while step < args.steps:
        elapsed = time.perf_counter() - start
        if args.time_budget is not None:
            over = torch.tensor([float(elapsed > args.time_budget * 60)])
            if distributed:  # the processes stop at the same step (rank 0's clock decides)
                torch.distributed.broadcast(over, src=0)
            if over.item():
                break
        index = int(order[(step * world + rank) % num_items])
        src, tgt, transform = get_pair(index)
        seed = args.seed + step
        src_pos, src_normal = prepare_cloud(src.to(device), voxel, 1.0, args.max_points, seed=seed)
        tgt_pos, tgt_normal = prepare_cloud(tgt.to(device), voxel, 1.0, args.max_points, seed=seed + 1)
        output = model(src_pos, src_normal, tgt_pos, tgt_normal)
        losses = roitr_training_loss(model, output, transform.to(device), max_patch_pairs=args.patch_pairs,
                                     generator=generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if distributed:
            average_gradients()
        optimizer.step()
        scheduler.step()
        step += 1
        for key, value in losses.items():
            value = float(value.detach())
            running[key] = 0.9 * running.get(key, value) + 0.1 * value
        progress.update(1)
        progress.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        if step % args.checkpoint_every == 0:
            elapsed = time.perf_counter() - start
            save()
    progress.close()
    elapsed = time.perf_counter() - start
    save()

    metrics = {"steps": step, "minutes": round(elapsed / 60, 2), **{k: round(v, 4) for k, v in running.items()}}
    if rank == 0 and validation:
        model.eval()
        pipeline = RoITrRegistration(model, voxel_size=voxel, max_points=args.max_points)
        successes, rre_values, rte_values = 0, [], []
        for item in validation:
            result = pipeline(item["src"], item["tgt"])
            rre = float(relative_rotation_error(result.transform, item["transform"].double()))
            rte = float(relative_translation_error(result.transform, item["transform"].double()))
            rre_values.append(rre)
            rte_values.append(rte)
            successes += rre < 15 and rte < 0.3
        metrics.update({"val_pairs": len(validation), "val_success": successes,
                        "val_median_rre": sorted(rre_values)[len(rre_values) // 2],
                        "val_median_rte": sorted(rte_values)[len(rte_values) // 2]})
    if rank == 0:
        print(json.dumps({**metrics, "world_size": world}) if args.json else metrics)
    return 0 if math.isfinite(metrics.get("loss", 0.0)) else 1


if __name__ == "__main__":
    sys.exit(main())
