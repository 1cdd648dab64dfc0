"""LocalAugmenter (conditional VAE), consistency loss, BranchConcat, combine_augmented."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geoattn.nn import (BranchConcat, LocalAugmenter, UncertaintySelector, combine_augmented, consistency_loss,
                        row_normalize)


def _toy_graph(num_nodes=12, num_features=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(num_nodes, num_features, generator=generator) < 0.4).float()
    ring = torch.arange(num_nodes)
    edge_index = torch.stack([torch.cat([ring, (ring + 1) % num_nodes]), torch.cat([(ring + 1) % num_nodes, ring])])
    return x, edge_index


@pytest.mark.parametrize("variant", ["citation", "ogb"])
def test_forward_shapes_and_repr(variant):
    model = LocalAugmenter(6, hidden_channels=16, latent_channels=3, variant=variant)
    assert repr(model) == f"LocalAugmenter(6, hidden_channels=16, latent_channels=3, variant='{variant}')"
    x_neighbor, x_center = torch.rand(5, 6), torch.rand(5, 6)
    reconstruction, mean, log_var = model(x_neighbor, x_center)
    assert reconstruction.shape == (5, 6) and mean.shape == log_var.shape == (5, 3)
    low = 0.0 if variant == "citation" else -1.0
    assert reconstruction.min() >= low and reconstruction.max() <= 1.0
    assert torch.isfinite(model.loss(reconstruction, x_neighbor, mean, log_var))


def test_loss_matches_reference_elbo():
    model = LocalAugmenter(4, hidden_channels=8, latent_channels=2)
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    reconstruction = torch.tensor([[0.9, 0.2, 0.7, 0.1], [0.3, 0.1, 0.8, 0.6]])
    mean, log_var = torch.tensor([[0.5, -1.0], [0.0, 0.2]]), torch.tensor([[0.1, -0.3], [0.0, 0.4]])
    bce = -sum(t * math.log(r) + (1 - t) * math.log(1 - r)
               for row_t, row_r in zip(target.tolist(), reconstruction.tolist()) for t, r in zip(row_t, row_r))
    kl = sum(-0.5 * (1 + lv - m * m - math.exp(lv))
             for row_m, row_lv in zip(mean.tolist(), log_var.tolist()) for m, lv in zip(row_m, row_lv))
    expected = (bce + kl) / 2
    assert float(model.loss(reconstruction, target, mean, log_var)) == pytest.approx(expected, rel=1e-5)


def test_sample_equals_decode_of_the_same_noise():
    """The split-weight fast path of `sample` equals decode(z, x) with the same z."""
    for variant in ("citation", "ogb"):
        model = LocalAugmenter(7, hidden_channels=16, latent_channels=3, variant=variant).double()
        model.train()
        x = torch.rand(9, 7, dtype=torch.float64)
        generator = torch.Generator().manual_seed(5)
        samples = model.sample(x, 2, generator=generator)
        assert model.training  # flag restored
        generator = torch.Generator().manual_seed(5)
        model.eval()
        for sample in samples:
            z = torch.randn(9, 3, generator=generator, dtype=torch.float64)
            torch.testing.assert_close(sample, model.decode(z, x))



@pytest.mark.parametrize("variant", ["citation", "ogb"])
def test_cached_sampler_equals_decode_dense_and_sparse(variant):
    """`sampler` caches the centre term; every call equals decode(z, x) with that call's noise."""
    model = LocalAugmenter(7, hidden_channels=16, latent_channels=3, variant=variant).double()
    x = (torch.rand(9, 7, dtype=torch.float64) < 0.4).double()
    for centres in (x, x.to_sparse()):
        draw = model.sampler(centres, generator=torch.Generator().manual_seed(3))
        reference_noise = torch.Generator().manual_seed(3)
        model.eval()
        for _ in range(2):
            z = torch.randn(9, 3, generator=reference_noise, dtype=torch.float64)
            sample = draw()
            assert sample.dtype == torch.float64 and sample.shape == (9, 7)
            torch.testing.assert_close(sample, model.decode(z, x))
        normalized = model.sampler(centres, generator=torch.Generator().manual_seed(3), normalize=True)()
        first = model.decode(torch.randn(9, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), x)
        torch.testing.assert_close(normalized, row_normalize(first))


