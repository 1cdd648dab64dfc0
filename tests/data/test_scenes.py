"""Synthetic scenes: ray casting against analytic answers, determinism, pair ground truth."""
from __future__ import annotations

import math

import numpy as np
import torch

from geoattn.data.scenes import (EVAL_SEEDS, TRAIN_SEEDS, Primitive, Room, SyntheticPairs, camera_pose, depth_scan,
                                 fragment_pair, random_room, raycast)
from geoattn.sparse.geometry import transform_points
from geoattn.sparse.neighbors import knn


def test_raycast_room_and_primitives():
    room = Room(np.array([4.0, 4.0, 3.0]))
    origins = np.tile([[2.0, 2.0, 1.0]], (3, 1))
    directions = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 0, 1.0]])
    assert np.allclose(raycast(room, origins, directions), [2.0, 1.0, 2.0])
    room.primitives += [Primitive("box", np.array([3.0, 2.0, 1.0]), np.array([0.2, 0.2, 0.2]), math.pi / 4),
                        Primitive("sphere", np.array([2.0, 2.0, 0.3]), np.full(3, 0.1)),
                        Primitive("cylinder", np.array([2.0, 2.0, 2.0]), np.array([0.3, 0.3, 0.4]))]
    hit = raycast(room, origins, directions)
    assert np.allclose(hit, [1.0 - 0.2 * math.sqrt(2), 0.6, 0.6])  # rotated box corner, sphere top, cylinder cap
    side = raycast(room, np.array([[1.0, 2.0, 2.0]]), np.array([[1.0, 0.0, 0.0]]))
    assert np.allclose(side, [0.7])  # cylinder wall


def test_depth_scan_points_lie_in_front_of_camera():
    rng = np.random.default_rng(0)
    room = random_room(rng)
    pose = camera_pose(room.size / 2, 0.3, -0.2)
    points = depth_scan(room, pose, rng, resolution=(12, 16))
    local = (points - pose[:3, 3]) @ pose[:3, :3]
    assert points.shape[1] == 3 and len(points) > 100
    assert (local[:, 2] > 0).all() and (local[:, 2] < 4.0).all()


def test_fragment_pair_deterministic_with_valid_ground_truth():
    a = fragment_pair(EVAL_SEEDS[0], voxel_size=0.1, views=1)
    b = fragment_pair(EVAL_SEEDS[0], voxel_size=0.1, views=1)
    assert torch.equal(a.src, b.src) and torch.equal(a.transform, b.transform)
    rotation = a.transform[:3, :3].double()
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
    _, dist2 = knn(a.tgt, transform_points(a.src, a.transform), 1)
    close = float((dist2[:, 0] < 0.2**2).float().mean())
    assert abs(close - a.overlap) < 1e-6 and 0.3 <= a.overlap <= 0.95
    assert set(TRAIN_SEEDS).isdisjoint(range(EVAL_SEEDS.start, EVAL_SEEDS.start + 10))
    dataset = SyntheticPairs([EVAL_SEEDS[1]], voxel_size=0.1, views=1)
    assert len(dataset) == 1 and dataset[0].seed == EVAL_SEEDS[1]
