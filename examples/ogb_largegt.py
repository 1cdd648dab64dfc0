"""LargeGT mini-batch training on OGB node datasets and snap-patents, single process or DDP (torchrun).

    python examples/ogb_largegt.py --dataset ogbn-products --root DIR --K 100 --json
    torchrun --nproc_per_node 2 examples/ogb_largegt.py --epochs 2          # synthetic, gloo on CPU

* ``--dataset ogbn-products|ogbn-papers100M|ogbn-arxiv`` with ``--root`` holding the official OGB folder
  (``ogbn_products/``...): loaded through ``geoattn.data.load_ogb_node_dataset``, which fixes ogb 1.3.6's
  torch >= 2.6 reload failure ("Weights only load failed") by allow-listing the few PyG/numpy *data*
  classes in the processed file for the weights-only unpickler, instead of disabling the check
  (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``/``weights_only=False`` would allow arbitrary code).
* ``--dataset snap-patents`` with ``--root`` holding ``snap_patents.mat``: 5 year-quantile classes, seeded
  random 50/25/25 split.
* without ``--root``: a small synthetic data set is written in OGB format with ``ogb.io.DatasetSaver`` to a
  temporary folder and read back through the same OGB loader, so the real loading path runs.

The LargeGT cache (sequences + hop tokens, memory-mapped) goes to ``--cache-dir`` (default: a folder
inside ``--root``, or a temporary one for synthetic data) and is reused when its settings match.
Metric: OGB ``Evaluator`` accuracy; reported: test accuracy at the best validation accuracy. Under
torchrun, rank 0 builds the cache and writes checkpoints, batches are sharded with a
``DistributedSampler``, evaluation is sharded and all-reduced; the codebook buffers follow rank 0
(DDP broadcasts buffers every step). Collectives wait at most ``--dist-timeout`` seconds for the other
processes (a rank that died or stopped early ends the run with an error, not a hang), and the process
group is destroyed on every exit path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from geoattn.data import (LargeGTCollate, LargeGTTokens, load_ogb_node_dataset, ogb_evaluator, ogb_node_split,
                          precompute_largegt, write_synthetic_ogb_node_dataset)
from geoattn.data.snap_patents import load_snap_patents, random_split
from geoattn.io import load_checkpoint, save_checkpoint
from geoattn.models import LargeGT
from geoattn.sparse import csr_from_edge_index

DATASETS = ("synthetic", "ogbn-products", "ogbn-papers100M", "ogbn-arxiv", "snap-patents")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="synthetic")
    parser.add_argument("--root", default=None, help="dataset folder (omit for the synthetic OGB-format data set)")
    parser.add_argument("--cache-dir", default=None, help="LargeGT cache folder (sequences + hop tokens)")
    parser.add_argument("--pos-enc", default=None, help="optional .pt tensor [N, P] (e.g. node2vec) for the codebook")
    parser.add_argument("--mode", choices=["local", "global", "full"], default="full")
    parser.add_argument("--K", type=int, default=20, help="sequence length (official: 100 products, 50 patents)")
    parser.add_argument("--hidden", type=int, default=64, help="official: 256 products, 128 patents, 512 papers")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--global-channels", type=int, default=32, help="official 64 (128 papers100M)")
    parser.add_argument("--num-centroids", type=int, default=256, help="official 4096")
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256, help="per process (official 1024)")
    parser.add_argument("--eval-batch-size", type=int, default=1024)
    parser.add_argument("--token-dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--resample", action="store_true", help="fresh sequences every epoch")
    parser.add_argument("--synthetic-nodes", type=int, default=2000)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file, rewritten after every epoch")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--json", action="store_true", help="print a final JSON line (rank 0)")
    parser.add_argument("--dist-timeout", type=float, default=600.0,
                        help="seconds a DDP collective may wait for the other processes before it fails (and the "
                             "run ends with an error instead of hanging)")
    args = parser.parse_args(argv)
    if not args.dist_timeout > 0:
        parser.error(f"--dist-timeout: expected a positive number of seconds, got {args.dist_timeout}")
    return args


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_dataset(args, workdir: Path):
    """``(x, edge_index, y [N], split, evaluator_name)``."""
    if args.dataset == "snap-patents":
        x, edge_index, y = load_snap_patents(Path(args.root))
        return x, edge_index, y, random_split(x.size(0), args.seed), "ogbn-arxiv"
    rank = int(os.environ.get("RANK", "0"))
    if args.dataset == "synthetic":
        name = "ogbn-synthetic"
        root = workdir / "ogb"
        if rank == 0:
            write_synthetic_ogb_node_dataset(root, name, num_nodes=args.synthetic_nodes, seed=args.seed)
    else:
        name, root = args.dataset, Path(args.root)
    # rank 0 loads first (ogb writes processed/ on the first load), the others read its result
    dataset = load_ogb_node_dataset(name, root) if rank == 0 else None
    barrier()
    if dataset is None:
        dataset = load_ogb_node_dataset(name, root)
    data = dataset[0]
    return data.x, data.edge_index, data.y.view(-1), ogb_node_split(dataset), name


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def open_or_build_cache(args, x, edge_index, cache_dir: Path, rank: int) -> LargeGTTokens:
    wanted = {"num_nodes": x.size(0), "sequence_length": args.K, "seed": args.seed, "dtype": args.token_dtype,
              "num_features": x.size(1)}
    if rank == 0:
        try:
            cache = LargeGTTokens.open(cache_dir)
            if any(cache.meta.get(key) != value for key, value in wanted.items()):
                raise FileNotFoundError
        except (FileNotFoundError, ValueError):
            graph = csr_from_edge_index(edge_index, x.size(0))
            precompute_largegt(x, graph, cache_dir, args.K, seed=args.seed, dtype=getattr(torch, args.token_dtype),
                               progress=not args.json)
    barrier()
    return LargeGTTokens.open(cache_dir)


@torch.no_grad()
def predict(model, collate, nodes: torch.Tensor, args, device, rank: int, world: int) -> torch.Tensor:
    """Predictions for ``nodes``; each process handles a strided shard, then they are summed."""
    model.eval()
    predictions = torch.zeros(nodes.numel(), dtype=torch.long)
    positions = torch.arange(rank, nodes.numel(), world)
    for start in range(0, positions.numel(), args.eval_batch_size):
        chunk = positions[start : start + args.eval_batch_size]
        batch = collate(nodes[chunk])
        pos_enc = batch.pos_enc.to(device) if batch.pos_enc is not None else None
        logits = model(batch.tokens.to(device), node_index=batch.nodes.to(device), pos_enc=pos_enc)
        predictions[chunk] = logits.argmax(-1).cpu()
    if world > 1:
        dist.all_reduce(predictions)
    return predictions


def main(argv=None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.dataset != "synthetic" and args.root is None:
        return fail(f"--root is required for --dataset {args.dataset} (omit --dataset for the synthetic data set)")
    if args.root is not None and not Path(args.root).is_dir():
        return fail(f"--root {args.root!r} is not a folder")
    if args.resume and not (args.checkpoint and Path(args.checkpoint).is_file()):
        return fail(f"--resume needs an existing --checkpoint file, got {args.checkpoint!r}")
    if args.resume:  # read before any work; weights-only: a file from elsewhere cannot run code
        try:
            args.resume_state = load_checkpoint(args.checkpoint)
        except ValueError as error:
            return fail(f"--checkpoint: {error}")
    device = torch.device(args.device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=args.dist_timeout))
    try:
        return train(args, device, rank, world)
    finally:  # every exit path (result, error return, exception) leaves no process group behind
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def train(args, device: torch.device, rank: int, world: int) -> int:
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    verbose = rank == 0 and not args.json
    with tempfile.TemporaryDirectory(prefix="geoattn_ogb_") as tmp:
        # every rank must agree on the synthetic folder: rank 0 picks it and broadcasts it
        workdir = [tmp]
        if world > 1:
            dist.broadcast_object_list(workdir, src=0)
        workdir = Path(workdir[0])
        try:
            x, edge_index, y, split, evaluator_name = load_dataset(args, workdir)
        except (FileNotFoundError, ValueError) as error:
            return fail(str(error))
        if args.cache_dir:
            cache_dir = Path(args.cache_dir)
        elif args.root:
            cache_dir = Path(args.root) / f"largegt_cache_{args.dataset}_K{args.K}_seed{args.seed}"
        else:
            cache_dir = workdir / "largegt_cache"
        cache = open_or_build_cache(args, x, edge_index, cache_dir, rank)
        pos_enc = torch.load(args.pos_enc, weights_only=True) if args.pos_enc else None
        if pos_enc is not None and pos_enc.shape[0] != x.size(0):
            return fail(f"--pos-enc: expected {x.size(0)} rows, got {tuple(pos_enc.shape)}")
        collate = LargeGTCollate(cache, y=y, pos_enc=pos_enc, resample=args.resample, seed=args.seed)
        num_classes = int(y.max()) + 1
        model = LargeGT(x.size(1), args.hidden, num_classes, num_nodes=x.size(0), mode=args.mode, heads=args.heads,
                        global_channels=args.global_channels,
                        pos_channels=0 if pos_enc is None else pos_enc.size(1),
                        num_centroids=args.num_centroids, dropout=args.dropout).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        start_epoch, best = 0, {"valid": -1.0, "test": 0.0, "epoch": -1}
        history = []
        if args.resume:
            state = args.resume_state
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        train_model = DistributedDataParallel(model) if world > 1 else model
        sampler = DistributedSampler(split["train"], num_replicas=world, rank=rank, shuffle=True, seed=args.seed) \
            if world > 1 else None
        generator = torch.Generator().manual_seed(args.seed)
        loader = DataLoader(split["train"], batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                            collate_fn=collate, num_workers=args.num_workers, generator=generator, drop_last=False)
        evaluator = ogb_evaluator(evaluator_name)
        for epoch in range(start_epoch, args.epochs):
            started = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            generator.manual_seed(args.seed * 100_003 + epoch)  # resumed runs see the same order
            collate.set_epoch(epoch)
            train_model.train()
            total_loss, steps = 0.0, 0
            for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not verbose, leave=False):
                pos = batch.pos_enc.to(device) if batch.pos_enc is not None else None
                logits = train_model(batch.tokens.to(device), node_index=batch.nodes.to(device), pos_enc=pos)
                loss = F.cross_entropy(logits, batch.y.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss, steps = total_loss + float(loss.detach()), steps + 1
            collate.set_epoch(0)  # evaluate on the stored sequences
            scores = {}
            for name in ("valid", "test"):
                nodes = split[name]
                predicted = predict(model, collate, nodes, args, device, rank, world)
                scores[name] = evaluator.eval({"y_true": y[nodes].view(-1, 1), "y_pred": predicted.view(-1, 1)})["acc"]
            if scores["valid"] > best["valid"]:
                best = {"valid": scores["valid"], "test": scores["test"], "epoch": epoch}
            record = {"epoch": epoch, "loss": total_loss / max(steps, 1), **scores,
                      "epoch_s": time.perf_counter() - started}
            history.append(record)
            if verbose:
                print(json.dumps(record))
            if rank == 0 and args.checkpoint:
                save_checkpoint(args.checkpoint, {"epoch": epoch, "model": model.state_dict(),
                                                  "optimizer": optimizer.state_dict(), "best": best,
                                                  "history": history})
            barrier()
        result = {"dataset": args.dataset, "mode": args.mode, "world_size": world, "epochs": len(history),
                  "best_valid_acc": best["valid"], "test_acc_at_best_valid": best["test"], "best_epoch": best["epoch"],
                  "final_loss": history[-1]["loss"] if history else None}
        if rank == 0:
            print(json.dumps(result) if args.json else f"result: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
