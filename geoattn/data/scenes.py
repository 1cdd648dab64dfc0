"""Synthetic indoor scenes and virtual depth scans for registration training and demos.

A scene is a box-shaped room (floor, ceiling, four walls) furnished with primitives (oriented boxes for
tables, chairs, shelves, sofas, pictures; vertical cylinders; spheres). A virtual depth camera casts
rays analytically against the primitives; a *fragment* fuses a few depth frames taken from one spot
while panning, expressed in the frame of its first camera (like a 3DMatch fragment). Two fragments
taken from nearby spots form a pair with a known transform and overlap.

Everything is a deterministic function of an integer seed, so training and evaluation sets are
disjoint seed ranges (:data:`TRAIN_SEEDS`, :data:`EVAL_SEEDS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from geoattn.sparse.geometry import transform_points
from geoattn.sparse.neighbors import grid_subsample, knn

__all__ = [
    "TRAIN_SEEDS",
    "EVAL_SEEDS",
    "Primitive",
    "Room",
    "FragmentPair",
    "random_room",
    "raycast",
    "camera_pose",
    "depth_scan",
    "fragment_pair",
    "SyntheticPairs",
]

#: Seeds used for training the shipped checkpoint; evaluation and demos use :data:`EVAL_SEEDS`.
TRAIN_SEEDS = range(0, 1_000_000)
EVAL_SEEDS = range(1_000_000, 2_000_000)


@dataclass
class Primitive:
    """``kind`` is 'box' (centre, half extents, yaw about z), 'cylinder' (vertical; centre, (r, r, half
    height)) or 'sphere' (centre, (r, r, r))."""

    kind: str
    centre: np.ndarray
    half: np.ndarray
    yaw: float = 0.0


@dataclass
class Room:
    """An axis-aligned room ``[0, size_x] x [0, size_y] x [0, size_z]`` and its furniture."""

    size: np.ndarray
    primitives: list[Primitive] = field(default_factory=list)


def _box(centre, half, yaw=0.0) -> Primitive:
    return Primitive("box", np.asarray(centre, float), np.asarray(half, float), float(yaw))


def _furniture(rng: np.random.Generator, room: Room, x: float, y: float, yaw: float) -> list[Primitive]:
    """One random furniture item standing on the floor at (x, y)."""
    kind = rng.choice(["table", "chair", "shelf", "sofa", "cylinder", "box", "sphere_on_stand"])
    rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])

    def at(dx, dy, z):
        offset = rotation @ np.array([dx, dy])
        return [x + offset[0], y + offset[1], z]

    parts: list[Primitive] = []
    if kind == "table":
        hx, hy, height = rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.6), rng.uniform(0.65, 0.8)
        parts.append(_box(at(0, 0, height - 0.02), [hx, hy, 0.02], yaw))
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_box(at(sx * (hx - 0.05), sy * (hy - 0.05), (height - 0.04) / 2),
                                  [0.025, 0.025, (height - 0.04) / 2], yaw))
        for _ in range(rng.integers(0, 3)):
            size = rng.uniform(0.05, 0.15, 3)
            parts.append(_box(at(rng.uniform(-hx + 0.15, hx - 0.15), rng.uniform(-hy + 0.15, hy - 0.15),
                                 height + size[2]), size, yaw + rng.uniform(0, math.pi)))
    elif kind == "chair":
        half, seat = rng.uniform(0.2, 0.28), rng.uniform(0.42, 0.5)
        parts.append(_box(at(0, 0, seat), [half, half, 0.03], yaw))
        parts.append(_box(at(-half + 0.02, 0, seat + 0.25), [0.02, half, 0.25], yaw))
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_box(at(sx * (half - 0.03), sy * (half - 0.03), seat / 2), [0.02, 0.02, seat / 2], yaw))
    elif kind == "shelf":
        hx, hy, hz = rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.25), rng.uniform(0.5, 1.0)
        parts.append(_box(at(0, 0, hz), [hx, hy, hz], yaw))
    elif kind == "sofa":
        hx, hy = rng.uniform(0.6, 1.1), rng.uniform(0.35, 0.45)
        parts.append(_box(at(0, 0, 0.22), [hx, hy, 0.22], yaw))
        parts.append(_box(at(0, -hy + 0.1, 0.45), [hx, 0.1, 0.45], yaw))
        for sx in (-1, 1):
            parts.append(_box(at(sx * (hx - 0.08), 0, 0.32), [0.08, hy, 0.32], yaw))
    elif kind == "cylinder":
        radius, half_height = rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.8)
        parts.append(Primitive("cylinder", np.array([x, y, half_height]), np.array([radius, radius, half_height])))
    elif kind == "box":
        half = rng.uniform(0.15, 0.5, 3)
        parts.append(_box([x, y, half[2]], half, yaw))
    else:
        radius, stand = rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.9)
        parts.append(Primitive("cylinder", np.array([x, y, stand / 2]), np.array([0.03, 0.03, stand / 2])))
        parts.append(Primitive("sphere", np.array([x, y, stand + radius]), np.full(3, radius)))
    return parts


def random_room(rng: np.random.Generator) -> Room:
    """A furnished room of 3-7 m by 3-7 m, 2.4-3.2 m high."""
    size = np.array([rng.uniform(3.0, 7.0), rng.uniform(3.0, 7.0), rng.uniform(2.4, 3.2)])
    room = Room(size)
    for _ in range(rng.integers(12, 22)):
        along_wall = rng.random() < 0.5
        if along_wall:
            wall = rng.integers(4)
            t = rng.uniform(0.5, 1.0)
            position = [(rng.uniform(0.6, size[0] - 0.6), t), (rng.uniform(0.6, size[0] - 0.6), size[1] - t),
                        (t, rng.uniform(0.6, size[1] - 0.6)), (size[0] - t, rng.uniform(0.6, size[1] - 0.6))][wall]
            yaw = [0.0, math.pi, math.pi / 2, -math.pi / 2][wall] + rng.normal(0, 0.05)
        else:
            position = (rng.uniform(0.8, size[0] - 0.8), rng.uniform(0.8, size[1] - 0.8))
            yaw = rng.uniform(0, 2 * math.pi)
        room.primitives += _furniture(rng, room, position[0], position[1], yaw)
    for _ in range(rng.integers(5, 10)):  # pictures, doors, windows: thin boxes on the walls
        wall = rng.integers(4)
        half = np.array([rng.uniform(0.2, 0.7), 0.02, rng.uniform(0.2, 0.6)])
        z = rng.uniform(0.8, size[2] - 0.7)
        if wall < 2:
            x = rng.uniform(0.8, size[0] - 0.8)
            room.primitives.append(_box([x, 0.02 if wall == 0 else size[1] - 0.02, z], half, 0.0))
        else:
            y = rng.uniform(0.8, size[1] - 0.8)
            room.primitives.append(_box([0.02 if wall == 2 else size[0] - 0.02, y, z], half, math.pi / 2))
    return room


def raycast(room: Room, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance along each ray ``[R, 3]`` (unit directions) to the first surface (the room always closes)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(directions > 0, room.size, 0.0)
        t_room = (bound - origins) / directions
        t_room = np.where(np.isfinite(t_room) & (t_room > 0), t_room, np.inf).min(axis=1)
        hit = t_room
        for prim in room.primitives:
            if prim.kind == "box":
                c, s = math.cos(-prim.yaw), math.sin(-prim.yaw)
                rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
                o = (origins - prim.centre) @ rot.T
                d = directions @ rot.T
                t1 = (-prim.half - o) / d
                t2 = (prim.half - o) / d
                near = np.nanmax(np.minimum(t1, t2), axis=1)
                far = np.nanmin(np.maximum(t1, t2), axis=1)
                t = np.where((near <= far) & (near > 1e-6), near, np.inf)
            elif prim.kind == "cylinder":
                radius, half_height = prim.half[0], prim.half[2]
                o = origins - prim.centre
                a = directions[:, 0] ** 2 + directions[:, 1] ** 2
                b = 2 * (o[:, 0] * directions[:, 0] + o[:, 1] * directions[:, 1])
                cc = o[:, 0] ** 2 + o[:, 1] ** 2 - radius**2
                disc = b * b - 4 * a * cc
                side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
                z = o[:, 2] + side * directions[:, 2]
                side = np.where((disc >= 0) & (side > 1e-6) & (np.abs(z) <= half_height), side, np.inf)
                cap = (np.sign(o[:, 2]) * half_height - o[:, 2]) / directions[:, 2]
                xy = o[:, :2] + cap[:, None] * directions[:, :2]
                cap = np.where((cap > 1e-6) & ((xy**2).sum(1) <= radius**2), cap, np.inf)
                t = np.minimum(side, cap)
            else:
                o = origins - prim.centre
                b = (o * directions).sum(1)
                cc = (o * o).sum(1) - prim.half[0] ** 2
                disc = b * b - cc
                t = -b - np.sqrt(np.maximum(disc, 0))
                t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
            hit = np.minimum(hit, np.where(np.isfinite(t), t, np.inf))
    return hit


def camera_pose(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-room 4x4 pose; camera axes x right, y down, z forward (depth-camera convention)."""
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = position
    return pose


