import json

import pytest

from tests.examples import load_example


@pytest.fixture(scope="module")
def example():
    return load_example("kitti_projection")


def test_example_writes_overlay_and_metrics(example, real_data, tmp_path, capsys):
    output = tmp_path / "overlay.png"
    example.main(["--root", str(real_data / "fusion"), "--frame", "000008", "--augment", "--render", str(output),
                  "--json"])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["projected"] == metrics["points"] == 17238
    assert metrics["max_pixel_error_px"] < 1e-3 and metrics["augmented_max_pixel_error_px"] < 1e-3
    assert metrics["augmentation_round_trip_m"] < 1e-5
    assert metrics["points_in_boxes"] == metrics["num_lidar_pts"]
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 100_000
    assert not list(tmp_path.glob("*.png.*")) and len(list(tmp_path.iterdir())) == 1  # no temp file left


def test_example_missing_inputs_are_clear_errors(example, real_data, tmp_path):
    with pytest.raises(SystemExit, match="is not a folder"):
        example.main(["--root", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="neither"):
        example.main(["--root", str(real_data / "fusion"), "--frame", "000001"])
