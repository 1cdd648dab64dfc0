import pytest

from geoattn.data.planetoid import load_planetoid


def test_loads_public_split_from_a_copy(real_data, tmp_path):
    root = real_data / "graphs" / "planetoid"
    data = load_planetoid(root, "Cora", tmp_path)
    assert data.num_nodes == 2708 and data.x.size(1) == 1433
    assert int(data.train_mask.sum()) == 140 and int(data.val_mask.sum()) == 500 and int(data.test_mask.sum()) == 1000
    assert (tmp_path / "Cora" / "processed").is_dir() and not (root / "Cora" / "processed").exists()


def test_missing_folder_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="--root: .* not found"):
        load_planetoid(tmp_path, "Cora", tmp_path / "work")


def test_missing_raw_file_is_named_and_nothing_is_downloaded(real_data, tmp_path):
    import shutil

    raw = tmp_path / "data" / "Cora" / "raw"
    shutil.copytree(real_data / "graphs" / "planetoid" / "Cora" / "raw", raw)
    (raw / "ind.cora.graph").unlink()
    with pytest.raises(FileNotFoundError, match=r"ind\.cora\.graph not found"):
        load_planetoid(tmp_path / "data", "Cora", tmp_path / "work")


def test_second_call_with_the_same_workdir(real_data, tmp_path):
    root = real_data / "graphs" / "planetoid"
    first = load_planetoid(root, "Cora", tmp_path)
    second = load_planetoid(root, "Cora", tmp_path)
    assert second.num_nodes == first.num_nodes and (second.edge_index == first.edge_index).all()