def depth_scan(room: Room, pose: np.ndarray, rng: np.random.Generator, resolution: tuple[int, int] = (96, 128),
               fov_deg: float = 65.0, max_depth: float = 4.0, noise: float = 0.004) -> np.ndarray:
    """Points ``[P, 3]`` seen by a pinhole depth camera at ``pose``, in room coordinates.

    Depth is perturbed with Gaussian noise of ``noise`` metres along each ray; returns beyond
    ``max_depth`` are dropped (as with consumer depth sensors).
    """
    rows, cols = resolution
    focal = (cols / 2) / math.tan(math.radians(fov_deg) / 2)
    v, u = np.meshgrid(np.arange(rows) + rng.random(), np.arange(cols) + rng.random(), indexing="ij")
    rays = np.stack([(u.ravel() - cols / 2) / focal, (v.ravel() - rows / 2) / focal, np.ones(u.size)], axis=1)
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    directions = rays @ pose[:3, :3].T
    origins = np.broadcast_to(pose[:3, 3], directions.shape)
    distance = raycast(room, np.ascontiguousarray(origins), directions)
    distance = distance + rng.normal(0, noise, distance.shape)
    keep = np.isfinite(distance) & (distance * rays[:, 2] < max_depth)
    return origins[keep] + directions[keep] * distance[keep, None]


