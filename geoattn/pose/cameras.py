"""Virtual pinhole cameras that turn world-frame 3D pose sequences into 2D/3D lifting pairs.

Cameras follow the convention of :mod:`geoattn.data.h36m` (OpenCV axes: x right, y down, z forward;
``p_cam = (p_world - centre) @ R.T``), so rendered pairs look like Human3.6M's: 2D keypoints in
normalised screen coordinates and root-relative camera-frame 3D targets in metres.

Ray-aligned frames (:func:`ray_aligned_keypoints`, :func:`ray_aligned_pairs`) remove what a
root-relative 2D pose cannot tell: where in the image the subject stands. A subject seen off the
optical axis by an angle ``a`` has its camera-frame pose turned by about ``a``; turning the camera
virtually until the root's viewing ray is its optical axis (a perspective crop) makes the 2D input
and the 3D target independent of the image position, and the known rotation maps predictions back.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from geoattn.data.h36m import (
    Camera,
    normalize_screen_coordinates,
    project_to_pixels,
    root_relative,
    world_to_camera,
)

__all__ = ["look_at_camera", "virtual_cameras", "random_cameras", "render_pairs", "ray_rotations",
           "ray_aligned_keypoints", "ray_aligned_pairs", "ray_frame_to_camera"]


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


def _horizontal_axes(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal axes spanning the plane orthogonal to the unit vector ``up``."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    axis_a = np.cross(up, helper)
    axis_a /= np.linalg.norm(axis_a)
    return axis_a, np.cross(up, axis_a)


def _unit_up(up: Sequence[float]) -> np.ndarray:
    up = np.asarray(up, dtype=np.float64)
    if up.shape != (3,) or np.linalg.norm(up) < 1e-12:
        raise ValueError(f"up: expected a non-zero 3-vector, got {up.tolist()}")
    return up / np.linalg.norm(up)


def _camera_on_circle(azimuth: float, radius: float, height: float, target: np.ndarray, up: np.ndarray,
                      focal: float, width: int, height_px: int) -> Camera:
    axis_a, axis_b = _horizontal_axes(up)
    ground_target = target - np.dot(target, up) * up
    position = ground_target + radius * (np.cos(azimuth) * axis_a + np.sin(azimuth) * axis_b) + height * up
    return look_at_camera(position, target, up, focal, width, height_px)


def virtual_cameras(num_cameras: int, target: Sequence[float], seed: int = 0, distance=(4.5, 6.0),
                    elevation=(0.6, 2.2), up: Sequence[float] = (0.0, 0.0, 1.0), focal: float = 1145.0,
                    width: int = 1000, height: int = 1000) -> list[Camera]:
    """``num_cameras`` cameras around ``target``, azimuths evenly spaced (seeded jitter of a quarter step),
    horizontal distance and height above the ground plane (``up``-coordinate 0) drawn uniformly from the
    given ranges. Camera ``i`` sits at azimuth ``~ 360 i / num_cameras`` degrees."""
    if num_cameras < 1:
        raise ValueError(f"num_cameras: expected a positive int, got {num_cameras}")
    rng = np.random.default_rng(seed)
    up = _unit_up(up)
    target = np.asarray(target, dtype=np.float64)
    step = 2 * np.pi / num_cameras
    cameras = []
    for i in range(num_cameras):
        azimuth = i * step + rng.uniform(-0.25, 0.25) * step
        radius = rng.uniform(*distance)
        camera_height = rng.uniform(*elevation)
        cameras.append(_camera_on_circle(azimuth, radius, camera_height, target, up, focal, width, height))
    return cameras


def random_cameras(num_cameras: int, target: Sequence[float], rng: np.random.Generator, distance=(4.5, 6.0),
                   elevation=(0.6, 2.2), avoid: Sequence[Camera] = (), min_separation: float = 0.0,
                   up: Sequence[float] = (0.0, 0.0, 1.0), focal: float = 1145.0, width: int = 1000,
                   height: int = 1000) -> list[Camera]:
    """``num_cameras`` cameras looking at ``target`` from uniformly random directions around the ``up`` axis.

    Horizontal distance and height above the ground plane are uniform in ``distance`` and ``elevation``
    (the ranges of :func:`virtual_cameras`). Azimuths closer than ``min_separation`` degrees to the
    azimuth of any camera in ``avoid`` (e.g. held-out evaluation cameras) are rejected and redrawn, so
    a fresh set every epoch augments the viewpoint without ever filming from a held-out one.
    """
    if num_cameras < 0:
        raise ValueError(f"num_cameras: expected a non-negative int, got {num_cameras}")
    if not 0.0 <= min_separation < 180.0 / max(len(avoid), 1):
        raise ValueError(f"min_separation: expected degrees in [0, {180.0 / max(len(avoid), 1):g}) so that some "
                         f"azimuths stay free, got {min_separation}")
    up = _unit_up(up)
    target = np.asarray(target, dtype=np.float64)
    axis_a, axis_b = _horizontal_axes(up)
    avoided = []
    for camera in avoid:
        offset = np.asarray(camera.centre, dtype=np.float64) - target
        avoided.append(np.arctan2(offset @ axis_b, offset @ axis_a))
    avoided = np.asarray(avoided)
    cameras = []
    while len(cameras) < num_cameras:
        azimuth = rng.uniform(-np.pi, np.pi)
        gaps = np.abs((azimuth - avoided + np.pi) % (2 * np.pi) - np.pi)
        if gaps.size and np.degrees(gaps.min()) < min_separation:
            continue
        radius, camera_height = rng.uniform(*distance), rng.uniform(*elevation)
        cameras.append(_camera_on_circle(azimuth, radius, camera_height, target, up, focal, width, height))
    return cameras


def _sequence_in_camera(poses_world, camera: Camera) -> np.ndarray:
    """``[T, V, 3]`` world poses in ``camera``'s frame (float64), all joints in front of it."""
    poses_world = np.asarray(poses_world, dtype=np.float64)
    if poses_world.ndim != 3 or poses_world.shape[-1] != 3:
        raise ValueError(f"poses_world: expected a (T, V, 3) array, got shape {poses_world.shape}")
    in_camera = world_to_camera(poses_world, camera)
    if (in_camera[..., 2] <= 0).any():
        raise ValueError("camera: some joints lie behind the camera; move it further away")
    return in_camera


