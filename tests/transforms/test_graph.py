from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from geoattn.data.largegt import sample_node_sequences
from geoattn.nn import LargeGTConv, LargeGTLocalAttention, LocalAugmenter
from geoattn.sparse import hop_features
from geoattn.transforms import GenerateNeighbourFeatures, HopFeatures, SampleTokens


@pytest.fixture(scope="module")
def cora(real_data, tmp_path_factory):
    from geoattn.data.planetoid import load_planetoid

    return load_planetoid(real_data / "graphs" / "planetoid", "Cora", tmp_path_factory.mktemp("cora"))


def test_hop_features_and_tokens_on_cora(cora):
    data = SampleTokens(5, seed=3)(HopFeatures(2)(cora.clone()))
    torch.testing.assert_close(data.hop_x, hop_features(cora.x, cora.edge_index, 2))
    assert torch.equal(data.tokens, sample_node_sequences(cora.edge_index, 5, seed=3, num_nodes=cora.num_nodes))
    assert data.token_index.shape == (2, 4 * cora.num_nodes)
    # the token edges drive the edge form exactly as the sequences drive the dense layer
    dense = LargeGTLocalAttention(8, heads=2, dropout=0.0).eval()
    conv = LargeGTConv(8, heads=2, dropout=0.0).eval()
    conv.load_state_dict(dense.state_dict())
    x = torch.randn(cora.num_nodes, 8)
    torch.testing.assert_close(conv(x, data.token_index), dense(x[data.tokens]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="data: HopFeatures needs data.x"):
        HopFeatures()(Data(edge_index=cora.edge_index, num_nodes=cora.num_nodes))
    assert repr(SampleTokens(5, seed=3)) == "SampleTokens(sequence_length=5, seed=3)"


def test_token_edges_are_shifted_when_graphs_are_batched():
    from torch_geometric.loader import DataLoader

    graphs = [SampleTokens(3, seed=s)(Data(x=torch.randn(6, 4), edge_index=torch.randint(0, 6, (2, 12))))
              for s in range(2)]
    batch = next(iter(DataLoader(graphs, batch_size=2)))
    torch.testing.assert_close(batch.token_index, torch.cat([graphs[0].token_index, graphs[1].token_index + 6], 1))


def test_generated_neighbour_features_are_seeded_draws_of_the_augmenter(cora):
    augmenter = LocalAugmenter(cora.num_features, hidden_channels=16, latent_channels=4)
    transform = GenerateNeighbourFeatures(augmenter, num_samples=2, seed=5)
    data = transform(cora.clone())
    expected = augmenter.sample(cora.x, 2, generator=torch.Generator().manual_seed(5))
    assert data.x_generated.shape == (2, cora.num_nodes, cora.num_features)
    torch.testing.assert_close(data.x_generated, expected)
    torch.testing.assert_close(transform(cora.clone()).x_generated, data.x_generated)
    with pytest.raises(TypeError, match="augmenter: expected a LocalAugmenter"):
        GenerateNeighbourFeatures(torch.nn.Linear(2, 2))