def test_cached_sampler_bfloat16_snapshot_and_freshness():
    model = LocalAugmenter(6, hidden_channels=16, latent_channels=3)
    x, _ = _toy_graph()
    model.train()
    exact = model.sampler(x, generator=torch.Generator().manual_seed(4), normalize=True)
    fast = model.sampler(x.to_sparse(), generator=torch.Generator().manual_seed(4), normalize=True,
                         dtype=torch.bfloat16)
    assert model.training  # the module is untouched: the sampler holds eval-mode copies
    a, b = exact(), fast()
    assert b.dtype == torch.float32 and b.shape == x.shape
    torch.testing.assert_close(b, a, atol=2e-2 * float(a.abs().max()), rtol=2e-2)  # bf16 decode, same noise
    assert not torch.equal(exact(), exact())  # fresh noise per call
    assert exact().sum(-1).allclose(torch.ones(x.size(0)))
    snapshot = model.sampler(x, generator=torch.Generator().manual_seed(5))
    reference = model.sampler(x, generator=torch.Generator().manual_seed(5))()
    with torch.no_grad():
        model.decoder_output[0].bias.add_(5.0)
    torch.testing.assert_close(snapshot(), reference)  # weights as they were when the sampler was made
    empty = model.sampler(x[:0])()
    assert empty.shape == (0, 6)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[N, F\] with F=6"):
        model.sampler(torch.zeros(3, 5))