def render_pairs(poses_world: np.ndarray, camera: Camera, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(poses_2d, poses_3d)`` for one camera: ``[T, V, 2]`` normalised screen coordinates of the
    projection and ``[T, V, 3]`` root-relative camera-frame positions (float32)."""
    in_camera = _sequence_in_camera(poses_world, camera)
    pixels = project_to_pixels(in_camera, camera, distort=False)
    poses_2d = normalize_screen_coordinates(pixels, camera.width, camera.height)
    return poses_2d.astype(np.float32), root_relative(in_camera, root).astype(np.float32)


def ray_rotations(directions) -> np.ndarray:
    """Rotations ``[..., 3, 3]`` that turn camera-frame ray ``directions [..., 3]`` (``z > 0``) onto the optical
    axis while keeping the image's x axis horizontal.

    Rows are ``(right, down, forward)`` with ``forward = d / |d|``, ``right = e_y x forward / |.|`` and
    ``down = forward x right``: a camera turned to look along ``d`` without roll. ``R @ forward = e_z``
    and a ray on the optical axis gives the identity.
    """
    directions = np.asarray(directions, dtype=np.float64)
    if directions.shape[-1:] != (3,):
        raise ValueError(f"directions: expected [..., 3], got shape {directions.shape}")
    if (directions[..., 2] <= 0).any():
        raise ValueError("directions: expected rays in front of the camera (z > 0)")
    forward = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    # e_y x forward = (f_z, 0, -f_x): never zero for f_z > 0.
    right = np.stack([forward[..., 2], np.zeros_like(forward[..., 0]), -forward[..., 0]], -1)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], -2)


def ray_aligned_keypoints(pixels, camera: Camera, root: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2D keypoints ``[..., V, 2]`` in pixels seen by a camera turned to look along the root's ray.

    Each keypoint's viewing ray ``((u - c) / f, 1)`` is rotated by ``R = ray_rotations(root ray)`` and
    re-projected with unit focal length; the root lands on ``(0, 0)``. Returns ``(aligned [..., V, 2]``
    (tangent units, float32), ``rotations [..., 3, 3]`` (float64)). Lens distortion is not modelled
    (undistort detections first). Camera-frame 3D poses map into this frame by ``p @ R.T`` and back
    with :func:`ray_frame_to_camera`.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim < 2 or pixels.shape[-1] != 2 or not -pixels.shape[-2] <= root < pixels.shape[-2]:
        raise ValueError(f"pixels: expected [..., V, 2] with a joint {root} (root), got shape {pixels.shape}")
    rays = np.concatenate([(pixels - camera.principal) / camera.focal, np.ones_like(pixels[..., :1])], -1)
    rotations = ray_rotations(rays[..., root, :])
    turned = np.einsum("...ij,...vj->...vi", rotations, rays)
    if (turned[..., 2] <= 1e-9).any():
        raise ValueError("pixels: some keypoints lie 90 degrees or more away from the root's ray")
    return (turned[..., :2] / turned[..., 2:]).astype(np.float32), rotations


def ray_aligned_pairs(poses_world: np.ndarray, camera: Camera, root: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                            np.ndarray]:
    """Like :func:`render_pairs` in the ray-aligned frame of every pose's root.

    Returns ``(poses_2d [T, V, 2]`` (:func:`ray_aligned_keypoints` of the projection), ``poses_3d [T, V, 3]``
    (root-relative, rotated into the same frame, float32), ``rotations [T, 3, 3])``;
    ``ray_frame_to_camera(poses_3d, rotations)`` gives :func:`render_pairs`' 3D poses back.
    """
    in_camera = _sequence_in_camera(poses_world, camera)
    aligned, rotations = ray_aligned_keypoints(project_to_pixels(in_camera, camera, distort=False), camera, root)
    poses_3d = np.einsum("tij,tvj->tvi", rotations, root_relative(in_camera, root))
    return aligned, poses_3d.astype(np.float32), rotations


def ray_frame_to_camera(poses, rotations):
    """Poses ``[..., V, 3]`` from the ray-aligned frame back to camera axes: ``p @ R`` per pose (numpy or
    torch; the result follows ``poses``' type and dtype)."""
    if isinstance(poses, torch.Tensor):
        rotations = torch.as_tensor(rotations, dtype=poses.dtype, device=poses.device)
        return torch.einsum("...vi,...ij->...vj", poses, rotations)
    poses = np.asarray(poses)
    return np.einsum("...vi,...ij->...vj", poses, np.asarray(rotations)).astype(poses.dtype, copy=False)
