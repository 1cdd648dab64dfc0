from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geoattn.nn.scatterformer import (
    CrossWindowInteraction,
    DepthwiseSparseConv3d,
    ScatteredLinearAttention,
    ScatterFormerBlock,
    depthwise_sparse_conv,
)
from geoattn.sparse.voxel import VoxelTensor, submanifold_neighbors
from geoattn.sparse.window import WindowIndex


def random_sites(num, batch=2, shape=(4, 9, 11), seed=0):
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(batch * shape[0] * shape[1] * shape[2], generator=gen)[:num]
    z_size, y_size, x_size = shape
    return torch.stack([cells // (z_size * y_size * x_size), cells // (y_size * x_size) % z_size,
                        cells // x_size % y_size, cells % x_size], dim=1)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 5), (1, 5, 1)])
def test_depthwise_conv_matches_dense_grouped_conv3d(kernel):
    shape = (4, 9, 11)
    coords = random_sites(150, shape=shape)
    window = WindowIndex.from_coords(coords, 4)
    channels = 6
    conv = DepthwiseSparseConv3d(channels, kernel).double()
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(150, channels, dtype=torch.float64, requires_grad=True)
    x_sorted = window.sort(x)
    out = conv(x_sorted, window)
    # dense reference: conv3d(groups=C) with 'same' padding, read at the active sites
    dense_in = VoxelTensor(x_sorted, window.sorted_coords, shape, 2).dense()
    padding = tuple(k // 2 for k in kernel)
    weight = conv.dense_weight()
    dense_out = F.conv3d(dense_in, weight, padding=padding, groups=channels)
    c = window.sorted_coords
    expected = dense_out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, conv.weight), grad, retain_graph=True)
    want = torch.autograd.grad(expected, (x, conv.weight), grad)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    # the table is cached on the window index
    assert conv.neighbour_table(window) is conv.neighbour_table(window)


def test_depthwise_conv_gradcheck():
    coords = random_sites(25, shape=(3, 4, 4))
    table = submanifold_neighbors(coords, (3, 3, 3))
    x = torch.randn(25, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(27, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_sparse_conv(a, b, table), (x, weight))
    with pytest.raises(ValueError, match="weight"):
        depthwise_sparse_conv(x, weight[:, :2], table)


def reference_sla_layer(layer: ScatteredLinearAttention, x, window):
    heads, depth = layer.heads, layer.channels // layer.heads
    q, k, v = layer.qkv(x).view(-1, 3, heads, depth).unbind(1)
    q, k = q.relu(), k.relu()
    out = torch.empty_like(v)
    for w in range(window.num_windows):
        rows = slice(int(window.offsets[w]), int(window.offsets[w + 1]))
        for h in range(heads):
            state = k[rows, h].T @ v[rows, h]
            norm = k[rows, h].sum(0)
            out[rows, h] = (q[rows, h] @ state) / ((q[rows, h] @ norm).unsqueeze(1) + layer.eps)
    return layer.proj(out.reshape(-1, layer.channels))


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_sla_layer_matches_reference(heads):
    coords = random_sites(200, shape=(4, 20, 20))
    window = WindowIndex.from_coords(coords, 6)
    layer = ScatteredLinearAttention(32, heads)
    x = window.sort(torch.randn(200, 32))
    torch.testing.assert_close(layer(x, window), reference_sla_layer(layer, x, window), atol=1e-5, rtol=1e-4)
    assert "heads=" in repr(layer)


def test_sla_layer_elu_feature_map_and_errors():
    coords = random_sites(50)
    window = WindowIndex.from_coords(coords, 4)
    layer = ScatteredLinearAttention(16, 2, feature_map="elu")
    assert layer(window.sort(torch.randn(50, 16)), window).shape == (50, 16)
    with pytest.raises(ValueError, match="channels"):
        ScatteredLinearAttention(10, 4)
    with pytest.raises(ValueError, match="feature_map"):
        ScatteredLinearAttention(16, 2, feature_map="softmax")
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(50, 8), window)
    with pytest.raises(ValueError, match="rows"):
        layer(torch.randn(49, 16), window)
    with pytest.raises(TypeError, match="window"):
        layer(torch.randn(50, 16), None)


def test_cross_window_interaction_composition():
    coords = random_sites(120, shape=(4, 26, 26))
    window = WindowIndex.from_coords(coords, 12)
    cwi = CrossWindowInteraction(16, window_size=12).eval()
    x = window.sort(torch.randn(120, 16))
    u = cwi.norm(x)
    quarters = u.chunk(4, dim=1)
    mixed = torch.cat([cwi.conv_cube(quarters[0], window), cwi.conv_x(quarters[1], window),
                       cwi.conv_y(quarters[2], window), quarters[3]], dim=1)
    mid = u + mixed
    expected = mid + cwi.fc2(torch.relu(cwi.fc1(cwi.ffn_norm(mid))))
    torch.testing.assert_close(cwi(x, window), expected)
    assert cwi.conv_x.kernel_size == (1, 1, 13) and cwi.conv_y.kernel_size == (1, 13, 1)
    with pytest.raises(ValueError, match="channels"):
        CrossWindowInteraction(18)


def test_block_is_equivariant_to_voxel_order():
    coords = random_sites(150, shape=(4, 30, 30))
    block = ScatterFormerBlock(16, heads=2, window_size=6).eval()
    x = torch.randn(150, 16)
    window = WindowIndex.from_coords(coords, 6)
    out = window.unsort(block(window.sort(x), window))
    perm = torch.randperm(150)
    other = WindowIndex.from_coords(coords[perm], 6)
    out_perm = other.unsort(block(other.sort(x[perm]), other))
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-4)


