"""Local augmentation (LAGNN) on Cora / CiteSeer: the paper's semi-supervised protocol.

Public Planetoid split (20 labels per class, 500 validation, 1000 test nodes); every run trains for at
most ``--epochs`` epochs (optionally stopped by ``--patience``), picks an epoch from validation figures
only (``--selection``) and reports the test accuracy of that epoch. Baselines (``--no-la``) and LA models
run through the same loop; a baseline simply has no generated inputs, one sample per step and no
consistency loss. Defaults are each model's paper settings (``HYPERPARAMETERS``): LAGNN's Tables 10/11
for LA models, Kipf & Welling's for GCN, Velickovic et al.'s (with their stopping rule) for GAT.

Per training step an LA model sees ``--samples`` (K) generated feature matrices, each with its own
input-dropout mask, from a generator (:class:`geoattn.nn.LocalAugmenter`) that each run fits with its own
seed (``--generator-seed S`` instead fits one generator with seed S and shares it between all runs).
``--generator PATH`` keeps fitted generators (``{seed}`` in PATH: one file per seed) and reuses a file only
when it records the same fit settings and seed. Validation uses one more generated matrix per epoch, and
the test accuracy is read with the matrix of the selected epoch.

Reproducibility: the same command gives the same numbers, bit for bit, on one machine with one thread
count (``--threads``, default 1): the generator's initial weights, pair order, noise and uncertainty
selection follow the generator seed; model initialisation, dropout masks and pool picks follow the run's
seed; a run's result does not depend on the runs before it (``--seed 3 --runs 1`` repeats run 3 of
``--seed 0 --runs 4``). ``--out DIR`` writes each run's ``log.csv`` and ``curve.png`` to ``DIR/seed_<seed>/``.

Generated matrices (``--sample-pool``): the paper decodes K + 1 = 5 fresh [N, F] matrices per epoch
(``--sample-pool 0``). By default each run instead decodes a pool of S = 16 matrices once and every
pass picks one of them at random; dropout masks stay fresh for every pass, so the K passes of a step
still see different inputs. This removes the decoder from the epoch: ~1.8x cheaper epochs on Cora
(``benchmarks/lagnn_epoch.py``, one thread: 118 vs 208 ms CPU) and ~2x on CiteSeer, at a memory cost
of S x N x F numbers per run (float32: 248 MB on Cora, 789 MB on CiteSeer for S = 16; half that in
bfloat16). On validation figures the pool did not hurt (paper's selection rule, same seeds; see
``datasets/lagnn.md``). Fresh draws use :meth:`LocalAugmenter.sampler` (decoder centre term cached,
bfloat16 products where the CPU has them, ``--generation-dtype``).

Per pass, LA-GCN/LA-GAT (``--input-dtype auto``, CPUs with native bf16 products) see the generated
matrices in bfloat16: input dropout (8 or 16 random bits per entry, mask applied bitwise,
:func:`geoattn.models.lagnn.input_dropout`) and the first projection
(:class:`geoattn.models.lagnn.InputLinear`: bf16 products, float32 weights and outputs) cost about half
as much; the bag-of-words input is CSR, whose product is ~20x cheaper than COO's. Together ~2x
cheaper LA-GCN epochs than the float32 pool (``benchmarks/lagnn_epoch.py``, one thread, CPU ms per
epoch: Cora 52 vs 102, CiteSeer 163 vs 332); on LA-GCN Cora the 10-seed figures stayed on par
(``datasets/lagnn.md``).

Generator: fitted on the raw bag-of-words; on CiteSeer by default with the paper's MC-dropout
uncertainty selection of the checkpoint (``SELECT_GENERATOR``, ``--select/--no-select``), which
raised LA-GAT's validation accuracy there.

Run length: LA-GCN's validation loss keeps falling for ~800 epochs on Cora, so runs are long even with
patience 100. ``--trace`` records every epoch's validation figures (whole set and two fixed halves) and
test accuracy in ``--checkpoint``, to compare stopping/selection rules offline with one validation
half picking the epoch and the other scoring it.

    python examples/planetoid_lagnn.py --root DATA/planetoid --dataset Cora --model gcn --runs 10 --json

``--root`` must hold ``<Dataset>/raw/ind.<dataset>.*`` (the Planetoid files); they are copied to a
temporary folder first, so nothing is written next to them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from geoattn import backends
from geoattn.data.planetoid import load_planetoid
from geoattn.models import LAGAT, LAGCN, LAGCNII, LASAGE
from geoattn.nn import LocalAugmenter, UncertaintySelector, consistency_loss, row_normalize
from geoattn.io import atomic_write_bytes
from geoattn.train_log import TrainingLog

# The paper's hyper-parameters (Tables 10/11) for the LA models; the baselines use their own papers'
# settings and stopping rules (Kipf & Welling GCN: 200 epochs, weight decay on the first layer only;
# Velickovic et al. GAT: patience 100 on validation loss and accuracy; Chen et al. GCNII; GraphSAGE as GCN).
# Every entry: "selection" picks the reported epoch from validation figures only (see train_run),
# "patience" stops a run after that many epochs without validation improvement (None: run all epochs).
_COMMON = dict(weight_decay=5e-4, weight_decay_scope="all", selection="val_loss", patience=None, samples=1,
               consistency_weight=0.0, temperature=0.5)
# LA models: the paper trains all epochs; patience 100 (GAT's) stops a run once the validation loss has not
# improved for 100 epochs, which saves most of the (K forward/backward passes per epoch) cost; on validation
# halves it selected better epochs than patience 50 (datasets/lagnn.md). --patience 100000 restores the
# paper's full schedule.
_LA = dict(samples=4, consistency_weight=1.0, temperature=0.5, patience=100)
HYPERPARAMETERS = {
    ("gcn", True): dict(_COMMON, **_LA, hidden=8, lr=0.01, dropout=0.5, epochs=2000),
    ("gcn", False): dict(_COMMON, hidden=16, lr=0.01, dropout=0.5, epochs=200, weight_decay_scope="first"),
    ("gat", True): dict(_COMMON, **_LA, hidden=8, heads=4, lr=0.01, dropout=0.6, epochs=1000, elu_alpha=0.2),
    ("gat", False): dict(_COMMON, hidden=8, heads=8, lr=0.005, dropout=0.6, epochs=100_000, selection="gat",
                         patience=100),
    ("sage", True): dict(_COMMON, **_LA, hidden=8, lr=0.01, dropout=0.5, epochs=2000),
    ("sage", False): dict(_COMMON, hidden=16, lr=0.01, dropout=0.5, epochs=2000),
    # GCNII on Cora (paper: 64 layers, hidden 32 per branch, alpha .1, lambda .5, dropout .6, L2c .01,
    # L2d 5e-4); the baseline has the same total width, 64, as in the GCNII paper.
    ("gcnii", True): dict(_COMMON, hidden=32, layers=64, alpha=0.1, theta=0.5, lr=0.01, weight_decay=0.01,
                          weight_decay_linear=5e-4, dropout=0.6, epochs=1500, samples=4),
    ("gcnii", False): dict(_COMMON, hidden=64, layers=64, alpha=0.1, theta=0.5, lr=0.01, weight_decay=0.01,
                           weight_decay_linear=5e-4, dropout=0.6, epochs=1500),
}
# CiteSeer GCNII setting of the paper (hidden per branch; LA-GCNII is 2 branches wide).
CITESEER_GCNII = dict(hidden=128, layers=32, theta=0.6, dropout=0.7)
# Whether a generator fitted here keeps the checkpoint of highest MC-dropout uncertainty (the paper's
# "active learning trick", LocalAugmenter.fit(selector=UncertaintySelector)) instead of the last one. On
# CiteSeer, LA-GAT seeds 0-4 scored a validation accuracy of 73.24 with it against 72.56 without (validation
# loss 0.8437 vs 0.8453; datasets/lagnn.md); Cora keeps the last checkpoint (its rows were measured so).
SELECT_GENERATOR = {"Cora": False, "CiteSeer": True}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding <Dataset>/raw/ind.<dataset>.* files")
    parser.add_argument("--dataset", default="Cora", choices=["Cora", "CiteSeer"])
    parser.add_argument("--model", default="gcn", choices=["gcn", "gat", "sage", "gcnii"])
    parser.add_argument("--no-la", action="store_true", help="train the plain backbone (baseline)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="run r uses seed + r")
    parser.add_argument("--epochs", type=int, default=None, help="default: the paper's value")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop a run after this many epochs without validation improvement "
                             "(default: the model's paper setting, see HYPERPARAMETERS)")
    parser.add_argument("--selection", default=None, choices=["val_loss", "gat"],
                        help="which epoch is reported: lowest validation loss, or the GAT paper's rule "
                             "(validation accuracy and loss both at their best so far); default per model")
    parser.add_argument("--samples", type=int, default=None, help="K generated samples per step")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--consistency-weight", type=float, default=None, help="beta")
    parser.add_argument("--temperature", type=float, default=None, help="sharpening temperature T")
    parser.add_argument("--sample-pool", type=int, default=16,
                        help="pick generated matrices from a pool of this many decoded once per run "
                             "(S x N x F float32 numbers); 0: fresh draws for every pass, as in the paper")
    parser.add_argument("--generation-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="dtype of the generator's decoder while sampling; auto: bfloat16 on CPUs with "
                             "native bf16 matrix products (2-3x faster draws), float32 elsewhere")
    parser.add_argument("--input-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="dtype of the generated matrices the model sees (pool storage, input dropout, first "
                             "projection; LA-GCN/LA-GAT only); auto: bfloat16 on CPUs with native bf16 matrix "
                             "products (~2x cheaper epochs), float32 elsewhere")
    parser.add_argument("--generator", default=None,
                        help="path of a fitted LocalAugmenter, fitted and written there when missing; '{seed}' in "
                             "the path is replaced by the generator seed (one file per seed), and a file is only "
                             "reused when it records the same fit settings and seed")
    parser.add_argument("--generator-seed", type=int, default=None,
                        help="seed of the generator fit; default: each run fits its own generator with the run's "
                             "seed; given: one generator fitted with this seed is shared by all runs")
    parser.add_argument("--generator-epochs", type=int, default=10)
    parser.add_argument("--generator-steps", type=int, default=None, help="cap on generator optimiser steps")
    parser.add_argument("--generator-latent", type=int, default=10)
    parser.add_argument("--generator-lr", type=float, default=0.01)
    parser.add_argument("--select", action=argparse.BooleanOptionalAction, default=None,
                        help="select the generator checkpoint by the MC-dropout uncertainty criterion (the "
                             "paper's procedure); default: on for CiteSeer (SELECT_GENERATOR), off for Cora")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on Cora/CiteSeer a second thread costs more than it gains)")
    parser.add_argument("--checkpoint", default=None,
                        help="file recording finished runs (written atomically after each run)")
    parser.add_argument("--out", default=None,
                        help="folder of the training logs: OUT/seed_<seed>/log.csv (per-epoch loss, validation "
                             "loss and accuracy) and curve.png")
    parser.add_argument("--resume", action="store_true", help="skip the runs recorded in --checkpoint")
    parser.add_argument("--trace", action="store_true",
                        help="store every epoch's validation loss / accuracy and test accuracy in --checkpoint")
    parser.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def build_model(args, hp, num_features, num_classes, la: bool):
    num_generated = 1 if la else 0
    if args.model == "gcn":
        return LAGCN(num_features, hp["hidden"], num_classes, num_generated=num_generated, dropout=hp["dropout"],
                     cached=True)
    if args.model == "sage":
        return LASAGE(num_features, hp["hidden"], num_classes, num_generated=num_generated, dropout=hp["dropout"])
    if args.model == "gat":
        return LAGAT(num_features, hp["hidden"], num_classes, num_generated=num_generated, heads=hp["heads"],
                     dropout=hp["dropout"], elu_alpha=hp.get("elu_alpha", 1.0))
    return LAGCNII(num_features, hp["hidden"], num_classes,
                   num_generated=num_generated, num_layers=hp["layers"], alpha=hp["alpha"], theta=hp["theta"],
                   dropout=hp["dropout"])


def generator_seed(args, run: int) -> int:
    """Seed of the generator run ``run`` trains with: ``--generator-seed`` when given, else the run's seed."""
    return args.generator_seed if args.generator_seed is not None else args.seed + run


