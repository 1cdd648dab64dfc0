"""Virtual pinhole cameras that turn world-frame 3D pose sequences into 2D/3D lifting pairs.

Cameras follow the convention of :mod:`geoattn.data.h36m` (OpenCV axes: x right, y down, z forward;
``p_cam = (p_world - centre) @ R.T``), so rendered pairs look like Human3.6M's: 2D keypoints in
normalised screen coordinates and root-relative camera-frame 3D targets in metres.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geoattn.data.h36m import (
    Camera,
    normalize_screen_coordinates,
    project_to_pixels,
    root_relative,
    world_to_camera,
)

__all__ = ["look_at_camera", "virtual_cameras", "render_pairs"]


def look_at_camera(position: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0),
                   focal: float = 1145.0, width: int = 1000, height: int = 1000) -> Camera:
    """A distortion-free camera at ``position`` looking at ``target`` with world ``up`` pointing up in the
    image; principal point at the image centre."""
    position, target, up = (np.asarray(v, dtype=np.float64) for v in (position, target, up))
    forward = target - position
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("position/target: the camera must not sit on its target")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"up: must not be parallel to the viewing direction, got up={up.tolist()}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return Camera(rotation, position, np.array([focal, focal]), np.array([width / 2.0, height / 2.0]),
                  int(width), int(height))


def virtual_cameras(num_cameras: int, target: Sequence[float], seed: int = 0, distance=(4.5, 6.0),
                    elevation=(0.6, 2.2), up: Sequence[float] = (0.0, 0.0, 1.0), focal: float = 1145.0,
                    width: int = 1000, height: int = 1000) -> list[Camera]:
    """``num_cameras`` cameras around ``target``, azimuths evenly spaced (seeded jitter of a quarter step),
    horizontal distance and height above the ground plane (``up``-coordinate 0) drawn uniformly from the
    given ranges. Camera ``i`` sits at azimuth ``~ 360 i / num_cameras`` degrees."""
    if num_cameras < 1:
        raise ValueError(f"num_cameras: expected a positive int, got {num_cameras}")
    rng = np.random.default_rng(seed)
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    target = np.asarray(target, dtype=np.float64)
    # Two horizontal axes orthogonal to up.
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    axis_a = np.cross(up, helper)
    axis_a /= np.linalg.norm(axis_a)
    axis_b = np.cross(up, axis_a)
    step = 2 * np.pi / num_cameras
    cameras = []
    for i in range(num_cameras):
        azimuth = i * step + rng.uniform(-0.25, 0.25) * step
        radius = rng.uniform(*distance)
        camera_height = rng.uniform(*elevation)
        ground_target = target - np.dot(target, up) * up
        position = ground_target + radius * (np.cos(azimuth) * axis_a + np.sin(azimuth) * axis_b) + camera_height * up
        cameras.append(look_at_camera(position, target, up, focal, width, height))
    return cameras


def render_pairs(poses_world: np.ndarray, camera: Camera, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(poses_2d, poses_3d)`` for one camera: ``[T, V, 2]`` normalised screen coordinates of the
    projection and ``[T, V, 3]`` root-relative camera-frame positions (float32)."""
    poses_world = np.asarray(poses_world, dtype=np.float64)
    if poses_world.ndim != 3 or poses_world.shape[-1] != 3:
        raise ValueError(f"poses_world: expected a (T, V, 3) array, got shape {poses_world.shape}")
    in_camera = world_to_camera(poses_world, camera)
    if (in_camera[..., 2] <= 0).any():
        raise ValueError("camera: some joints lie behind the camera; move it further away")
    pixels = project_to_pixels(in_camera, camera, distort=False)
    poses_2d = normalize_screen_coordinates(pixels, camera.width, camera.height)
    return poses_2d.astype(np.float32), root_relative(in_camera, root).astype(np.float32)
