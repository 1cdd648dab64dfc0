"""geoattn layers inside plain PyG models, trained on PyG mini-batches (one minute on a laptop CPU).

    python examples/pyg_layers.py --root DIR [--task cora|points|both] [--json]

``DIR`` is a data folder with ``graphs/planetoid/Cora/raw`` (the Planetoid files) and
``registration/geotransformer_demo/{src,ref}.npy`` (two 3DMatch-style fragments); it is only read.

* ``cora``: node classification with :class:`geoattn.nn.LargeGTConv` between two linear layers in a
  ``torch_geometric.nn.Sequential``, trained on NeighborLoader-style mini-batches: the 1-hop subgraph around
  a few training nodes (``k_hop_subgraph``, with ``n_id``), batched by PyG's ``DataLoader``; validation and
  test accuracy on the full graph (public split).
* ``points``: a rotation-invariant point model of two :class:`geoattn.nn.PPFAttentionConv` layers on crops
  of the fragments, with normals and kNN edges from :mod:`geoattn.transforms`, batched by ``DataLoader``;
  it regresses each point's surface variation (smallest over summed eigenvalue of its neighbourhood
  covariance), a target it can only learn from the point pair features.

The JSON line has, per task, the mean loss of the first and of the last epoch and the wall time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import Sequential
from torch_geometric.transforms import Compose
from torch_geometric.utils import k_hop_subgraph

from geoattn.data.planetoid import load_planetoid
from geoattn.nn import LargeGTConv, PPFAttentionConv
from geoattn.sparse import knn
from geoattn.transforms import EstimateNormals, PointPairFeatures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="data folder (graphs/planetoid, registration/...), read only")
    parser.add_argument("--task", choices=["cora", "points", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=30, help="Cora epochs (the point model runs 2x as many)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4, help="subgraphs (Cora) or crops per batch")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print a final JSON line")
    return parser.parse_args(argv)


def neighbourhood_batches(data: Data, seeds: torch.Tensor, seeds_per_graph: int) -> list[Data]:
    """1-hop subgraphs around groups of seed nodes: the mini-batches a NeighborLoader would give."""
    graphs = []
    for group in seeds.split(seeds_per_graph):
        n_id, edge_index, seed_position, _ = k_hop_subgraph(group, 1, data.edge_index, relabel_nodes=True,
                                                            num_nodes=data.num_nodes)
        graphs.append(Data(x=data.x[n_id], edge_index=edge_index, y=data.y[n_id], n_id=n_id,
                           seed_position=seed_position))
    return graphs


def train_cora(args, device) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        cora = load_planetoid(Path(args.root) / "graphs" / "planetoid", "Cora", workdir)
    model = Sequential("x, edge_index", [
        (torch.nn.Dropout(0.5), "x -> x"),
        (torch.nn.Linear(cora.num_features, args.hidden), "x -> x"),
        (LargeGTConv(args.hidden, heads=1, dropout=0.3), "x, edge_index -> x"),
        (torch.nn.ReLU(), "x -> x"),
        (torch.nn.Linear(args.hidden, int(cora.y.max()) + 1), "x -> x"),
    ]).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=5e-4)
    seeds = cora.train_mask.nonzero().squeeze(1)
    losses = []
    for _ in range(args.epochs):
        model.train()
        order = seeds[torch.randperm(seeds.numel())]
        loader = DataLoader(neighbourhood_batches(cora, order, 10), batch_size=args.batch_size, shuffle=False)
        epoch = []
        for batch in loader:
            batch = batch.to(device)
            out = model(batch.x, batch.edge_index)
            loss = F.cross_entropy(out[batch.seed_position], batch.y[batch.seed_position])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            epoch.append(loss.item())
        losses.append(float(np.mean(epoch)))
    model.eval()
    with torch.no_grad():
        prediction = model(cora.x.to(device), cora.edge_index.to(device)).argmax(1).cpu()
    accuracy = {split: float((prediction[mask] == cora.y[mask]).float().mean())
                for split, mask in (("val_acc", cora.val_mask), ("test_acc", cora.test_mask))}
    return {"loss_first": losses[0], "loss_last": losses[-1], **accuracy}


def surface_variation(pos: torch.Tensor, k: int = 12) -> torch.Tensor:
    """``lambda_0 / (lambda_0 + lambda_1 + lambda_2)`` of each point's kNN covariance, in [0, 1/3]."""
    index, _ = knn(pos, pos, k)
    neighbours = pos[index]
    centred = neighbours - neighbours.mean(1, keepdim=True)
    eigenvalues = torch.linalg.eigvalsh(centred.transpose(1, 2) @ centred / k)
    return eigenvalues[:, 0] / eigenvalues.sum(1).clamp(min=1e-12)


def fragment_crops(root: Path, points: int, per_fragment: int, generator: torch.Generator) -> list[Data]:
    """Balls of ``points`` nearest points around random centres of the two fragments, with normals and edges."""
    transform = Compose([EstimateNormals(k=10), PointPairFeatures(k=12)])
    crops = []
    for name in ("src", "ref"):
        cloud = torch.from_numpy(np.load(root / "registration" / "geotransformer_demo" / f"{name}.npy")).float()
        centres = cloud[torch.randint(0, cloud.size(0), (per_fragment,), generator=generator)]
        for members in knn(cloud, centres, points)[0]:
            pos = cloud[members]
            data = transform(Data(pos=pos, x=torch.ones(points, 1)))
            data.y = surface_variation(pos) * 3.0  # scaled to [0, 1]
            crops.append(data)
    return crops


def train_points(args, device, generator: torch.Generator) -> dict:
    crops = fragment_crops(Path(args.root), 256, 6, generator)
    model = Sequential("x, pos, normal, edge_index", [
        (PPFAttentionConv(1, args.hidden, heads=4), "x, pos, normal, edge_index -> x"),
        (torch.nn.ReLU(), "x -> x"),
        (PPFAttentionConv(args.hidden, args.hidden, heads=4), "x, pos, normal, edge_index -> x"),
        (torch.nn.ReLU(), "x -> x"),
        (torch.nn.Linear(args.hidden, 1), "x -> x"),
    ]).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr / 2)
    losses = []
    for _ in range(2 * args.epochs):
        epoch = []
        for batch in DataLoader(crops, batch_size=args.batch_size, shuffle=True):
            batch = batch.to(device)
            out = model(batch.x, batch.pos, batch.normal, batch.edge_index).squeeze(1)
            loss = F.mse_loss(out, batch.y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            epoch.append(loss.item())
        losses.append(float(np.mean(epoch)))
    target_variance = float(torch.cat([crop.y for crop in crops]).var())
    return {"loss_first": losses[0], "loss_last": losses[-1], "target_variance": target_variance}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        print(f"error: --epochs and --batch-size must be positive, got {args.epochs} and {args.batch_size}",
              file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as error:
        print(f"error: --device {args.device!r} is not available ({str(error).splitlines()[0]})", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    summary = {"seed": args.seed}
    try:
        for task, train in (("cora", lambda: train_cora(args, device)),
                            ("points", lambda: train_points(args, device, generator))):
            if args.task in (task, "both"):
                start = time.perf_counter()
                summary[task] = {**train(), "seconds": round(time.perf_counter() - start, 2)}
                if not args.json:
                    print(f"{task}: " + ", ".join(f"{key} {value:.4g}" for key, value in summary[task].items()))
    except FileNotFoundError as error:
        print(f"error: --root: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
