"""MessagePassing forms (geoattn.nn.conv) against their dense forms, forward and forward + backward.

Each pair runs on the same neighbourhoods with the same parameters (``load_state_dict``), so the outputs
agree (the largest absolute difference is reported too):

* PPF attention: ``PPFAttentionConv`` on kNN edges vs ``PPFAttention`` on ``[N, k]`` groups;
* LargeGT local attention: ``LargeGTConv`` on token edges vs ``LargeGTLocalAttention`` on ``[N, T, C]`` sets;
* GLA-GCN: ``AGCNConv`` on a batch of skeletons vs ``AdaptiveGraphConv`` on ``[B, C, T, 17]`` maps.

    python benchmarks/pyg_layers.py --points 20000 --nodes 20000 --skeletons 256 --json

One JSON object: per layer, median milliseconds of both forms, their ratio and which one is faster.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from geoattn.nn import (H36M_PARENTS, AdaptiveGraphConv, AGCNConv, LargeGTConv, LargeGTLocalAttention,
                        PPFAttention, PPFAttentionConv, adjacency_subsets, knn_edge_index, ppf_groups,
                        skeleton_edge_index)
from geoattn.sparse import estimate_normals


def timed(function, repeats: int) -> float:
    """Median milliseconds of ``function()`` over ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compare(name: str, dense_call, conv_call, repeats: int) -> dict:
    dense_out, conv_out = dense_call(), conv_call()
    result = {"max_abs_diff": float((dense_out - conv_out).abs().max()) if dense_out.numel() else 0.0}
    for label, call in (("dense", dense_call), ("message_passing", conv_call)):
        result[f"{label}_forward_ms"] = timed(lambda: call().detach(), repeats)
        result[f"{label}_backward_ms"] = timed(lambda: call().square().mean().backward(), repeats)
    result["message_passing_over_dense_forward"] = result["message_passing_forward_ms"] / result["dense_forward_ms"]
    result["faster_forward"] = "dense" if result["dense_forward_ms"] <= result["message_passing_forward_ms"] else \
        "message_passing"
    print(f"{name}: dense {result['dense_forward_ms']:.2f} ms, message passing "
          f"{result['message_passing_forward_ms']:.2f} ms (forward)", file=sys.stderr)
    return result


def ppf_pair(points: int, k: int, channels: int) -> tuple:
    pos = torch.randn(points, 3)
    normal = estimate_normals(pos, 10)
    x = torch.randn(points, channels)
    dense, conv = PPFAttention(channels, channels), PPFAttentionConv(channels, channels, k=k)
    conv.load_state_dict(dense.state_dict())
    neighbor_index, ppf = ppf_groups(pos, normal, k)
    edge_index = knn_edge_index(pos, k)
    return lambda: dense(x, neighbor_index, ppf), lambda: conv(x, pos, normal, edge_index)


def largegt_pair(nodes: int, tokens: int, channels: int) -> tuple:
    x = torch.randn(nodes, channels)
    neighbours = torch.randint(0, nodes, (nodes, tokens - 1))
    edge_index = torch.stack([neighbours.reshape(-1), torch.arange(nodes).repeat_interleave(tokens - 1)])
    sets = torch.cat([torch.arange(nodes).unsqueeze(1), neighbours], 1)
    dense, conv = LargeGTLocalAttention(channels, dropout=0.0), LargeGTConv(channels, dropout=0.0)
    conv.load_state_dict(dense.state_dict())
    return lambda: dense(x[sets]), lambda: conv(x, edge_index)


def agcn_pair(skeletons: int, frames: int, channels: int) -> tuple:
    joints = len(H36M_PARENTS)
    skeleton = skeleton_edge_index(H36M_PARENTS)
    dense = AdaptiveGraphConv(channels, channels, adjacency_subsets(skeleton, joints)).eval()
    conv = AGCNConv(channels, channels, joints).eval()
    conv.load_state_dict({key: value.flatten(1) if value.dim() == 4 else value
                          for key, value in dense.state_dict().items() if key != "adjacency"})
    maps = torch.randn(skeletons, channels, frames, joints)
    nodes = maps.permute(0, 3, 2, 1).reshape(skeletons * joints, frames, channels)
    edge_index = torch.cat([skeleton + i * joints for i in range(skeletons)], dim=1)
    return (lambda: dense(maps).permute(0, 3, 2, 1).reshape(skeletons * joints, frames, channels),
            lambda: conv(nodes, edge_index))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20000, help="points of the PPF cloud")
    parser.add_argument("--k", type=int, default=16, help="PPF group size")
    parser.add_argument("--nodes", type=int, default=20000, help="LargeGT targets")
    parser.add_argument("--tokens", type=int, default=8, help="LargeGT set size (target included)")
    parser.add_argument("--skeletons", type=int, default=256, help="GLA-GCN batch of 17-joint skeletons")
    parser.add_argument("--frames", type=int, default=27)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    sizes = (args.points, args.k, args.nodes, args.tokens, args.skeletons, args.frames, args.channels, args.repeats)
    if min(sizes) < 1 or args.tokens < 2:
        print("error: every size must be positive and --tokens at least 2", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    result = {
        "threads": torch.get_num_threads(),
        "ppf_attention": {"points": args.points, "k": args.k,
                          **compare("ppf", *ppf_pair(args.points, args.k, args.channels), args.repeats)},
        "largegt_local": {"nodes": args.nodes, "tokens": args.tokens,
                          **compare("largegt", *largegt_pair(args.nodes, args.tokens, args.channels), args.repeats)},
        "adaptive_graph_conv": {"skeletons": args.skeletons, "frames": args.frames,
                                **compare("agcn", *agcn_pair(args.skeletons, args.frames, args.channels),
                                          args.repeats)},
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
