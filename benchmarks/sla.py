"""Scattered linear attention on a real LiDAR frame: geoattn against the two usual alternatives.

The frame is voxelised with the Waymo ScatterFormer config (voxel [0.32, 0.32, 0.1875] m, range
[-76.8, -76.8, -2, 76.8, 76.8, 4] m, z shifted by +1.73 m so the KITTI sensor frame sits like Waymo's ground
frame), the stem's stride-(2, 1, 1) z-downsampling is applied to the active set (stage-1 voxels), and the
voxels are partitioned into 12 x 12 full-height windows. With C = 128 and 4 heads, three implementations of the
attention core (q, k, v -> y; projections excluded for all) are timed round-robin in one process:

(a) ``sla``: ``geoattn.kernels.sla.scattered_linear_attention`` (CPU: chunked batched matmuls; CUDA: Triton);
(b) ``naive_scatter``: per-voxel outer products k^T v + ``index_add`` into window states, in 4096-row blocks
    (the paper's baseline), autograd backward;
(c) ``pad_softmax``: every window padded to the largest and dense softmax attention (SST/DSVT style) with a
    key-padding mask through ``scaled_dot_product_attention``, in groups of windows to bound memory.

``*_fwd_ms`` is a forward without autograd (inference), ``*_fwd_bwd_ms`` a forward with autograd plus the
backward of a random output gradient. Prints one JSON object: sizes, medians in ms, ratios, peak memory (CUDA: allocator peak; CPU: peak RSS of a
fresh subprocess running one forward+backward, minus that of a subprocess that only builds the inputs), and the
bytes moved by SLA's minimal traffic (q, k, v read + y written; ~3x that with the backward) against the
device's copy bandwidth.

    python benchmarks/sla.py --frame PATH/000001.bin --json
    python benchmarks/sla.py --frame PATH/000001.bin --device cuda --dtype bfloat16 --voxels 131072 --json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geoattn.kernels.sla import scattered_linear_attention, select_backend
from geoattn.sparse.voxel import voxelize
from geoattn.sparse.window import WindowIndex

VOXEL_SIZE = [0.32, 0.32, 0.1875]
POINT_RANGE = [-76.8, -76.8, -2.0, 76.8, 76.8, 4.0]
SENSOR_HEIGHT = 1.73
WINDOW = 12
CHANNELS = 128
HEADS = 4
METHODS = ("sla", "naive_scatter", "pad_softmax")


def stage_one_coords(frame: Path) -> torch.Tensor:
    """Stage-1 voxel coords of a KITTI .bin frame (Waymo config, stem z-downsampling applied)."""
    points = torch.from_numpy(np.fromfile(frame, dtype=np.float32).reshape(-1, 4))
    pos = points[:, :3].clone()
    pos[:, 2] += SENSOR_HEIGHT
    coords = voxelize(pos, VOXEL_SIZE, POINT_RANGE).coords
    # SparseConv3d kernel (3, 1, 1), stride (2, 1, 1), no padding: output z' is active when an input z has
    # 2 z' <= z <= 2 z' + 2, i.e. z' in {z // 2 - 1, z // 2} (the first only for even z)
    z_size = 32
    z_out = (z_size - 3) // 2 + 1
    z = coords[:, 1]
    first = coords.clone()
    first[:, 1] = z // 2
    second = coords[z % 2 == 0].clone()
    second[:, 1] = z[z % 2 == 0] // 2 - 1
    candidates = torch.cat([first, second])
    candidates = candidates[(candidates[:, 1] >= 0) & (candidates[:, 1] < z_out)]
    return torch.unique(candidates, dim=0)


def tile_to(coords: torch.Tensor, target: int) -> torch.Tensor:
    """Repeat the frame as further batch elements until ``target`` voxels (the last copy is cut)."""
    copies = -(-target // coords.shape[0])
    tiled = torch.cat([torch.cat([torch.full_like(coords[:, :1], b), coords[:, 1:]], dim=1) for b in range(copies)])
    return tiled[:target]


def make_inputs(window: WindowIndex, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = window.num_voxels
    depth = CHANNELS // HEADS
    tensors = [torch.randn(n, HEADS, depth, generator=gen) for _ in range(3)]
    q, k, v = [t.to(device=device, dtype=dtype) for t in tensors]
    grad = torch.randn(n, HEADS, depth, generator=gen).to(device=device, dtype=dtype)
    return q, k, v, grad


# ------------------------------------------------------------------------------------------------
# baselines
# ------------------------------------------------------------------------------------------------
def naive_scatter(q, k, v, window: WindowIndex, eps=1e-6, block=4096):
    """Per-voxel outer products and index_add (the paper's "naive scatter"), blocks of ``block`` rows."""
    window_of_row = window.window_of_row
    n, heads, depth = q.shape
    q, k = q.relu(), k.relu()
    state = q.new_zeros(window.num_windows, heads, depth, depth)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        state = state.index_add(0, window_of_row[rows], torch.einsum("nhd,nhe->nhde", k[rows], v[rows]))
    norm = q.new_zeros(window.num_windows, heads, depth).index_add(0, window_of_row, k)
    outputs = []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        ids = window_of_row[rows]
        numerator = torch.einsum("nhd,nhde->nhe", q[rows], state[ids])
        denominator = (q[rows] * norm[ids]).sum(-1, keepdim=True)
        outputs.append(numerator / (denominator + eps))
    return torch.cat(outputs)


def pad_softmax(q, k, v, window: WindowIndex, max_score_bytes=256 * 2**20):
    """Windows padded to the longest, dense softmax attention with a key-padding mask, in window groups."""
    n, heads, depth = q.shape
    longest = window.max_count
    slots = torch.arange(longest, device=q.device)
    valid = slots.unsqueeze(0) < window.counts.unsqueeze(1)  # [W, Lmax]
    rows = torch.where(valid, window.offsets[:-1].unsqueeze(1) + slots, n)  # padding -> spare zero row
    group = max(1, max_score_bytes // (heads * longest * longest * 4))

    def padded(x):
        source = torch.cat([x, x.new_zeros(1, heads, depth)])
        return source[rows].permute(0, 2, 1, 3)  # [W, H, Lmax, D]

    q_pad, k_pad, v_pad = padded(q), padded(k), padded(v)
    outputs = []
    for start in range(0, window.num_windows, group):
        part = slice(start, start + group)
        mask = valid[part][:, None, None, :]
        outputs.append(F.scaled_dot_product_attention(q_pad[part], k_pad[part], v_pad[part], attn_mask=mask))
    out = torch.cat(outputs).permute(0, 2, 1, 3)  # [W, Lmax, H, D]
    return out[valid]  # rows back in window order


def run_method(name, q, k, v, window):
    if name == "sla":
        return scattered_linear_attention(q.relu(), k.relu(), v, window)
    if name == "naive_scatter":
        return naive_scatter(q, k, v, window)
    return pad_softmax(q, k, v, window)


# ------------------------------------------------------------------------------------------------
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round_robin(methods, q, k, v, grad, window, repeats, device):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    times = {f"{m}_{kind}": [] for m in methods for kind in ("fwd", "fwd_bwd")}

    def forward(name):
        with torch.no_grad():
            run_method(name, *leaves, window)

    def forward_backward(name):
        out = run_method(name, *leaves, window)
        out.backward(grad)
        for leaf in leaves:
            leaf.grad = None

    for name in methods:  # warm-up (Triton compilation, allocator, caches on the window index)
        forward(name)
        forward_backward(name)
    for _ in range(repeats):
        for name in methods:
            for kind, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
                synchronize(device)
                start = time.perf_counter()
                fn(name)
                synchronize(device)
                times[f"{name}_{kind}"].append((time.perf_counter() - start) * 1e3)
    return {f"{key}_ms": statistics.median(values) for key, values in times.items()}


def copy_bandwidth_gbs(device, dtype, nbytes=512 * 2**20):
    source = torch.empty(nbytes // torch.finfo(dtype).bits * 8, dtype=dtype, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    samples = []
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(samples) / 1e9  # read + write


def peak_memory_cpu_mb(args, method):
    """Peak RSS of a fresh process running one forward+backward of ``method`` (``None``: inputs only)."""
    command = [sys.executable, __file__, "--frame", str(args.frame), "--dtype", args.dtype, "--threads",
               str(args.threads), "--_memory-probe", method or "none"]
    if args.voxels:
        command += ["--voxels", str(args.voxels)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def memory_probe(args, window, q, k, v, grad):
    if args._memory_probe != "none":
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        run_method(args._memory_probe, *leaves, window).backward(grad)
    print(peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM (reset by exec, unlike ru_maxrss, which a child inherits)."""
    try:
        with open(Path("/proc") / "self" / "status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame", type=Path, default=None,
                        help="KITTI velodyne .bin (default: $GEOATTN_TEST_DATA or ../shared/data, "
                             "lidar/kitti_360/velodyne/000001.bin)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--voxels", type=int, default=0, help="tile the frame to this many voxels (0: as is)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (CPU)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--_memory-probe", dest="_memory_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.frame is None:
        root = os.environ.get("GEOATTN_TEST_DATA")
        root = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared" / "data"
        args.frame = root / "lidar" / "kitti_360" / "velodyne" / "000001.bin"
    if not args.frame.is_file():
        parser.exit(2, f"sla.py: frame not found: {args.frame} (pass --frame PATH.bin)\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "sla.py: --device cuda requested but CUDA is not available\n")
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        parser.exit(2, f"sla.py: --methods must be a subset of {','.join(METHODS)}\n")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    coords = stage_one_coords(args.frame)
    if args.voxels:
        coords = tile_to(coords, args.voxels)
    window = WindowIndex.from_coords(coords.to(device), WINDOW)
    q, k, v, grad = make_inputs(window, dtype, device)
    if args._memory_probe is not None:
        memory_probe(args, window, q, k, v, grad)
        return

    record = {
        "frame": args.frame.name,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "threads": args.threads,
        "sla_backend": select_backend(q),
        "n_voxels": window.num_voxels,
        "n_windows": window.num_windows,
        "max_window": window.max_count,
        "channels": CHANNELS,
        "heads": HEADS,
        "repeats": args.repeats,
    }
    # agreement of the linear-attention paths (both compute SLA; pad_softmax computes softmax attention)
    with torch.no_grad():
        if "naive_scatter" in methods:
            reference = naive_scatter(q.float(), k.float(), v.float(), window)
            ours = run_method("sla", q, k, v, window).float()
            record["sla_vs_naive_max_rel_err"] = float((ours - reference).abs().max() / reference.abs().max())
    record.update(time_round_robin(methods, q, k, v, grad, window, args.repeats, device))
    for other in ("naive_scatter", "pad_softmax"):
        if "sla" in methods and other in methods:
            for kind in ("fwd", "fwd_bwd"):
                record[f"sla_over_{other}_{kind}"] = record[f"sla_{kind}_ms"] / record[f"{other}_{kind}_ms"]

    # memory
    if device.type == "cuda":
        peaks = {}
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        for name in methods:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_method(name, *leaves, window).backward(grad)
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            for leaf in leaves:
                leaf.grad = None
        record["peak_memory_mb"] = peaks
    elif not args.no_memory:
        base = peak_memory_cpu_mb(args, None)
        record["peak_memory_mb"] = {name: peak_memory_cpu_mb(args, name) - base for name in methods}

    # minimal traffic of the SLA core against copy bandwidth
    element = torch.finfo(dtype).bits // 8
    forward_bytes = 4 * CHANNELS * element * window.num_voxels
    bandwidth = copy_bandwidth_gbs(device, dtype)
    record["copy_bandwidth_gbs"] = bandwidth
    if "sla" in methods:
        record["sla_fwd_min_bytes"] = forward_bytes
        record["sla_fwd_achieved_gbs"] = forward_bytes / (record["sla_fwd_ms"] / 1e3) / 1e9
        record["sla_fwd_bwd_achieved_gbs"] = 3 * forward_bytes / (record["sla_fwd_bwd_ms"] / 1e3) / 1e9
        record["sla_fwd_fraction_of_copy_bw"] = record["sla_fwd_achieved_gbs"] / bandwidth
    if args.json:
        print(json.dumps(record))
    else:
        print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