class FragmentPair(NamedTuple):
    """Two fragments, each in its own sensor frame, and ``transform`` (4x4) mapping src into tgt."""

    src: torch.Tensor
    tgt: torch.Tensor
    transform: torch.Tensor
    overlap: float
    seed: int


def _fragment(room: Room, position: np.ndarray, yaw: float, pitch: float, rng: np.random.Generator,
              views: int, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ``views`` frames panned around ``yaw``; returns (points in the first camera's frame, pose)."""
    first = camera_pose(position, yaw, pitch)
    chunks = []
    for view in range(views):
        offset = (view - (views - 1) / 2) * math.radians(25)
        chunks.append(depth_scan(room, camera_pose(position, yaw + offset, pitch + rng.normal(0, 0.05)), rng))
    world = np.concatenate(chunks)
    local = (world - first[:3, 3]) @ first[:3, :3]
    pos, _, _ = grid_subsample(torch.from_numpy(local).float(), voxel_size)
    return pos.numpy(), first


def _informative(points: torch.Tensor, min_thickness: float = 0.15, min_extent: float = 0.6) -> bool:
    """Enough points and 3-D structure: the smallest and largest standard deviations of the cloud along
    its principal axes must exceed ``min_thickness`` and ``min_extent`` (metres)."""
    if points.size(0) < 50:
        return False
    spread = torch.linalg.eigvalsh(torch.cov(points.double().T)).clamp(min=0).sqrt()
    return bool(spread[0] > min_thickness and spread[-1] > min_extent)


def _overlap(src: torch.Tensor, tgt: torch.Tensor, transform: torch.Tensor, radius: float) -> float:
    _, dist2 = knn(tgt, transform_points(src, transform), 1)
    return float((dist2[:, 0] < radius**2).float().mean())


def fragment_pair(seed: int, voxel_size: float = 0.025, views: int = 3, min_overlap: float = 0.3,
                  max_overlap: float = 0.95, max_tries: int = 20) -> FragmentPair:
    """A deterministic pair of overlapping fragments of one random room.

    The source camera looks across the room (within 70 degrees of the direction to the room centre); the
    target camera is moved 0.2-1.2 m and turned 10-60 degrees from it. Fragments without 3-D structure (a
    single wall) are rejected, and a pair is accepted when the fraction of source points with a target point within ``2 * voxel_size`` lies in
    ``[min_overlap, max_overlap]`` (a new room and new cameras are drawn otherwise).
    """
    rng = np.random.default_rng(seed)
    last = None
    for _ in range(max_tries):
        room = random_room(rng)
        margin = 0.6
        position = np.array([rng.uniform(margin, room.size[0] - margin), rng.uniform(margin, room.size[1] - margin),
                             rng.uniform(1.0, 1.8)])
        # look roughly across the room: a camera facing a nearby wall sees a plane, which has no unique pose
        centre = room.size[:2] / 2
        yaw = math.atan2(centre[1] - position[1], centre[0] - position[0]) + rng.uniform(-1.2, 1.2)
        pitch = rng.uniform(-0.5, 0.05)
        src, src_pose = _fragment(room, position, yaw, pitch, rng, views, voxel_size)
        step = rng.normal(size=3) * np.array([1.0, 1.0, 0.2])
        step *= rng.uniform(0.2, 1.2) / np.linalg.norm(step)
        moved = np.clip(position + step, margin, np.maximum(room.size - margin, margin))
        turn = rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(10, 60))
        tgt, tgt_pose = _fragment(room, moved, yaw + turn, pitch + rng.normal(0, 0.1), rng, views, voxel_size)
        transform = torch.from_numpy(np.linalg.inv(tgt_pose) @ src_pose).float()
        src_t, tgt_t = torch.from_numpy(src).float(), torch.from_numpy(tgt).float()
        if not (_informative(src_t) and _informative(tgt_t)):
            continue
        overlap = _overlap(src_t, tgt_t, transform, 2 * voxel_size)
        last = FragmentPair(src_t, tgt_t, transform, overlap, seed)
        if min_overlap <= overlap <= max_overlap:
            return last
    if last is None:
        raise RuntimeError(f"seed {seed}: no usable fragment pair after {max_tries} rooms")
    return last


class SyntheticPairs(torch.utils.data.Dataset):
    """``len(seeds)`` fragment pairs, item ``i`` generated from ``seeds[i]`` (see :func:`fragment_pair`)."""

    def __init__(self, seeds, voxel_size: float = 0.025, **kwargs):
        self.seeds = list(seeds)
        self.voxel_size = voxel_size
        self.kwargs = kwargs

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> FragmentPair:
        return fragment_pair(self.seeds[index], voxel_size=self.voxel_size, **self.kwargs)