def test_block_backward_and_training_mode():
    coords = random_sites(100, shape=(4, 20, 20))
    window = WindowIndex.from_coords(coords, 6)
    block = ScatterFormerBlock(32, heads=4, window_size=6)
    x = window.sort(torch.randn(100, 32, requires_grad=True))
    block(x, window).square().mean().backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert "window_size=6" in repr(block)


def test_attention_pillar_pooling_matches_per_pillar_loop():
    from geoattn.nn.scatterformer import AttentionPillarPooling

    coords = random_sites(80, shape=(5, 4, 4))
    pool = AttentionPillarPooling(8, heads=2, height=5).eval()
    x = torch.randn(80, 8)
    out, pillar_coords = pool(x, coords)
    bev_keys = sorted({(b, y, xx) for b, _, y, xx in coords.tolist()})
    assert pillar_coords.tolist() == [list(k) for k in bev_keys]
    for p, (b, y, xx) in enumerate(bev_keys):
        members = ((coords[:, 0] == b) & (coords[:, 2] == y) & (coords[:, 3] == xx)).nonzero().squeeze(1)
        keys = x[members] + pool.height_embedding(coords[members, 1])
        query = x[members].max(0).values
        attended, _ = pool.attention(query[None, None], keys[None], keys[None], need_weights=False)
        expected = pool.norm(attended[0, 0] + query)
        torch.testing.assert_close(out[p], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="height"):
        AttentionPillarPooling(8, 2, height=3)(x, coords)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_block_on_cuda_matches_cpu():
    coords = random_sites(400, shape=(8, 40, 40))
    block = ScatterFormerBlock(32, heads=4, window_size=12).eval()
    x = torch.randn(400, 32)
    window = WindowIndex.from_coords(coords, 12)
    expected = block(window.sort(x), window)
    cuda_window = WindowIndex.from_coords(coords.cuda(), 12)
    out = block.cuda()(cuda_window.sort(x.cuda()), cuda_window)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# PyG-style inputs: (x, coords), Data / Batch, Sequential; dtypes; empty pooling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_class", [ScatteredLinearAttention, ScatterFormerBlock])
def test_coords_input_matches_window_index_input_in_input_order(layer_class):
    from geoattn.nn.scatterformer import cached_window_index

    coords = random_sites(150, shape=(4, 30, 30))
    layer = layer_class(16, heads=2, window_size=6).eval()
    x = torch.randn(150, 16)
    window = WindowIndex.from_coords(coords, 6)
    expected = window.unsort(layer(window.sort(x), window))
    torch.testing.assert_close(layer(x, coords), expected)
    # one index per coords tensor and window size, shared by every layer and call
    cached = cached_window_index(coords, 6)
    assert cached is cached_window_index(coords, 6) and cached is not cached_window_index(coords, 4)
    layer(x, coords)
    assert cached_window_index(coords, 6) is cached
    coords[:, 3] = coords[:, 3].flip(0)  # an in-place change rebuilds it
    rebuilt = cached_window_index(coords, 6)
    assert rebuilt is not cached
    torch.testing.assert_close(rebuilt.coords, coords)