def test_sample_shape_dtype_device_and_freshness():
    model = LocalAugmenter(6, hidden_channels=16, latent_channels=3)
    x, _ = _toy_graph()
    one = model.sample(x)
    assert one.shape == x.shape and one.dtype == x.dtype and one.device == x.device
    stack = model.sample(x, 3)
    assert stack.shape == (3, *x.shape)
    assert not torch.equal(stack[0], stack[1])  # fresh noise per sample
    assert not torch.equal(model.sample(x), model.sample(x))  # and per call
    a = model.sample(x, generator=torch.Generator().manual_seed(1))
    b = model.sample(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    normalized = model.sample(x, normalize=True)
    torch.testing.assert_close(normalized.sum(-1), torch.ones(x.size(0)))
    assert model.sample(x[:0]).shape == (0, 6)
    assert model.sample(x.double()).dtype == torch.float64  # computed in float32, returned as float64
    fast = LocalAugmenter(6, hidden_channels=16, latent_channels=3).to(torch.bfloat16)
    assert fast.sample(x).dtype == torch.float32


def test_fit_reduces_loss_and_is_seeded():
    x, edge_index = _toy_graph(num_nodes=30, num_features=8)
    first = LocalAugmenter(8, hidden_channels=32, latent_channels=2)
    history = first.fit(x, edge_index, epochs=8, batch_size=16, lr=0.01, seed=3, progress=False)
    assert history["steps"] == 8 * math.ceil(60 / 16)
    assert history["loss"][-1] < history["loss"][0]
    torch.manual_seed(123)
    third = LocalAugmenter(8, hidden_channels=32, latent_channels=2)
    torch.manual_seed(123)
    fourth = LocalAugmenter(8, hidden_channels=32, latent_channels=2)
    third.fit(x, edge_index, epochs=2, batch_size=16, seed=9, progress=False)
    fourth.fit(x, edge_index, epochs=2, batch_size=16, seed=9, progress=False)
    for (name, a), (_, b) in zip(third.state_dict().items(), fourth.state_dict().items()):
        assert torch.equal(a, b), name


def test_fit_learns_the_neighbour_distribution():
    """Neighbours of a node with feature 0 set always have feature 1 set, and vice versa: the decoder
    must learn that conditional dependency."""
    num_nodes = 40
    x = torch.zeros(num_nodes, 2)
    x[: num_nodes // 2, 0] = 1  # group A
    x[num_nodes // 2:, 1] = 1  # group B
    source = torch.arange(num_nodes)
    target = (source + num_nodes // 2) % num_nodes  # every edge joins A and B
    edge_index = torch.stack([source, target])
    model = LocalAugmenter(2, hidden_channels=16, latent_channels=2)
    model.fit(x, edge_index, epochs=60, batch_size=8, lr=0.01, seed=0, progress=False)
    generated = model.sample(x, generator=torch.Generator().manual_seed(0))
    assert generated[: num_nodes // 2, 1].mean() > 0.8 and generated[: num_nodes // 2, 0].mean() < 0.2
    assert generated[num_nodes // 2:, 0].mean() > 0.8 and generated[num_nodes // 2:, 1].mean() < 0.2


def test_fit_with_selector_restores_best_checkpoint():
    x, edge_index = _toy_graph(num_nodes=20, num_features=5)
    states = []

    def selector(model):  # prefers the checkpoint seen at step 4
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return -abs(len(states) - 2)

    model = LocalAugmenter(5, hidden_channels=8, latent_channels=2)
    history = model.fit(x, edge_index, epochs=3, batch_size=8, selector=selector, select_every=2, warmup_steps=0,
                        progress=False)
    assert history["best_step"] == 4 and history["steps"] == 15
    for key, value in model.state_dict().items():
        assert torch.equal(value, states[1][key])


def test_uncertainty_selector_scores():
    x, edge_index = _toy_graph(num_nodes=24, num_features=6)
    y = torch.arange(24) % 3
    model = LocalAugmenter(6, hidden_channels=8, latent_channels=2)
    for criterion in ("label", "bald"):
        selector = UncertaintySelector(row_normalize(x), edge_index, y, torch.arange(12), generator_x=x, epochs=5,
                                       finetune_epochs=2, mc_samples=4, criterion=criterion)
        score = selector(model)
        assert math.isfinite(score)
        if criterion == "bald":
            assert score >= -1e-6  # mutual information is non-negative
        else:
            assert score <= 1e-6  # Jensen: NLL of the mean <= mean NLL
        selector.on_improvement(model)
    history = model.fit(x, edge_index, epochs=1, batch_size=8, selector=selector, select_every=1, warmup_steps=0,
                        progress=False)
    assert history["best_step"] is not None


def test_save_load_round_trip_is_bit_exact(tmp_path):
    for variant in ("citation", "ogb"):
        model = LocalAugmenter(6, hidden_channels=16, latent_channels=3, variant=variant)
        x, edge_index = _toy_graph()
        model.fit(x, edge_index, epochs=2, batch_size=4, progress=False, seed=0)
        path = tmp_path / f"{variant}.pt"
        model.save(path)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(variant)) == [f"{variant}.pt"]
        loaded = LocalAugmenter.load(path)
        assert loaded.config == model.config and not loaded.training
        for (key, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), key
        a = model.sample(x, generator=torch.Generator().manual_seed(2))
        b = loaded.sample(x, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
        # loads with the weights-only unpickler (no pickled module inside)
        payload = torch.load(path, weights_only=True)
        assert set(payload) == {"format", "config", "state_dict", "metadata"}
        assert payload["metadata"] == {} and loaded.metadata == {}


def test_save_records_the_fit_metadata_and_honours_the_umask(tmp_path):
    import os

    model = LocalAugmenter(6, hidden_channels=16, latent_channels=3)
    path = tmp_path / "generator.pt"
    previous = os.umask(0o027)
    try:
        model.save(path, metadata={"seed": 3, "epochs": 10, "select": False})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640
    assert LocalAugmenter.load(path).metadata == {"seed": 3, "epochs": 10, "select": False}
    with pytest.raises(TypeError, match=r"metadata\.seed"):
        model.save(tmp_path / "bad.pt", metadata={"seed": torch.tensor(3)})
    assert not (tmp_path / "bad.pt").exists()


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="LocalAugmenter.save"):
        LocalAugmenter.load(path)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n" * 4)
    with pytest.raises(ValueError, match=r"notes\.txt.*LocalAugmenter\.save"):
        LocalAugmenter.load(text)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        LocalAugmenter(4, variant="gaussian")
    with pytest.raises(ValueError, match="num_features"):
        LocalAugmenter(0)
    model = LocalAugmenter(4, hidden_channels=8, latent_channels=2)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[N, F\] with F=4, got shape \(3, 5\)"):
        model.sample(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="floating-point"):
        model.sample(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(torch.zeros(3, 4), 0)
    with pytest.raises(ValueError, match="edge_index"):
        model.fit(torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="no \\(neighbour, centre\\) pairs"):
        model.fit(torch.zeros(3, 4), torch.tensor([[0, 1], [0, 1]]))  # only self loops
    with pytest.raises(ValueError, match=r"node indices in \[0, 3\)"):
        model.fit(torch.zeros(3, 4), torch.tensor([[0, 5], [1, 2]]))


def _reference_consistency(log_probs, temperature):
    probs = [lp.exp() for lp in log_probs]
    mean = sum(probs) / len(probs)
    sharp = mean ** (1 / temperature)
    sharp = sharp / sharp.sum(1, keepdim=True)
    return sum(((p - sharp) ** 2).sum(1).mean() for p in probs) / len(probs)


def test_consistency_loss_matches_reference_and_gradient():
    log_probs = [F.log_softmax(torch.randn(5, 3, dtype=torch.float64, requires_grad=True), -1) for _ in range(4)]
    torch.testing.assert_close(consistency_loss(log_probs, 0.5), _reference_consistency(log_probs, 0.5))
    logits = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    # the sharpened target carries no gradient: compare with the reference built on a detached target
    def func(logits):
        return consistency_loss(F.log_softmax(logits, -1), 0.5)
    loss = func(logits)
    loss.backward()
    probs = F.softmax(logits.detach(), -1)
    mean = probs.mean(0)
    sharp = mean ** 2 / (mean ** 2).sum(-1, keepdim=True)
    # d/dp of mean_k mean_i ||sharp - p_ki||^2 = 2 (p - sharp) / (K N), then through softmax
    grad_p = 2 * (probs - sharp) / (3 * 5)
    expected = probs * (grad_p - (grad_p * probs).sum(-1, keepdim=True))
    torch.testing.assert_close(logits.grad, expected)


def test_consistency_loss_zero_when_samples_agree():
    one_hot = torch.log(F.one_hot(torch.tensor([0, 2, 1]), 3).float().clamp_min(1e-30))
    assert float(consistency_loss([one_hot] * 4, 0.5)) == pytest.approx(0.0, abs=1e-12)
    agree = F.log_softmax(torch.randn(6, 4), -1)
    assert float(consistency_loss(torch.stack([agree] * 3), 1.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(consistency_loss([agree] * 3, 0.5)) > 0  # sharpening pulls towards the argmax
    assert float(consistency_loss([agree[:0]] * 2)) == 0.0  # no nodes


def test_consistency_loss_bad_arguments():
    with pytest.raises(ValueError, match="log_probs"):
        consistency_loss(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="temperature"):
        consistency_loss([torch.zeros(4, 3)], 0.0)


def test_branch_concat():
    branches = [nn.Linear(3, 2), nn.Linear(5, 4)]
    layer = BranchConcat(branches)
    a, b = torch.randn(7, 3), torch.randn(7, 5)
    torch.testing.assert_close(layer([a, b]), torch.cat([branches[0](a), branches[1](b)], -1))
    assert "2 x" in repr(layer)
    layer.reset_parameters()
    with pytest.raises(ValueError, match="expected 2 tensors"):
        layer([a])
    with pytest.raises(ValueError, match="branches"):
        BranchConcat([])


def test_combine_augmented():
    x, x_hat, x_hat2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(combine_augmented(x, x_hat), (x + x_hat) / 2)
    torch.testing.assert_close(combine_augmented(x, [x_hat, x_hat2]), (x + (x_hat + x_hat2) / 2) / 2)
    assert combine_augmented(x, [x_hat, x_hat2], "concat").shape == (4, 9)
    with pytest.raises(ValueError, match="style"):
        combine_augmented(x, x_hat, "sum")
    with pytest.raises(ValueError, match=r"x_generated\[0\]"):
        combine_augmented(x, torch.randn(4, 2))


def test_row_normalize():
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    torch.testing.assert_close(row_normalize(x), torch.tensor([[0.25, 0.75], [0.0, 0.0]]))


def test_gradcheck_float64():
    # (consistency_loss stops the gradient at its sharpened target, so finite differences do not apply
    # to it; its gradient is checked analytically above.)
    model = LocalAugmenter(3, hidden_channels=5, latent_channels=2, variant="citation").double().eval()
    x_neighbor = torch.rand(4, 3, dtype=torch.float64)
    x_center = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)

    def elbo(center):
        reconstruction, mean, log_var = model(x_neighbor, center)
        return model.loss(reconstruction, x_neighbor, mean, log_var)

    assert torch.autograd.gradcheck(elbo, (x_center,))
    z = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda latent: model.decode(latent, x_center.detach()), (z,))
