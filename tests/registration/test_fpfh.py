"""The Open3D FPFH + RANSAC + ICP baseline on a real fixture (the Stanford bunny) under a large rotation."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("open3d")

from geoattn.registration.fpfh import fpfh_registration  # noqa: E402
from geoattn.registration.io import read_point_cloud  # noqa: E402
from geoattn.registration.metrics import relative_rotation_error, relative_translation_error  # noqa: E402
from geoattn.sparse.geometry import make_transform, random_rotation, transform_points  # noqa: E402


def test_fpfh_registers_rotated_bunny(real_data):
    bunny = read_point_cloud(real_data / "registration" / "bunny" / "bun_zipper_res3.ply").double()
    truth = make_transform(random_rotation(generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                           torch.tensor([0.05, -0.02, 0.03], dtype=torch.float64))
    src = transform_points(bunny, torch.linalg.inv(truth))
    result = fpfh_registration(src.float(), bunny.float(), voxel_size=0.005, seed=0)
    assert float(relative_rotation_error(result["transform"], truth)) < 2.0
    assert float(relative_translation_error(result["transform"], truth)) < 0.005
    assert set(result["timings"]) == {"prepare", "global", "icp"}
    with pytest.raises(ValueError, match="confidence"):
        fpfh_registration(src.float(), bunny.float(), confidence=1000)
    assert not math.isnan(result["fitness"])