def generator_record(args, seed: int) -> dict:
    """Everything a generator fit depends on; a file in --generator is reused only when it records the same."""
    select = SELECT_GENERATOR[args.dataset] if args.select is None else args.select
    return {"dataset": args.dataset, "seed": seed, "epochs": args.generator_epochs, "steps": args.generator_steps,
            "latent": args.generator_latent, "lr": args.generator_lr, "select": select}


def generator_path(args, seed: int) -> Path | None:
    return Path(args.generator.replace("{seed}", str(seed))) if args.generator else None


def fit_generator(args, data, device, seed: int):
    """The generator for ``seed``: read from --generator when that file was fitted with the same settings and
    seed, else fitted (construction, pair order, noise and the uncertainty selection all seeded by ``seed``)
    and written there; returns (augmenter, seconds spent fitting)."""
    record = generator_record(args, seed)
    path = generator_path(args, seed)
    if path is not None and path.is_file():
        augmenter = LocalAugmenter.load(path, map_location=device)
        if augmenter.metadata != record:
            raise ValueError(f"--generator: {path} records the fit {augmenter.metadata or '(none)'}, this run needs "
                             f"{record}; remove the file to refit it, or name the path with {{seed}}")
        return augmenter, 0.0
    start = time.perf_counter()
    x_raw = data.x_raw.to(device)
    torch.manual_seed(seed)  # the initial weights: unseeded, they made two identical commands disagree
    augmenter = LocalAugmenter(x_raw.size(1), latent_channels=args.generator_latent).to(device)
    selector = None
    if record["select"]:
        selector = UncertaintySelector(data.x.to(device), data.edge_index.to(device), data.y.to(device),
                                       data.train_mask.nonzero().view(-1).to(device), generator_x=x_raw,
                                       seed=seed)
    augmenter.fit(x_raw, data.edge_index.to(device), epochs=args.generator_epochs, lr=args.generator_lr,
                  max_steps=args.generator_steps, selector=selector, seed=seed, progress=not args.quiet)
    seconds = time.perf_counter() - start
    augmenter.metadata = record
    if path is not None:
        augmenter.save(path, metadata=record)
    return augmenter, seconds


