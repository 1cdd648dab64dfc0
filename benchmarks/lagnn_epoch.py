"""Cost of one LA-GCN training epoch on Cora or CiteSeer: geoattn's sampling/dropout paths against the plain one.

One epoch of the paper's LA-GCN protocol = K = 4 forward/backward passes, each on a fresh generated
matrix X_hat (input dropout on X and X_hat, consistency loss), plus one validation forward on another
fresh X_hat. The variants differ only in how X_hat is drawn and dropped:

(a) ``plain``: ``LocalAugmenter.sample`` on the dense bag-of-words in float32 per draw (the decoder's
    centre term recomputed every time, as a straightforward port does) and ``F.dropout`` on dense inputs;
(b) ``geoattn``: ``LocalAugmenter.sampler`` built once per run on the sparse bag-of-words (centre term
    cached; decoder in bfloat16 where the CPU has native bf16 matrix products) and
    ``geoattn.models.lagnn.input_dropout`` (8 or 16 random bits per dense entry, mask applied bitwise);
(c) ``pool``: as (b), but X_hat is picked from ``--pool`` float32 matrices drawn once beforehand
    (``examples/planetoid_lagnn.py --sample-pool``): no decoder call per step, fresh dropout only; the
    bag-of-words as COO and the previous dense dropout (boolean mask converted to integer words): the
    example's default path before ``pool_bf16``;
(d) ``pool_bf16``: the example's current default: the pool stored in bfloat16 where the CPU has native
    bf16 products (input dropout and first projection in bfloat16, ``geoattn.models.lagnn.InputLinear``), the
    bag-of-words as CSR, the current dropout (mask words from integer arithmetic).

Both run round-robin in one process, so machine contention hits them alike; the medians of CPU time
(``time.process_time``) and wall time per epoch are printed as one JSON object with their ratio. The
generator's weights do not change the cost, so a fresh one is used unless ``--generator`` is given.

    python benchmarks/lagnn_epoch.py --root DATA/planetoid --dataset Cora --threads 1 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import geoattn.models.lagnn as lagnn
from geoattn import backends
from geoattn.data.planetoid import load_planetoid
from geoattn.models import LAGCN
from geoattn.nn import LocalAugmenter, consistency_loss, row_normalize

SAMPLES = 4


def plain_dropout(x, p, training):
    """The textbook path: sparse inputs as geoattn does (both variants), dense ones through F.dropout."""
    return original_dropout(x, p, training) if x.is_sparse else F.dropout(x, p, training)


def previous_dropout(x, p, training):
    """input_dropout as it was before the integer-arithmetic mask (same entries, for timing only)."""
    if x.is_sparse or not training or p == 0.0:
        return original_dropout(x, p, training)
    entry_bits = 8 if (p * 256).is_integer() else 16
    levels = 2 ** entry_bits
    dropped = round(p * levels)
    per_word = 64 // entry_bits
    bits = torch.randint(-2**63, 2**63 - 1, ((x.numel() + per_word - 1) // per_word,), dtype=torch.int64)
    entries = bits.view(torch.int8 if entry_bits == 8 else torch.int16)[:x.numel()].view(x.shape)
    words = (entries >= dropped - levels // 2).to(torch.int32).neg_()
    return torch.bitwise_and(x.view(torch.int32), words, out=words).view(x.dtype).mul_(levels / (levels - dropped))


original_dropout = lagnn.input_dropout


def run_epoch(model, optimizer, x, edge_index, y, train, val, draw):
    model.train()
    optimizer.zero_grad()
    log_probs = [F.log_softmax(model(x, edge_index, [draw()]), dim=-1) for _ in range(SAMPLES)]
    loss = torch.stack([F.nll_loss(lp[train], y[train]) for lp in log_probs]).mean()
    (loss + consistency_loss(log_probs, 0.5)).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x, edge_index, [draw()])[val], y[val]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder holding <Dataset>/raw/ind.<dataset>.*")
    parser.add_argument("--dataset", default="Cora", choices=["Cora", "CiteSeer"])
    parser.add_argument("--pool", type=int, default=16, help="pool size of the pool variant")
    parser.add_argument("--generator", default=None, help="a fitted LocalAugmenter (default: a fresh one)")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="lagnn_epoch_") as workdir:
        data = load_planetoid(Path(args.root), args.dataset, Path(workdir))
    x_raw = data.x
    x = row_normalize(x_raw).to_sparse()
    x_csr = row_normalize(x_raw).to_sparse_csr()
    augmenter = LocalAugmenter.load(args.generator) if args.generator else LocalAugmenter(x_raw.size(1)).eval()
    sample_dtype = torch.bfloat16 if backends.cpu_native_bf16() else torch.float32
    generator = torch.Generator().manual_seed(0)
    sampler = augmenter.sampler(x_raw.to_sparse(), generator=generator, normalize=True, dtype=sample_dtype)
    pool = torch.stack([sampler() for _ in range(args.pool)])
    pool_bf16 = pool.to(sample_dtype)  # bfloat16 where native, as the example's --input-dtype auto
    draws = {
        "plain": lambda: augmenter.sample(x_raw, generator=generator, normalize=True),
        "geoattn": sampler,
        "pool": lambda: pool[int(torch.randint(len(pool), (), generator=generator))],
        "pool_bf16": lambda: pool_bf16[int(torch.randint(len(pool), (), generator=generator))],
    }
    dropouts = {"plain": plain_dropout, "geoattn": original_dropout, "pool": previous_dropout,
                "pool_bf16": original_dropout}
    inputs = {"plain": x, "geoattn": x, "pool": x, "pool_bf16": x_csr}
    model = LAGCN(x_raw.size(1), 8, int(data.y.max()) + 1, num_generated=1, cached=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    cpu_ms = {name: [] for name in draws}
    wall_ms = {name: [] for name in draws}
    try:
        for round_index in range(args.epochs + 1):  # round 0 warms up
            for name in (list(draws) if round_index % 2 else list(draws)[::-1]):  # alternate the order
                lagnn.input_dropout = dropouts[name]
                cpu, wall = time.process_time(), time.perf_counter()
                run_epoch(model, optimizer, inputs[name], data.edge_index, data.y, data.train_mask, data.val_mask,
                          draws[name])
                if round_index:
                    cpu_ms[name].append(1000 * (time.process_time() - cpu))
                    wall_ms[name].append(1000 * (time.perf_counter() - wall))
    finally:
        lagnn.input_dropout = original_dropout
    result = {"benchmark": "lagnn_epoch", "dataset": args.dataset, "pool": args.pool, "nodes": x_raw.size(0),
              "features": x_raw.size(1),
              "samples_per_step": SAMPLES, "threads": torch.get_num_threads(),
              "geoattn_sample_dtype": str(sample_dtype).removeprefix("torch."), "epochs_timed": args.epochs}
    for name in draws:
        result[f"{name}_cpu_ms"] = round(statistics.median(cpu_ms[name]), 1)
        result[f"{name}_wall_ms"] = round(statistics.median(wall_ms[name]), 1)
    for name in ("geoattn", "pool", "pool_bf16"):
        result[f"{name}_cpu_speedup"] = round(result["plain_cpu_ms"] / result[f"{name}_cpu_ms"], 2)
        result[f"{name}_wall_speedup"] = round(result["plain_wall_ms"] / result[f"{name}_wall_ms"], 2)
    result["pool_bf16_vs_pool_cpu"] = round(result["pool_cpu_ms"] / result["pool_bf16_cpu_ms"], 2)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
