"""Local augmentation (LAGNN) on ogbn-arxiv with LA-GCN / LA-SAGE (full-batch, the paper's OGB protocol).

    python examples/ogbn_arxiv_lagnn.py --root DATA/ogb --model sage --runs 10 --json

``--root`` is the folder that holds ``ogbn_arxiv/`` as OGB lays it out (download it from
https://ogb.stanford.edu). Without ``--root`` a small synthetic data set is written in the OGB format
with ``ogb.io.DatasetSaver`` to a temporary folder and loaded through the same path, so the script
runs offline in a few seconds. Loading works under torch >= 2.6 (see ``geoattn.data.ogb``).

Each run trains for ``--epochs`` epochs and reports the test accuracy (OGB Evaluator) of the epoch with
the best validation accuracy; the generator (``variant="ogb"``: batch norm, tanh, MSE) is fitted on the
symmetrised graph by each run with the run's seed (``--generator-seed S``: one generator fitted with seed S
shared by all runs) and can be kept with ``--generator PATH`` (``{seed}`` in PATH: one file per seed; a file
is reused only when it records the same fit). The same command gives the same numbers on one machine and
thread count, and run r of ``--seed 0`` is ``--seed r`` alone.

Under ``torchrun`` (gloo on CPU, NCCL on CUDA, ``--dist-timeout``) the runs are shared out: process k trains
runs k, k + world, ... (full-batch training of one graph does not split further), and process 0 records
every finished run in ``--checkpoint``. ``--resume`` skips the recorded runs and continues an interrupted
run from its last state (``<checkpoint>.seed<S>.pt``, written every ``--save-every`` epochs with the random
streams, so the run ends as it would have). ``--out DIR`` writes ``DIR/seed_<S>/log.csv`` and ``curve.png``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_geometric.utils import to_undirected
from tqdm.auto import tqdm

from geoattn.data import load_ogb_node_dataset, ogb_evaluator, ogb_node_split, write_synthetic_ogb_node_dataset
from geoattn.models import LAGCN, LASAGE
from geoattn.nn import LocalAugmenter, consistency_loss
from geoattn.io import atomic_write_bytes, load_checkpoint, save_checkpoint
from geoattn.train_log import TrainingLog

SAMPLES = {"gcn": 2, "sage": 4}  # K of the paper (Table 11)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", default=None, help="OGB root holding ogbn_arxiv/ (default: synthetic data)")
    parser.add_argument("--name", default="ogbn-arxiv", help="OGB data set name")
    parser.add_argument("--model", default="gcn", choices=["gcn", "sage"])
    parser.add_argument("--no-la", action="store_true", help="train the plain backbone (baseline)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=128, help="width of each first-layer branch")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=None, help="K per step (default: 2 for gcn, 4 for sage)")
    parser.add_argument("--consistency-weight", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--generator", default=None,
                        help="fitted LocalAugmenter path, fitted and written when missing ('{seed}': one file per "
                             "generator seed); reused only when it records the same fit")
    parser.add_argument("--generator-seed", type=int, default=None,
                        help="default: each run fits its own generator with its seed; given: one shared generator")
    parser.add_argument("--generator-steps", type=int, default=20,
                        help="optimiser steps of generator fitting (the official arxiv script stops at 20)")
    parser.add_argument("--generator-lr", type=float, default=1e-5)
    parser.add_argument("--synthetic-nodes", type=int, default=1500)
    parser.add_argument("--synthetic-seed", type=int, default=0,
                        help="seed of the synthetic data set (fixed: --seed only changes the runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="file recording finished runs (atomic writes)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the runs recorded in --checkpoint and continue an interrupted one")
    parser.add_argument("--save-every", type=int, default=50, help="epochs between the states of a run in progress")
    parser.add_argument("--out", default=None, help="folder of the per-run logs (OUT/seed_<S>/log.csv, curve.png)")
    parser.add_argument("--dist-timeout", type=float, default=600.0,
                        help="seconds a collective may wait for the other processes before failing (torchrun)")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def build_model(args, num_features, num_classes, la):
    cls = LAGCN if args.model == "gcn" else LASAGE
    # a baseline gets the LA model's total first-layer width: one branch of (G + 1) * hidden
    hidden = args.hidden if la else 2 * args.hidden
    return cls(num_features, hidden, num_classes, num_generated=1 if la else 0, num_layers=args.layers,
               dropout=args.dropout, input_dropout=0.0, batch_norm=True)


def run_state_path(args, seed: int) -> Path | None:
    return Path(f"{args.checkpoint}.seed{seed}.pt") if args.checkpoint else None


def train_run(args, data, split, evaluator, augmenter, seed, device, la, log=None):
    """One run from ``seed``; continues from its saved state with --resume; ``log``: optional TrainingLog."""
    torch.manual_seed(seed)
    num_classes = int(data.y.max()) + 1
    model = build_model(args, data.x.size(1), num_classes, la).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, edge_index, y = data.x, data.edge_index, data.y.view(-1)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    samples = (args.samples or SAMPLES[args.model]) if la else 1

    # the decoder's centre term is computed once per run; each call decodes fresh noise
    draw = augmenter.sampler(x, generator=generator) if la else None

    def generated():
        return [draw()] if la else None

    best = {"valid_acc": -1.0, "test_acc": 0.0, "epoch": -1}
    start = 0
    state_path = run_state_path(args, seed)
    if args.resume and state_path is not None and state_path.is_file():
        state = load_checkpoint(state_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = state["epoch"], state["best"]
        torch.set_rng_state(state["torch_rng"].cpu())
        generator.set_state(state["generator"].cpu())
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    if log is not None:
        log.truncate(after=start)
    for epoch in tqdm(range(start, args.epochs), desc=f"run seed={seed}", disable=args.quiet, leave=False):
        model.train()
        optimizer.zero_grad()
        log_probs = [F.log_softmax(model(x, edge_index, generated()), dim=-1) for _ in range(samples)]
        loss = torch.stack([F.nll_loss(lp[split["train"]], y[split["train"]]) for lp in log_probs]).mean()
        if la and samples > 1 and args.consistency_weight > 0:
            loss = loss + args.consistency_weight * consistency_loss(log_probs, args.temperature)
        loss.backward()
        optimizer.step()

        model.eval()
        with torch.no_grad():
            prediction = model(x, edge_index, generated()).argmax(dim=-1, keepdim=True)
        scores = {key: evaluator.eval({"y_true": data.y[split[key]], "y_pred": prediction[split[key]]})["acc"]
                  for key in ("valid", "test")}
        if scores["valid"] > best["valid_acc"]:
            best = {"valid_acc": scores["valid"], "test_acc": scores["test"], "epoch": epoch}
        if log is not None:
            log.rows.append({"epoch": epoch + 1, "loss": float(loss.detach()), "valid_acc": scores["valid"]})
        if state_path is not None and (epoch + 1) % args.save_every == 0 and epoch + 1 < args.epochs:
            state = {"epoch": epoch + 1, "best": best, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                     "generator": generator.get_state()}
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            if log is not None:  # first: rows past a state are dropped on resume, missing rows are not redone
                log.write()
            save_checkpoint(state_path, state)
    if log is not None and log.rows:
        log.write()
        log.plot(title=f"{'LA-' if la else ''}{args.model.upper()} {args.name}, seed {seed}")
    return best


def generator_record(args, seed: int) -> dict:
    """Everything a generator fit depends on; a --generator file is reused only when it records the same."""
    return {"name": args.name if args.root else f"synthetic-{args.synthetic_nodes}-{args.synthetic_seed}",
            "seed": seed,
            "steps": args.generator_steps, "lr": args.generator_lr}


def fit_generator(args, data, device, seed: int):
    """The generator of ``seed`` (read from --generator when recorded with the same fit, else fitted from
    seeded initial weights and written there); returns (augmenter, seconds spent fitting)."""
    record = generator_record(args, seed)
    path = Path(args.generator.replace("{seed}", str(seed))) if args.generator else None
    if path is not None and path.is_file():
        augmenter = LocalAugmenter.load(path, map_location=device)
        if augmenter.metadata != record:
            raise ValueError(f"--generator: {path} records the fit {augmenter.metadata or '(none)'}, this run needs "
                             f"{record}; remove the file to refit it, or name the path with {{seed}}")
        return augmenter, 0.0
    start = time.perf_counter()
    torch.manual_seed(seed)
    augmenter = LocalAugmenter(data.x.size(1), variant="ogb").to(device)
    augmenter.fit(data.x, data.edge_index, epochs=100, max_steps=args.generator_steps, lr=args.generator_lr,
                  seed=seed, progress=not args.quiet)
    augmenter.metadata = record
    if path is not None:
        augmenter.save(path, metadata=record)
    return augmenter, time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
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


def run(args, device: torch.device) -> dict:
    distributed = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    for name in ("runs", "epochs", "save_every"):
        if getattr(args, name) < (0 if name == "runs" else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    la = not args.no_la
    with tempfile.TemporaryDirectory(prefix="ogbn_lagnn_") as workdir:
        if args.root is None:
            name = "ogbn-synthetic"
            root = write_synthetic_ogb_node_dataset(Path(workdir) / "synthetic", name,
                                                    num_nodes=args.synthetic_nodes, seed=args.synthetic_seed)
        else:
            name, root = args.name, Path(args.root)
        dataset = load_ogb_node_dataset(name, root)
        data = dataset[0]
        split = ogb_node_split(dataset)
    evaluator = ogb_evaluator(name)
    # arxiv is a directed citation graph; the paper's models (and its generator) use it symmetrised.
    data.edge_index = to_undirected(data.edge_index, num_nodes=data.num_nodes)
    data = data.to(device)
    split = {key: value.to(device) for key, value in split.items()}

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    runs = []
    if args.resume and checkpoint is not None and checkpoint.is_file():
        runs = json.loads(checkpoint.read_text())["runs"]

    def generator_seed(run: int) -> int:
        return args.generator_seed if args.generator_seed is not None else args.seed + run

    if la and args.generator and "{seed}" not in args.generator and \
            len({generator_seed(run) for run in range(len(runs), args.runs)}) > 1:
        raise ValueError(f"--generator: the runs fit one generator per seed (--generator-seed not given) but "
                         f"{args.generator} names one file; put {{seed}} in the path or give --generator-seed")
    augmenter, generator_seconds = None, 0.0
    for first in range(len(runs), args.runs, world):  # one round: process k trains run first + k
        run_index = first + rank
        result = None
        if run_index < args.runs:
            seed = args.seed + run_index
            if la and (augmenter is None or augmenter.metadata["seed"] != generator_seed(run_index)):
                augmenter, seconds = fit_generator(args, data, device, generator_seed(run_index))
                generator_seconds += seconds
            log = TrainingLog(Path(args.out) / f"seed_{seed}", resume=args.resume) if args.out else None
            start = time.perf_counter()
            result = train_run(args, data, split, evaluator, augmenter, seed, device, la, log=log)
            result["seconds"] = time.perf_counter() - start
            result["seed"], result["generator_seed"] = seed, generator_seed(run_index) if la else None
            if not args.quiet:
                print(f"run {run_index}: test {result['test_acc']:.4f} valid {result['valid_acc']:.4f} "
                      f"epoch {result['epoch']} ({result['seconds']:.1f} s)", file=sys.stderr)
        finished = [result]
        if distributed:
            finished = [None] * world
            torch.distributed.all_gather_object(finished, result)
        runs.extend(item for item in finished if item is not None)
        if rank == 0 and checkpoint is not None:
            atomic_write_bytes(checkpoint, json.dumps({"args": vars(args), "runs": runs}).encode())
        if result is not None and run_state_path(args, result["seed"]) is not None:
            run_state_path(args, result["seed"]).unlink(missing_ok=True)  # the run is recorded: state done
    if distributed:
        seconds = [None] * world
        torch.distributed.all_gather_object(seconds, generator_seconds)
        generator_seconds = sum(seconds)

    test = torch.tensor([r["test_acc"] for r in runs]) * 100
    valid = torch.tensor([r["valid_acc"] for r in runs]) * 100
    metrics = {"dataset": name, "model": ("la-" if la else "") + args.model, "runs": len(runs),
               "test_acc_mean": round(float(test.mean()), 2),
               "test_acc_std": round(float(test.std()), 2) if len(runs) > 1 else 0.0,
               "valid_acc_mean": round(float(valid.mean()), 2),
               "seconds_per_run": round(sum(r["seconds"] for r in runs) / max(len(runs), 1), 2),
               "generator_seconds": round(generator_seconds, 2), "epochs": args.epochs,
               "test_accs": [round(r["test_acc"] * 100, 2) for r in runs],
               "generator_seeds": [r.get("generator_seed") for r in runs], "world_size": world}
    if args.json and rank == 0:
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