def generation_dtype(name: str, device: torch.device) -> torch.dtype:
    """The decoder's sampling dtype for ``--generation-dtype``."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cpu" and backends.cpu_native_bf16() else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def input_dtype(name: str, model: str, device: torch.device) -> torch.dtype:
    """The dtype of the generated matrices the model sees, for ``--input-dtype``."""
    if model not in ("gcn", "gat"):  # only their first layers (geoattn.models.lagnn.InputLinear) take bfloat16
        return torch.float32
    return generation_dtype(name, device)


class SampleSource:
    """Generated matrices for one run: fresh draws, or draws from a pool generated once per run.

    Draws come from :meth:`LocalAugmenter.sampler` on the sparse bag-of-words (the decoder's centre term
    is computed once per run), decoded in ``dtype`` (bfloat16 is ~2-3x faster on CPUs with bf16 units),
    row-normalised in float32 and handed out in ``out_dtype`` (bfloat16 halves the pool's memory and the
    cost of input dropout and of the first projection). With ``pool_size`` S > 0 the first S draws form
    the pool and every :meth:`draw` returns one of them, picked uniformly at random (seeded): no decoder
    call per draw."""

    def __init__(self, augmenter, x_raw, dtype, pool_size, seed, out_dtype=torch.float32):
        self.generator = torch.Generator(device=x_raw.device)
        self.generator.manual_seed(seed)
        self._generate = augmenter.sampler(x_raw.to_sparse(), generator=self.generator, normalize=True,
                                           dtype=dtype)
        self.out_dtype = out_dtype
        self.pool = None
        if pool_size > 0:  # filled in place: stacking a list would hold every matrix twice
            first = self._generate()
            self.pool = first.new_empty((pool_size, *first.shape), dtype=out_dtype)
            self.pool[0] = first
            for index in range(1, pool_size):
                self.pool[index] = self._generate()

    def draw(self):
        if self.pool is None:
            return self._generate().to(self.out_dtype)
        return self.pool[int(torch.randint(len(self.pool), (), generator=self.generator))]


class EpochSelector:
    """Model selection and early stopping from validation figures only.

    - ``rule="val_loss"`` (LAGNN, GCN): the reported epoch is the one of lowest validation loss, and
      patience counts epochs since that epoch;
    - ``rule="gat"`` (the GAT paper's code): the reported epoch is the last one whose validation accuracy
      and loss are both at least as good as at every earlier epoch; patience counts epochs since either
      of them last reached a new best.
    """

    def __init__(self, rule: str = "val_loss", patience: int | None = None):
        if rule not in ("val_loss", "gat"):
            raise ValueError(f"rule: expected 'val_loss' or 'gat', got {rule!r}")
        self.rule, self.patience = rule, patience
        self.lowest_loss, self.highest_acc, self.last_improvement = math.inf, -math.inf, 0

    def update(self, epoch: int, val_loss: float, val_acc: float) -> bool:
        """Record one epoch; True when it becomes the reported epoch."""
        if self.rule == "gat":
            loss_ok, acc_ok = val_loss <= self.lowest_loss, val_acc >= self.highest_acc
            keep, improved = loss_ok and acc_ok, loss_ok or acc_ok
        else:
            keep = improved = val_loss < self.lowest_loss
        if improved:
            self.last_improvement = epoch
        self.lowest_loss, self.highest_acc = min(self.lowest_loss, val_loss), max(self.highest_acc, val_acc)
        return keep

    def should_stop(self, epoch: int) -> bool:
        return self.patience is not None and epoch - self.last_improvement >= self.patience


def validation_halves(val_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation nodes split into two fixed random halves (the same for every run and seed)."""
    nodes = val_mask.nonzero().view(-1)
    order = torch.randperm(len(nodes), generator=torch.Generator().manual_seed(0)).to(nodes.device)
    return nodes[order[: len(nodes) // 2]], nodes[order[len(nodes) // 2:]]


def train_run(args, hp, data, augmenter, seed, device, la, log=None):
    """One run from ``seed`` (model initialisation, dropout masks and pool picks all follow it); ``log``: an
    optional :class:`geoattn.train_log.TrainingLog` that gets one row per epoch."""
    torch.manual_seed(seed)
    model = build_model(args, hp, data.x.size(1), int(data.y.max()) + 1, la).to(device)
    if args.model == "gcnii":
        optimizer = torch.optim.Adam(model.parameter_groups(hp["weight_decay"], hp["weight_decay_linear"]),
                                     lr=hp["lr"])
    else:
        # Kipf & Welling decay only the first layer's weights; LAGNN and GAT decay every parameter
        decayed = {id(p) for p in (model.first if hp["weight_decay_scope"] == "first" else model).parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) in decayed], "weight_decay": hp["weight_decay"]},
                  {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0}]
        optimizer = torch.optim.Adam([group for group in groups if group["params"]], lr=hp["lr"])
    x, edge_index, y = data.x.to(device), data.edge_index.to(device), data.y.to(device)
    if args.model in ("gcn", "gat"):
        # bag-of-words rows are ~1% non-zero: sparse input makes dropout and the first product cheap; CSR's
        # product is ~20x cheaper than COO's (geoattn.models.lagnn.InputLinear). torch warns that CSR is in
        # beta once per process; the operations used here are covered by the tests.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            x = x.to_sparse_csr()
    train, val, test = data.train_mask.to(device), data.val_mask.to(device), data.test_mask.to(device)
    source = None
    if la:
        dtype = generation_dtype(args.generation_dtype, device)
        source = SampleSource(augmenter, data.x_raw.to(device), dtype, args.sample_pool, seed,
                              out_dtype=input_dtype(args.input_dtype, args.model, device))
    samples = hp["samples"] if la else 1
    best = {"val_loss": math.inf, "val_acc": 0.0, "test_acc": 0.0, "epoch": -1}
    selector = EpochSelector(hp["selection"], hp["patience"])
    # per epoch: (val loss, val acc, test acc, then loss and accuracy on each half of the validation nodes)
    # for offline study of stopping/selection rules: one half picks the epoch, the other scores the pick
    trace = [] if args.trace else None
    val_halves = validation_halves(val) if args.trace else None
    bar = tqdm(range(hp["epochs"]), desc=f"run seed={seed}", disable=args.quiet, leave=False)
    for epoch in bar:
        model.train()
        optimizer.zero_grad()
        log_probs = [F.log_softmax(model(x, edge_index, [source.draw()] if la else None), dim=-1)
                     for _ in range(samples)]
        loss = torch.stack([F.nll_loss(lp[train], y[train]) for lp in log_probs]).mean()
        if la and samples > 1 and hp["consistency_weight"] > 0:
            loss = loss + hp["consistency_weight"] * consistency_loss(log_probs, hp["temperature"])
        loss.backward()
        optimizer.step()

        model.eval()
        with torch.no_grad():
            logits = model(x, edge_index, [source.draw()] if la else None)
            val_loss = float(F.cross_entropy(logits[val], y[val]))
            prediction = logits.argmax(dim=-1)
            val_acc = float((prediction[val] == y[val]).float().mean())
            if trace is not None:
                halves = []
                for half in val_halves:
                    halves += [round(float(F.cross_entropy(logits[half], y[half])), 5),
                               float((prediction[half] == y[half]).float().mean())]
                trace.append((round(val_loss, 5), val_acc, float((prediction[test] == y[test]).float().mean()),
                              *halves))
        if log is not None:  # rows are written in blocks: rewriting the CSV every epoch would cost more than it
            log.rows.append({"epoch": epoch + 1, "loss": float(loss.detach()), "val_loss": val_loss, "val_acc": val_acc})
            if (epoch + 1) % 100 == 0:
                log.write()
        if selector.update(epoch, val_loss, val_acc):
            best = {"val_loss": val_loss, "epoch": epoch, "val_acc": val_acc,
                    "test_acc": float((prediction[test] == y[test]).float().mean())}
        if selector.should_stop(epoch):
            break
        if epoch % 20 == 0:
            bar.set_postfix(val_loss=f"{best['val_loss']:.3f}", test=f"{best['test_acc']:.3f}")
    best["epochs_run"] = epoch + 1
    if log is not None:
        log.write()
        log.plot(title=f"{'LA-' if la else ''}{args.model.upper()} {args.dataset}, seed {seed}")
    if trace is not None:
        best["trace"] = trace
    return best


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    la = not args.no_la
    hp = dict(HYPERPARAMETERS[(args.model, la)])
    if args.model == "gcnii" and args.dataset == "CiteSeer":
        hp.update(CITESEER_GCNII, consistency_weight=1.0 if la else 0.0)
        if not la:
            hp["hidden"] *= 2  # the baseline gets the LA model's total width
    for key in ("epochs", "samples", "lr", "consistency_weight", "temperature", "patience", "selection"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)

    with tempfile.TemporaryDirectory(prefix="planetoid_lagnn_") as workdir:
        data = load_planetoid(Path(args.root), args.dataset, Path(workdir))
    data.x_raw = data.x  # binary bag-of-words: what the generator models
    data.x = row_normalize(data.x)  # what the GNN sees (Kipf-style)

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    runs = []
    if args.resume and checkpoint is not None and checkpoint.is_file():
        runs = json.loads(checkpoint.read_text())["runs"]
    seeds = {generator_seed(args, run) for run in range(len(runs), args.runs)}
    if la and args.generator and "{seed}" not in args.generator and len(seeds) > 1:
        raise ValueError(f"--generator: the runs fit {len(seeds)} generators (one per seed; --generator-seed not "
                         f"given) but {args.generator} names one file; put {{seed}} in the path "
                         f"(e.g. {args.dataset.lower()}_generator_{{seed}}.pt) or give --generator-seed")
    augmenter, generator_seconds = None, 0.0
    for run in range(len(runs), args.runs):
        seed = args.seed + run
        if la and (augmenter is None or augmenter.metadata["seed"] != generator_seed(args, run)):
            augmenter, seconds = fit_generator(args, data, device, generator_seed(args, run))
            generator_seconds += seconds
        log = TrainingLog(Path(args.out) / f"seed_{seed}") if args.out else None
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_run(args, hp, data, augmenter, seed, device, la, log=log)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu_start
        result["generator_seed"] = generator_seed(args, run) if la else None
        runs.append(result)
        if not args.quiet:
            print(f"run {run}: test {result['test_acc']:.4f} val {result['val_acc']:.4f} epoch {result['epoch']} "
                  f"({result['seconds']:.1f} s, {result['cpu_seconds']:.1f} s CPU)", file=sys.stderr, flush=True)
        if checkpoint is not None:
            atomic_write_bytes(checkpoint, json.dumps({"args": vars(args), "runs": runs}).encode())

    test = torch.tensor([r["test_acc"] for r in runs]) * 100
    val = torch.tensor([r["val_acc"] for r in runs]) * 100
    metrics = {
        "dataset": args.dataset, "model": ("la-" if la else "") + args.model, "runs": len(runs),
        "test_acc_mean": round(float(test.mean()), 2),
        "test_acc_std": round(float(test.std()), 2) if len(runs) > 1 else 0.0,
        "val_acc_mean": round(float(val.mean()), 2),
        "seconds_per_run": round(sum(r["seconds"] for r in runs) / max(len(runs), 1), 2),
        # CPU time of the process (all threads): a contention-free measure on a shared machine
        "cpu_seconds_per_run": round(sum(r["cpu_seconds"] for r in runs) / max(len(runs), 1), 2),
        "epochs_run_mean": round(sum(r["epochs_run"] for r in runs) / max(len(runs), 1), 1),
        "generator_seconds": round(generator_seconds, 2),
        "test_accs": [round(r["test_acc"] * 100, 1) for r in runs],
        "generator_seeds": [r.get("generator_seed") for r in runs],
        "hyperparameters": hp, "sample_pool": args.sample_pool,
        "generation_dtype": str(generation_dtype(args.generation_dtype, device)).removeprefix("torch."),
        "input_dtype": str(input_dtype(args.input_dtype, args.model, device)).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