@pytest.mark.xfail(strict=False, reason="order-dependent: after tests/examples in one serial process, PyG Sequential generates a forward that calls child 0 with child 1's arguments; passes alone and with -n 2; under investigation (issue 18)")
@pytest.mark.parametrize("layer_class", [ScatteredLinearAttention, ScatterFormerBlock])
def test_batch_of_voxel_clouds_from_dataloader_inside_pyg_sequential(layer_class):
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import Sequential

    # every cloud is voxelised on its own (batch column 0); the Batch's `batch` keeps the clouds apart
    clouds = []
    for seed in range(3):
        coords = random_sites(60, batch=1, shape=(2, 12, 12), seed=seed)
        clouds.append(Data(x=torch.randn(60, 16), coords=coords, num_nodes=60))
    model = Sequential("x, coords, batch", [
        (layer_class(16, heads=2, window_size=6), "x, coords, batch -> x"),
        (layer_class(16, heads=2, window_size=6), "x, coords, batch -> x"),
    ]).eval()
    batch = next(iter(DataLoader(clouds, batch_size=3)))
    out = model(batch.x, batch.coords, batch.batch)
    expected = torch.cat([model(cloud.x, cloud.coords, None) for cloud in clouds])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    # a Data / Batch with x and coords goes in directly
    torch.testing.assert_close(model[0](batch), model[0](batch.x, batch.coords, batch.batch))


def test_sla_float64_and_bfloat16_follow_the_parameters():
    coords = random_sites(120, shape=(4, 20, 20))
    window = WindowIndex.from_coords(coords, 6)
    layer = ScatteredLinearAttention(16, 2, window_size=6)
    x = torch.randn(120, 16)
    reference = layer.double()(x.double(), coords)
    assert reference.dtype == torch.float64
    torch.testing.assert_close(reference, reference_sla_layer(layer, window.sort(x.double()), window)[window.inverse])
    out = layer.bfloat16()(x.bfloat16(), coords)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), reference, atol=5e-2, rtol=5e-2)
    block = ScatterFormerBlock(16, 2, window_size=6).eval().to(torch.bfloat16)
    assert block(x.bfloat16(), coords).dtype == torch.bfloat16


def test_dtype_and_coords_checks_name_the_argument():
    from geoattn.nn.scatterformer import AttentionPillarPooling

    coords = random_sites(40)
    layer = ScatteredLinearAttention(8, 2)
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 .* got torch.float64"):
        layer(torch.randn(40, 8, dtype=torch.float64), coords)
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor, got dtype torch.int64"):
        layer(torch.randint(0, 3, (40, 8)), coords)
    with pytest.raises(TypeError, match=r"coords: expected an integer tensor, got dtype torch.float32"):
        layer(torch.randn(40, 8), coords.float())
    with pytest.raises(ValueError, match=r"coords: expected shape \(40, 4\)"):
        layer(torch.randn(40, 8), coords[:, :3])
    with pytest.raises(ValueError, match=r"batch: expected a 1-D tensor \[N\] with N=40"):
        layer(torch.randn(40, 8), coords, torch.zeros(39, dtype=torch.long))
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 .* got torch.float64"):
        ScatterFormerBlock(8, 2)(torch.randn(40, 8, dtype=torch.float64), coords)
    pool = AttentionPillarPooling(8, heads=2, height=4)
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 .* got torch.bfloat16"):
        pool(torch.randn(40, 8, dtype=torch.bfloat16), coords)
    with pytest.raises(TypeError, match="coords: expected an integer tensor"):
        pool(torch.randn(40, 8), coords.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_attention_pillar_pooling_dtypes_and_no_voxels(dtype):
    from geoattn.nn.scatterformer import AttentionPillarPooling

    pool = AttentionPillarPooling(8, heads=2, height=4).eval().to(dtype)
    out, pillar_coords = pool(torch.zeros(0, 8, dtype=dtype), torch.zeros(0, 4, dtype=torch.int32))
    assert out.shape == (0, 8) and out.dtype == dtype
    assert pillar_coords.shape == (0, 3) and pillar_coords.dtype == torch.int32
    coords = random_sites(30, shape=(4, 4, 4))
    out, _ = pool(torch.randn(30, 8, dtype=dtype), coords)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


@pytest.mark.slow
def test_sla_compiles_without_graph_breaks_and_matches_eager():
    coords = random_sites(120, shape=(4, 20, 20))
    window = WindowIndex.from_coords(coords, 6)
    layer = ScatteredLinearAttention(16, 2, window_size=6)
    x = window.sort(torch.randn(120, 16))
    eager = layer(x, window)  # builds the stage's chunk tables once (cached on the index), as a stage does
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(layer)(x, window)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer, fullgraph=False)
    torch.testing.assert_close(compiled(x, window), eager, atol=1e-5, rtol=1e-5)
