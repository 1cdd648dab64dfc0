from __future__ import annotations

import pytest
import torch

from geoattn import backends
from geoattn.kernels.sla import scattered_linear_attention, select_backend
from geoattn.kernels.sla.naive import sla_naive
from geoattn.sparse.window import WindowIndex

needs_triton = pytest.mark.skipif(backends.triton() is None, reason="triton not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
# compiled kernels on a GPU machine; the interpreter (TRITON_INTERPRET=1, set by conftest) on CPU otherwise
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def window_of_lengths(lengths, batch_split=None) -> WindowIndex:
    """A WindowIndex whose windows (in order) have the given lengths: one BEV window column per entry."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    total = int(lengths.sum())
    coords = torch.zeros(total, 4, dtype=torch.long)
    window_id = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    coords[:, 3] = window_id * 4  # window width 4 along x
    coords[:, 1] = torch.arange(total) % 7  # varied z (full-height windows ignore it)
    index = WindowIndex.from_coords(coords, 4)
    assert index.counts.tolist() == [int(n) for n in lengths if n > 0]
    return index


def make_inputs(num_rows, heads, depth, dtype=torch.float32, scale=1.0, seed=0, floor=0.0):
    """ReLU-feature-mapped q, k (plus ``floor``, which keeps fp32 comparisons away from ~0 denominators)."""
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(num_rows, heads, depth, generator=gen) * scale).relu() + floor
    k = (torch.randn(num_rows, heads, depth, generator=gen) * scale).relu() + floor
    v = torch.randn(num_rows, heads, depth, generator=gen) * scale + scale / 2
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def forward_and_grads(backend, q, k, v, window, grad):
    y = scattered_linear_attention(q, k, v, window, backend=backend)
    grads = torch.autograd.grad(y, (q, k, v), grad)
    return (y,) + grads


def to_device(window: WindowIndex, device) -> WindowIndex:
    return WindowIndex.from_coords(window.coords.to(device), window.window_shape, window.shift)


def assert_matches_reference(backend, lengths, heads, depth=32, atol=1e-5, rtol=1e-4, device="cpu"):
    window = window_of_lengths(lengths)
    q, k, v = make_inputs(window.num_voxels, heads, depth, floor=0.05)
    grad = torch.randn(window.num_voxels, heads, depth)
    # the reference runs in float64 so that only the tested path's float32 rounding is measured
    expected = forward_and_grads("naive", *[t.detach().double().requires_grad_() for t in (q, k, v)], window,
                                 grad.double())
    device_window = to_device(window, device)
    inputs = [t.detach().to(device).requires_grad_() for t in (q, k, v)]
    actual = forward_and_grads(backend, *inputs, device_window, grad.to(device))
    for name, a, e in zip(("y", "dq", "dk", "dv"), actual, expected):
        a, e = a.cpu(), e.to(a.dtype)
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{backend} {name}: {m}")


def test_naive_is_the_definition():
    window = window_of_lengths([3, 2])
    q, k, v = make_inputs(5, 1, 4)
    y = sla_naive(q, k, v, window.offsets, eps=1e-6)
    for rows in (slice(0, 3), slice(3, 5)):
        state = k[rows, 0].T @ v[rows, 0]
        norm = k[rows, 0].sum(0)
        expected = (q[rows, 0] @ state) / ((q[rows, 0] @ norm).unsqueeze(1) + 1e-6)
        torch.testing.assert_close(y[rows, 0], expected)


@pytest.mark.parametrize("lengths", [[1], [31], [33], [1000], [3000], [1, 31, 33, 64, 65, 2, 1000, 5]])
def test_cpu_matches_reference_window_lengths(lengths):
    assert_matches_reference("cpu", lengths, heads=4)


@pytest.mark.parametrize("heads", range(1, 9))
def test_cpu_matches_reference_heads(heads):
    assert_matches_reference("cpu", [7, 40, 1, 90], heads=heads, depth=8 * (1 + heads % 3))


def test_cpu_gradcheck_float64():
    window = window_of_lengths([1, 4, 37])
    q, k, v = make_inputs(window.num_voxels, 2, 3, dtype=torch.float64, floor=0.1)

    def function(q, k, v):
        return scattered_linear_attention(q, k, v, window, backend="cpu")

    assert torch.autograd.gradcheck(function, (q, k, v))


@pytest.mark.parametrize("backend", ["naive", "cpu", pytest.param("triton", marks=needs_triton)])
def test_empty_batch(backend):
    window = WindowIndex.from_coords(torch.zeros(0, 4, dtype=torch.long), 12)
    q, k, v = make_inputs(0, 4, 32)
    y = scattered_linear_attention(q, k, v, window, backend=backend)
    assert y.shape == (0, 4, 32)
    y.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_precision_large_window_is_finite_and_close(dtype):
    # a full stage-1 window (12 x 12 x 16) with activations of std 4 overflows fp16 states (65504) unless
    # states, normaliser and division stay in float32
    window = window_of_lengths([2304])
    q, k, v = make_inputs(2304, 2, 32, dtype=dtype, scale=4.0)
    y = scattered_linear_attention(q, k, v, window, backend="cpu")
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    reference = sla_naive(q.float(), k.float(), v.float(), window.offsets)
    assert ((y.float() - reference).abs().max() / reference.abs().max()) < 1e-2
    y.float().square().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()


@needs_triton
@pytest.mark.parametrize("lengths,heads,depth", [([1, 31, 33], 2, 32), ([300, 5], 1, 32), ([40, 3], 3, 16),
                                                 ([17, 50], 1, 24)])
def test_triton_matches_reference(lengths, heads, depth):
    # interpreted on CPU (TRITON_INTERPRET=1 from conftest): small inputs; 300 rows span two 256-row blocks
    assert_matches_reference("triton", lengths, heads=heads, depth=depth, device=TRITON_DEVICE)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision_large_window(dtype):
    window = window_of_lengths([2304])
    q, k, v = make_inputs(2304, 1, 32, dtype=dtype, scale=4.0)
    y = scattered_linear_attention(*[t.to(TRITON_DEVICE) for t in (q, k, v)], to_device(window, TRITON_DEVICE),
                                   backend="triton").cpu()
    assert y.dtype == dtype and torch.isfinite(y).all()
    reference = sla_naive(q.float(), k.float(), v.float(), window.offsets)
    assert ((y.float() - reference).abs().max() / reference.abs().max()) < 1e-2


@needs_cuda
@needs_triton
@pytest.mark.parametrize("lengths", [[1], [31], [33], [1000], [3000], [1, 31, 33, 64, 65, 2, 1000, 5, 2304]])
@pytest.mark.parametrize("heads", [1, 4, 8])
def test_triton_cuda_matches_reference(lengths, heads):
    assert_matches_reference("triton", lengths, heads=heads, device="cuda")


@needs_cuda
def test_cuda_dispatch_and_torch_path_on_cuda():
    window = window_of_lengths([5, 700])
    q, k, v = make_inputs(window.num_voxels, 4, 32)
    assert select_backend(q.cuda()) == ("triton" if backends.triton() is not None else "cpu")
    assert_matches_reference("cpu", [5, 700], heads=4, device="cuda")


def test_backend_selection(monkeypatch):
    q = torch.zeros(1, 1, 4)
    monkeypatch.delenv("GEOATTN_BACKEND", raising=False)
    assert select_backend(q) == "cpu"
    assert select_backend(q, "naive") == "naive"
    monkeypatch.setenv("GEOATTN_BACKEND", "naive")
    assert select_backend(q) == "naive"
    with pytest.raises(ValueError, match="backend"):
        select_backend(q, "fast")


def test_bad_arguments():
    window = window_of_lengths([3])
    q, k, v = make_inputs(3, 2, 4)
    with pytest.raises(ValueError, match="q"):
        scattered_linear_attention(q[:, 0], k, v, window)
    with pytest.raises(ValueError, match="k, v"):
        scattered_linear_attention(q, k[:, :1], v, window)
    with pytest.raises(TypeError, match="k, v"):
        scattered_linear_attention(q, k.double(), v, window)
    with pytest.raises(ValueError, match="rows"):
        scattered_linear_attention(q[:2], k[:2], v[:2], window)
    with pytest.raises(TypeError, match="window"):
        scattered_linear_attention(q, k, v, window.offsets)


def _nvidia_compiler_available() -> bool:
    triton = backends.triton()
    if triton is None:
        return False
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception:
        return False
    return True


_COMPILE_SCRIPT = r"""
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from geoattn.kernels.sla import triton as kernels

state_buffers = {"state_ptr", "norm_ptr", "scale_ptr", "grad_state_ptr", "grad_norm_ptr"}
for dtype in ("fp32", "bf16"):
    for kernel in (kernels._state_kernel, kernels._output_kernel, kernels._grad_query_kernel,
                   kernels._grad_key_value_kernel):
        names = list(inspect.signature(kernel.fn).parameters)
        constants = {"BLOCK_D": 32, "CHUNK": kernels.CHUNK_ROWS, "PRECISION": "ieee" if dtype == "fp32" else "tf32"}
        signature, constexprs = {}, {}
        for position, name in enumerate(names):
            if name in constants:
                signature[name] = "constexpr"
                constexprs[(position,)] = constants[name]
            elif name.startswith("block_"):
                signature[name] = "*i64"
            elif name in state_buffers:
                signature[name] = "*fp32"
            elif name.endswith("_ptr"):
                signature[name] = "*" + dtype
            else:
                signature[name] = "fp32" if name == "eps" else "i32"
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32))
        assert compiled.asm.get("cubin"), kernel.fn.__name__
print("compiled")
"""


@pytest.mark.skipif(not _nvidia_compiler_available(), reason="triton without its NVIDIA backend")
def test_triton_kernels_compile_for_sm90_without_a_gpu():
    # the interpreter never lowers the kernels; compiling them to H100 cubins (ptxas ships with triton) catches
    # type and layout errors on machines without a GPU. A fresh process: the interpreter flag is read at import.
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-2000:]


def test_cpu_path_compiles_without_graph_breaks():
    """torch.compile traces the CPU path whole: no torch.get_num_threads() (a graph break) and no value read of
    the offsets in the segment sum of windows longer than one chunk."""
    window = window_of_lengths([70, 3, 40, 1])  # windows of several 32-row chunks: the segment sum runs
    q, k, v = make_inputs(window.num_voxels, 2, 8)
    scattered_linear_attention(q, k, v, window, backend="cpu")  # the partition's tables are built once, eagerly
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # with several threads the multi-threaded branch is the one that asks for them
    try:
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(
            lambda q, k, v: scattered_linear_attention(q, k, v, window, backend="cpu"))(q, k, v)
    finally:
        torch.set_num_threads(previous)
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
