r"""Synthetic LiDAR scenes in the KITTI object layout, for training and measuring the 3-D detector.

A scene is a street: a (mildly sloped) ground plane with a road, sidewalks and lane markings; buildings,
walls or fences along both sides; poles (some with signs); trees (trunk + crown) and bushes (clusters of
ellipsoids); small clutter (bins, crates); and the labelled objects -- cars (lower body, cabin, four
wheels), pedestrians (two legs, torso, two arms, head) and cyclists (two wheels, frame tubes, handlebar,
rider with legs, torso, arms and head) -- with sizes drawn around KITTI's class statistics, standing on the
ground, random or road-aligned headings, mostly inside the camera's field of view at 3-70 m, and never
overlapping each other or the buildings.

Sensor (:class:`SensorModel`, default :data:`HDL64`): a spinning 64-beam LiDAR like the Velodyne HDL-64E
of KITTI, at the origin of the LiDAR frame (x forward, y left, z up), 1.73 m above the ground (ground near
``z = -1.73``): 32 upper beams evenly from +2 to -8.33 degrees and 32 lower beams from -8.83 to -24.9
degrees, 2118 azimuth steps (0.17 degrees) over 360 degrees, so ray ``(i, j)`` has the unit direction

.. math::  d_{ij} = (\cos e_i \cos a_j, \cos e_i \sin a_j, \sin e_i), \quad a_j = -\pi + (j + 1/2)\,2\pi / A.

Every ray is intersected analytically with every primitive (numpy, vectorised over rays; the Python loop
runs over the few dozen primitives, each tested only on the block of beams x azimuth columns that its
bounding sphere covers): boxes (slab test), capped cylinders, ellipsoids (a scaled unit sphere), each in
its own rotated frame, and the ground plane. The nearest hit within ``max_range`` (120 m) is a return, with
Gaussian range noise (2 cm, more on foliage), random dropout (more on glass, foliage and at long range) and a
reflectance per surface; the point is ``(t + noise) d`` and reflectance rounded to 0.01 as in KITTI files.

Labels (KITTI ``label_2`` rows in the rectified camera frame, see :func:`geoattn.data.kitti.read_label`):

* an object is labelled when its 3-D box projects into the image (some part of the box in front of the
  camera, the 2-D box overlapping the image) and at least one LiDAR return hit it;
* ``truncated`` = ``1 - area(B ∩ image) / area(B)`` where ``B`` is the axis-aligned box around the
  projected corners of the label's camera-frame 3-D box (as the KITTI devkit builds them; the box first
  clipped at the camera's near plane, 0.1 m);
* ``occluded`` from the visible fraction ``f = v / u`` of LiDAR rays, ``u`` = rays that hit the object when
  it is cast alone (the unoccluded estimate), ``v`` = rays whose nearest hit is the object:
  ``f >= 0.8 -> 0`` (fully visible), ``f >= 0.4 -> 1`` (partly), ``f > 0 -> 2`` (largely occluded);
* the 2-D box is the projected 3-D box clipped to the image, ``[0, W-1] x [0, H-1]`` -- the amodal box,
  which KITTI's 2-D boxes follow closely (the tight-fit property monocular methods rely on) and exactly
  how detections get their 2-D box in the KITTI metric, so the 2-D AP and the 2-D-height difficulty levels
  behave as on KITTI. (Boxes from the hit points would be one beam spacing too short and, for an occluded
  object, would cover only what the sensor sees, unlike the detections they are compared to.) Visibility
  decides the occlusion level, DontCare and whether the object is labelled at all;
* ``alpha = ry - atan2(x, z)``, wrapped into ``[-pi, pi)``;
* ``DontCare`` (KITTI's ``-1 -1 -10 bbox -1 -1 -1 -1000 -1000 -1000 -10`` row) for an object farther than
  70 m (camera depth) or with fewer than 5 returns; DontCare rows come last.

Calibration: a real KITTI object calibration (:func:`kitti_calibration`, the numbers of KITTI training frame
000000), image 1242 x 375. The camera image is a cheap rendering: the scene ray cast from camera 2 at a
quarter of the resolution with Lambert shading, distance fog and a sky gradient, upsampled bilinearly.

Everything is a deterministic function of the seed; :func:`write_synthetic_kitti` generates frame ``i`` from
:func:`frame_seed` ``(seed, i)``, so the same call writes identical bytes and different seeds give
independent scenes.
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.data.kitti import (KittiCalibration, KittiLabels, boxes_lidar_to_camera, camera_box_corners, write_calib,
                                write_label, write_velodyne)
from geoattn.io import atomic_write_bytes, atomic_write_text
from geoattn.sparse.boxes import boxes_iou_bev, limit_angle

__all__ = [
    "CLASS_NAMES",
    "IMAGE_HW",
    "SensorModel",
    "HDL64",
    "Primitive",
    "SceneObject",
    "SceneLayout",
    "SyntheticFrame",
    "kitti_calibration",
    "beam_directions",
    "make_object",
    "random_layout",
    "render_layout",
    "generate_scene",
    "frame_seed",
    "write_synthetic_kitti",
]

CLASS_NAMES = ("Car", "Pedestrian", "Cyclist")
#: (H, W) of the KITTI left colour camera (image_2).
IMAGE_HW = (375, 1242)
#: Objects farther than this (camera depth, m) or with fewer returns than MIN_POINTS become DontCare.
MAX_LABEL_DEPTH = 70.0
MIN_POINTS = 5
_MARKER = "synthetic_kitti.json"
_FORMAT_VERSION = 1

# KITTI object training frame 000000 (2011_09_26): P0..P3 (3x4), R0_rect (3x3), Tr_velo_to_cam,
# Tr_imu_to_velo (3x4), row-major.
_KITTI_CALIB = {
    "P0": [707.0493, 0.0, 604.0814, 0.0, 0.0, 707.0493, 180.5066, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P1": [707.0493, 0.0, 604.0814, -379.7842, 0.0, 707.0493, 180.5066, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P2": [707.0493, 0.0, 604.0814, 45.75831, 0.0, 707.0493, 180.5066, -0.3454157, 0.0, 0.0, 1.0, 0.004981016],
    "P3": [707.0493, 0.0, 604.0814, -334.1081, 0.0, 707.0493, 180.5066, 2.33066, 0.0, 0.0, 1.0, 0.003201153],
    "R0_rect": [0.9999128, 0.01009263, -0.008511932, -0.01012729, 0.9999406, -0.004037671, 0.008470675,
                0.004123522, 0.9999556],
    "Tr_velo_to_cam": [0.006927964, -0.9999722, -0.002757829, -0.02457729, -0.001162982, 0.002749836,
                       -0.9999955, -0.06127237, 0.9999753, 0.006931141, -0.001143899, -0.3321029],
    "Tr_imu_to_velo": [0.9999976, 0.0007553071, -0.002035826, -0.8086759, -0.0007854027, 0.9998898,
                       -0.01482298, 0.3195559, 0.002024406, 0.01482454, 0.9998881, -0.7997231],
}


def _hom(values, rows: int, cols: int) -> Tensor:
    out = torch.eye(4, dtype=torch.float64)
    out[:rows, :cols] = torch.tensor(values, dtype=torch.float64).reshape(rows, cols)
    return out


def kitti_calibration() -> KittiCalibration:
    """The calibration of KITTI object training frame 000000 (a typical one), as float64 4x4 matrices."""
    return KittiCalibration(
        P=torch.stack([_hom(_KITTI_CALIB[f"P{i}"], 3, 4) for i in range(4)]),
        R0_rect=_hom(_KITTI_CALIB["R0_rect"], 3, 3),
        Tr_velo_to_cam=_hom(_KITTI_CALIB["Tr_velo_to_cam"], 3, 4),
        Tr_imu_to_velo=_hom(_KITTI_CALIB["Tr_imu_to_velo"], 3, 4),
    )


# ---------------------------------------------------------------------------------------------------------
# Sensor
# ---------------------------------------------------------------------------------------------------------

def _hdl64_elevations() -> tuple[float, ...]:
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    return tuple(float(v) for v in np.concatenate([upper, lower]))


@dataclass(frozen=True)
class SensorModel:
    """A spinning multi-beam LiDAR at the origin of the LiDAR frame.

    Attributes:
        elevations_deg: beam elevations in degrees, descending (64 for the HDL-64E).
        azimuth_steps: columns per revolution (2118 = 0.17 degrees).
        height: sensor height above the ground (m); the ground plane passes near ``z = -height``.
        max_range, min_range: returns outside ``[min_range, max_range]`` (m) are lost.
        range_noise: standard deviation of the Gaussian range noise (m).
        dropout: probability that a return is lost, before surface- and range-dependent extra losses.
    """

    elevations_deg: tuple = field(default_factory=_hdl64_elevations)
    azimuth_steps: int = 2118
    height: float = 1.73
    max_range: float = 120.0
    min_range: float = 2.0
    range_noise: float = 0.02
    dropout: float = 0.04

    def __post_init__(self):
        elevations = np.asarray(self.elevations_deg, dtype=np.float64)
        if elevations.ndim != 1 or elevations.size == 0 or np.any(np.diff(elevations) >= 0):
            raise ValueError(f"elevations_deg: expected a non-empty, strictly descending sequence, got "
                             f"{self.elevations_deg!r}")
        if not isinstance(self.azimuth_steps, int) or self.azimuth_steps < 8:
            raise ValueError(f"azimuth_steps: expected an int >= 8, got {self.azimuth_steps!r}")
        for name in ("height", "max_range", "range_noise", "dropout", "min_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if not self.dropout < 1 or not self.max_range > self.min_range:
            raise ValueError(f"dropout < 1 and max_range > min_range expected, got dropout={self.dropout}, "
                             f"min_range={self.min_range}, max_range={self.max_range}")


HDL64 = SensorModel()
_DIRECTIONS_CACHE: dict = {}


def beam_directions(sensor: SensorModel = HDL64) -> np.ndarray:
    r"""Unit ray directions ``[B, A, 3]`` of one revolution: beam ``i`` (elevation :math:`e_i`), column ``j``
    (azimuth :math:`a_j = -\pi + (j + 1/2) 2\pi / A`). Cached per sensor; do not modify the result."""
    key = (sensor.elevations_deg, sensor.azimuth_steps)
    if key not in _DIRECTIONS_CACHE:
        elevation = np.radians(np.asarray(sensor.elevations_deg))[:, None]
        azimuth = -math.pi + (np.arange(sensor.azimuth_steps) + 0.5) * (2 * math.pi / sensor.azimuth_steps)
        directions = np.stack(np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth),
                                                  np.cos(elevation) * np.sin(azimuth), np.sin(elevation)), -1)
        directions.setflags(write=False)
        _DIRECTIONS_CACHE[key] = directions
    return _DIRECTIONS_CACHE[key]


# ---------------------------------------------------------------------------------------------------------
# Primitives and ray casting
# ---------------------------------------------------------------------------------------------------------

_BOX, _CYLINDER, _ELLIPSOID = 0, 1, 2
_KINDS = {"box": _BOX, "cylinder": _CYLINDER, "ellipsoid": _ELLIPSOID}


@dataclass
class Primitive:
    """A solid in its own frame: ``world = rotation @ local + centre``.

    ``kind`` 'box' (half extents ``half``), 'cylinder' (axis = local z, radius ``half[0]``, half height
    ``half[2]``, capped) or 'ellipsoid' (semi-axes ``half``). Surface properties: ``reflectance`` in
    [0, 1], ``colour`` RGB in [0, 1] for the camera, extra ``dropout`` probability and extra range ``noise`` (m).
    """

    kind: str
    centre: np.ndarray
    half: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    reflectance: float = 0.3
    colour: tuple = (0.5, 0.5, 0.5)
    dropout: float = 0.0
    noise: float = 0.0

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {sorted(_KINDS)}, got {self.kind!r}")
        self.centre = np.asarray(self.centre, dtype=np.float64).reshape(3)
        self.half = np.asarray(self.half, dtype=np.float64).reshape(3)
        self.rotation = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        if not np.all(self.half > 0):
            raise ValueError(f"half: expected positive extents, got {self.half}")

    @property
    def radius(self) -> float:
        """Radius of a bounding sphere about ``centre``."""
        if self.kind == "cylinder":
            return float(math.hypot(self.half[0], self.half[2]))
        if self.kind == "ellipsoid":
            return float(self.half.max())
        return float(np.linalg.norm(self.half))


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _z_to(axis: np.ndarray) -> np.ndarray:
    """A rotation taking local +z to the unit vector along ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    v = np.array([-axis[1], axis[0], 0.0])  # z x axis
    c = axis[2]
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def _intersect(prim: Primitive, origin: np.ndarray, directions: np.ndarray,
               want_normal: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    r"""Distance ``t [M]`` along unit rays ``origin + t d`` (``directions [M, 3]``) to the first entry into
    ``prim`` (``inf`` when missed or when the origin is inside), and optionally the world normal ``[M, 3]``.

    Box: slab test in the local frame, :math:`t = \max_k \min(t^-_k, t^+_k)` when it is below
    :math:`\min_k \max(t^-_k, t^+_k)`. Cylinder: the smaller root of
    :math:`|o_{xy} + t d_{xy}|^2 = r^2` with :math:`|z| \le h`, or a cap. Ellipsoid: the smaller root of
    :math:`|(o + t d) / s|^2 = 1`.
    """
    rot = prim.rotation
    o = rot.T @ (origin - prim.centre)
    d = directions @ rot  # = (R^T d_i) row-wise
    h = prim.half
    normal = None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if prim.kind == "box":
            inv = 1.0 / d
            t1 = (-h - o) * inv
            t2 = (h - o) * inv
            lo = np.minimum(t1, t2)
            hi = np.maximum(t1, t2)
            near = lo.max(axis=1)
            far = hi.min(axis=1)
            t = np.where((near <= far) & (near > 1e-6), near, np.inf)
            if want_normal:
                axis = lo.argmax(axis=1)
                local = np.zeros_like(d)
                rows = np.arange(d.shape[0])
                local[rows, axis] = -np.sign(d[rows, axis])
                normal = local @ rot.T
        elif prim.kind == "cylinder":
            radius, half_height = h[0], h[2]
            a = d[:, 0] ** 2 + d[:, 1] ** 2
            b = 2 * (o[0] * d[:, 0] + o[1] * d[:, 1])
            c = o[0] ** 2 + o[1] ** 2 - radius ** 2
            disc = b * b - 4 * a * c
            side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            z = o[2] + side * d[:, 2]
            side = np.where((disc >= 0) & (side > 1e-6) & (np.abs(z) <= half_height), side, np.inf)
            cap = (math.copysign(half_height, o[2]) - o[2]) / d[:, 2]
            cx = o[0] + cap * d[:, 0]
            cy = o[1] + cap * d[:, 1]
            cap = np.where((cap > 1e-6) & (cx * cx + cy * cy <= radius ** 2), cap, np.inf)
            t = np.minimum(side, cap)
            if want_normal:
                tt = np.where(np.isfinite(t), t, 0.0)
                p = o + tt[:, None] * d
                local = np.where((side <= cap)[:, None], np.stack([p[:, 0], p[:, 1], np.zeros_like(tt)], 1) / radius,
                                 np.array([0.0, 0.0, math.copysign(1.0, o[2])]))
                normal = local @ rot.T
        else:
            o2 = o / h
            d2 = d / h
            a = (d2 * d2).sum(1)
            b = 2 * (d2 @ o2)
            c = float(o2 @ o2) - 1.0
            disc = b * b - 4 * a * c
            t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
            t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
            if want_normal:
                tt = np.where(np.isfinite(t), t, 0.0)
                local = (o + tt[:, None] * d) / (h * h)
                normal = local @ rot.T
    if normal is not None:
        normal = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return t, normal


# ---------------------------------------------------------------------------------------------------------
# Scene description
# ---------------------------------------------------------------------------------------------------------

@dataclass
class SceneObject:
    """A labelled object: class ``name`` (Car / Pedestrian / Cyclist), LiDAR box ``(x, y, z, dx, dy, dz,
    heading)`` (centre) and its parts (all inside the box)."""

    name: str
    box: np.ndarray
    parts: list[Primitive]

    @property
    def radius(self) -> float:
        return float(0.5 * np.linalg.norm(self.box[3:6]))


@dataclass
class SceneLayout:
    """The ground plane ``z = ground[0] + ground[1] x + ground[2] y``, the road (direction ``road[0]`` rad,
    half width ``road[1]``, sidewalk width ``road[2]``), background primitives and objects."""

    ground: tuple = (-1.73, 0.0, 0.0)
    road: tuple = (0.0, 5.0, 3.0)
    background: list[Primitive] = field(default_factory=list)
    objects: list[SceneObject] = field(default_factory=list)

    def ground_z(self, x, y):
        return self.ground[0] + self.ground[1] * np.asarray(x) + self.ground[2] * np.asarray(y)


def _part(kind, centre, half, rotation=None, **surface) -> Primitive:
    return Primitive(kind, np.asarray(centre, float), np.asarray(half, float),
                     np.eye(3) if rotation is None else rotation, **surface)


def _segment(p0, p1, radius, **surface) -> Primitive:
    """A capped cylinder from ``p0`` to ``p1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    return _part("cylinder", (p0 + p1) / 2, (radius, radius, length / 2), _z_to(p1 - p0), **surface)


_AXLE = _rot_x(math.pi / 2)  # local cylinder axis z -> object y (wheels)


def _car_parts(rng, length, width, height) -> list[Primitive]:
    m = 0.04
    l, w, top = length - 2 * m, width - 2 * m, height - m
    paint = tuple(float(v) for v in rng.uniform(0.05, 0.95, 3))
    body = dict(reflectance=float(rng.uniform(0.15, 0.7)), colour=paint)
    glass = dict(reflectance=0.05, colour=(0.12, 0.14, 0.18), dropout=0.35, noise=0.02)
    tyre = dict(reflectance=0.03, colour=(0.05, 0.05, 0.05), dropout=0.1)
    wheel_r = float(min(rng.uniform(0.29, 0.35), 0.24 * height))
    clearance = float(rng.uniform(0.22, 0.32))
    hood = float(height * rng.uniform(0.52, 0.62))
    parts = [_part("box", (0, 0, (clearance + hood) / 2), (l / 2, w / 2 - 0.04, (hood - clearance) / 2), **body)]
    cabin_len = float(l * rng.uniform(0.42, 0.6))
    cabin_x = float(-l * rng.uniform(0.0, 0.12))
    cabin_x = float(np.clip(cabin_x, -l / 2 + cabin_len / 2, l / 2 - cabin_len / 2))
    parts.append(_part("box", (cabin_x, 0, (hood + top) / 2), (cabin_len / 2, w / 2 * rng.uniform(0.82, 0.92),
                                                            (top - hood) / 2), **glass))
    # roof plate: the painted top of the cabin
    parts.append(_part("box", (cabin_x, 0, top - 0.03), (cabin_len / 2 * 0.92, w / 2 * 0.8, 0.03), **body))
    axle = float(l / 2 - rng.uniform(0.65, 0.9))
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_part("cylinder", (sx * axle, sy * (w / 2 - 0.11), wheel_r), (wheel_r, wheel_r, 0.11),
                               _AXLE, **tyre))
    return parts


def _pedestrian_parts(rng, length, width, height) -> list[Primitive]:
    m = 0.03
    clothes = dict(reflectance=float(rng.uniform(0.15, 0.5)),
                   colour=tuple(float(v) for v in rng.uniform(0.05, 0.8, 3)))
    trousers = dict(reflectance=float(rng.uniform(0.1, 0.4)),
                    colour=tuple(float(v) for v in rng.uniform(0.05, 0.5, 3)))
    skin = dict(reflectance=0.35, colour=(0.85, 0.65, 0.5))
    leg_r = float(rng.uniform(0.06, 0.08))
    hip = 0.48 * height
    stride = float(rng.uniform(0.0, max(0.0, min(0.55, length - 2 * m - 2 * leg_r))))
    torso_y = float(min(0.18, width / 2 - m - 0.09))
    parts = []
    for sign, side in ((1, 1), (-1, -1)):
        foot = (sign * stride / 2, side * 0.09, leg_r)
        parts.append(_segment(foot, (0.0, side * 0.09, hip), leg_r, **trousers))
    shoulder = hip + 0.3 * height
    parts.append(_part("ellipsoid", (0, 0, (hip + shoulder) / 2 + 0.02),
                       (float(rng.uniform(0.1, 0.14)), torso_y, (shoulder - hip) / 2 + 0.04), **clothes))
    swing = float(min(stride * 0.6, length / 2 - m - 0.05))
    for sign, side in ((1, 1), (-1, -1)):
        parts.append(_segment((-sign * swing / 2, side * (torso_y + 0.045), hip + 0.05),
                              (0.0, side * (torso_y + 0.045), shoulder - 0.02), 0.04, **clothes))
    head_r = float(rng.uniform(0.095, 0.115))
    parts.append(_part("ellipsoid", (0, 0, height - m - head_r), (head_r, head_r * 0.9, head_r * 1.1), **skin))
    return parts


def _cyclist_parts(rng, length, width, height) -> list[Primitive]:
    m = 0.03
    l = length - 2 * m
    metal = dict(reflectance=float(rng.uniform(0.3, 0.7)), colour=tuple(float(v) for v in rng.uniform(0.1, 0.9, 3)))
    # spoked wheels: the tyre and rim return, most rays pass between the spokes
    tyre = dict(reflectance=0.05, colour=(0.05, 0.05, 0.05), dropout=0.6)
    clothes = dict(reflectance=float(rng.uniform(0.15, 0.5)),
                   colour=tuple(float(v) for v in rng.uniform(0.05, 0.8, 3)))
    skin = dict(reflectance=0.35, colour=(0.85, 0.65, 0.5))
    wheel_r = float(min(0.34, l / 4.4))
    axle = l / 2 - wheel_r
    parts = [_part("cylinder", (sx * axle, 0, wheel_r), (wheel_r, wheel_r, 0.025), _AXLE, **tyre) for sx in (-1, 1)]
    saddle = np.array([-0.25 * axle, 0.0, wheel_r + 0.5 * (0.52 * height - wheel_r) + 0.25])
    saddle[2] = min(saddle[2], 0.55 * height)
    bar = np.array([0.8 * axle, 0.0, saddle[2] + 0.05])
    crank = np.array([0.0, 0.0, wheel_r])
    parts.append(_segment((-axle, 0, wheel_r), crank, 0.025, **metal))
    parts.append(_segment(crank, saddle - [0, 0, 0.05], 0.025, **metal))
    parts.append(_segment(saddle - [0, 0, 0.05], bar - [0, 0, 0.08], 0.025, **metal))
    parts.append(_segment(crank, bar - [0, 0, 0.08], 0.025, **metal))
    parts.append(_segment((axle, 0, wheel_r), bar, 0.02, **metal))
    parts.append(_part("box", bar, (0.03, min(0.28, width / 2 - m), 0.015), **metal))
    head_r = 0.1
    head = np.array([saddle[0] + 0.55 * (bar[0] - saddle[0]), 0.0, height - m - head_r])
    shoulder = head - [0.1, 0.0, head_r + 0.12]
    hip = saddle + [0.0, 0.0, 0.05]
    torso_axis = shoulder - hip
    torso_half = float(np.linalg.norm(torso_axis) / 2 + 0.03)
    torso_y = float(min(0.17, width / 2 - m - 0.08))
    parts.append(_part("ellipsoid", (hip + shoulder) / 2, (0.12, torso_y, torso_half), _z_to(torso_axis), **clothes))
    parts.append(_part("ellipsoid", head, (head_r, head_r * 0.9, head_r * 1.05), **skin))
    phase = float(rng.uniform(0, 2 * math.pi))
    for side, offset in ((1, 0.0), (-1, math.pi)):
        pedal = crank + [0.16 * math.cos(phase + offset), side * 0.1, 0.16 * math.sin(phase + offset)]
        pedal[2] = max(pedal[2], 0.1)
        knee = (hip + pedal) / 2 + [0.12, 0, 0.05]
        parts.append(_segment(hip + [0, side * 0.1, 0], knee + [0, side * 0.1, 0], 0.065, **clothes))
        parts.append(_segment(knee + [0, side * 0.1, 0], pedal, 0.05, **clothes))
        parts.append(_segment(shoulder + [0, side * (torso_y - 0.02), 0], bar + [0, side * 0.2, 0], 0.035, **clothes))
    return parts


_SIZE_STATS = {  # mean and std of (length, width, height), clipped to [low, high] (KITTI training statistics)
    "Car": ((3.88, 1.63, 1.53), (0.35, 0.1, 0.12), (3.2, 1.4, 1.3), (4.9, 1.95, 1.85)),
    "Pedestrian": ((0.84, 0.62, 1.76), (0.15, 0.08, 0.1), (0.5, 0.45, 1.45), (1.2, 0.85, 2.0)),
    "Cyclist": ((1.76, 0.6, 1.74), (0.14, 0.07, 0.08), (1.45, 0.45, 1.55), (2.1, 0.8, 1.95)),
}
_BUILDERS = {"Car": _car_parts, "Pedestrian": _pedestrian_parts, "Cyclist": _cyclist_parts}


def make_object(name: str, box, rng: np.random.Generator) -> SceneObject:
    """A detailed ``name`` object whose parts fill the LiDAR box ``(x, y, z, dx, dy, dz, heading)``.

    Parts are built in the box frame (x along ``dx``, origin at the bottom centre) a few cm inside the faces,
    then rotated by ``heading`` about z and moved to the box's bottom centre.
    """
    if name not in _BUILDERS:
        raise ValueError(f"name: expected one of {CLASS_NAMES}, got {name!r}")
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (7,) or not np.all(np.isfinite(box)) or not np.all(box[3:6] > 0):
        raise ValueError(f"box: expected 7 finite values with positive sizes, got {box}")
    local = _BUILDERS[name](rng, box[3], box[4], box[5])
    rot = _rot_z(box[6])
    bottom = np.array([box[0], box[1], box[2] - box[5] / 2])
    parts = [Primitive(p.kind, rot @ p.centre + bottom, p.half, rot @ p.rotation, p.reflectance, p.colour,
                       p.dropout, p.noise) for p in local]
    return SceneObject(name, box, parts)


def _sample_size(rng, name):
    mean, std, low, high = _SIZE_STATS[name]
    return np.clip(rng.normal(mean, std), low, high)


def _muted(rng, low=0.3, high=0.8):
    base = rng.uniform(low, high)
    return tuple(float(np.clip(base + v, 0, 1)) for v in rng.normal(0, 0.06, 3))


def random_layout(rng: np.random.Generator) -> SceneLayout:
    """A random street scene (see the module docstring); objects are placed by rejection sampling against
    the rotated bird's-eye-view footprints (``boxes_iou_bev`` of footprints enlarged by a margin) of the
    objects already placed, the buildings and the clutter."""
    psi = float(rng.uniform(-0.25, 0.25))
    road_half = float(rng.uniform(3.5, 7.5))
    walk = float(rng.uniform(2.0, 5.0))
    ground = (-1.73 + float(rng.normal(0, 0.03)), float(rng.normal(0, 0.008)), float(rng.normal(0, 0.008)))
    layout = SceneLayout(ground=ground, road=(psi, road_half, walk))
    along = np.array([math.cos(psi), math.sin(psi)])
    lateral = np.array([-math.sin(psi), math.cos(psi)])

    def xy(a, s):
        return a * along + s * lateral

    footprints: list[np.ndarray] = []  # BEV boxes (x, y, 0, dx, dy, 1, yaw) that objects must not overlap

    def ground_z(x, y):
        return float(layout.ground_z(x, y))

    # buildings / walls
    for side in (-1.0, 1.0):
        kind = rng.choice(["buildings", "wall", "open"], p=[0.7, 0.15, 0.15])
        if kind == "buildings":
            a = float(rng.uniform(-60, -40))
            setback = road_half + walk + float(rng.uniform(0, 2))
            colour_base = rng.uniform(0.35, 0.8)
            while a < 110:
                length, depth, height = rng.uniform(8, 30), rng.uniform(6, 15), rng.uniform(4, 18)
                s = side * (setback + float(rng.uniform(0, 1.5)) + depth / 2)
                centre = xy(a + length / 2, s)
                yaw = psi + float(rng.normal(0, 0.02))
                z0 = ground_z(*centre)
                layout.background.append(_part(
                    "box", (centre[0], centre[1], z0 + height / 2 - 0.5), (length / 2, depth / 2, height / 2 + 0.5),
                    _rot_z(yaw), reflectance=float(rng.uniform(0.1, 0.5)),
                    colour=tuple(float(np.clip(colour_base + v, 0, 1)) for v in rng.normal(0, 0.1, 3))))
                footprints.append(np.array([centre[0], centre[1], 0, length, depth, 1, yaw]))
                a += length + (float(rng.uniform(2, 15)) if rng.random() < 0.4 else 0.2)
        elif kind == "wall":
            height = float(rng.uniform(0.8, 2.5))
            s = side * (road_half + walk + float(rng.uniform(0, 1.5)))
            a0 = float(rng.uniform(-40, 0))
            a1 = float(rng.uniform(40, 110))
            centre = xy((a0 + a1) / 2, s)
            z0 = ground_z(*centre)
            layout.background.append(_part("box", (centre[0], centre[1], z0 + height / 2 - 0.3),
                                           ((a1 - a0) / 2, 0.12, height / 2 + 0.3), _rot_z(psi),
                                           reflectance=float(rng.uniform(0.15, 0.5)), colour=_muted(rng)))
            footprints.append(np.array([centre[0], centre[1], 0, a1 - a0, 0.24, 1, psi]))

    def free(box, margin):
        if not footprints:
            return True
        others = np.stack(footprints)
        reach = 0.5 * np.hypot(others[:, 3], others[:, 4]) + 0.5 * math.hypot(box[3], box[4]) + 1.5 * margin
        near = np.hypot(others[:, 0] - box[0], others[:, 1] - box[1]) < reach  # circumscribed circles meet
        if not near.any():
            return True
        candidate = torch.tensor(np.array([box], dtype=np.float64))
        candidate[:, 3:5] += 2 * margin
        return bool((boxes_iou_bev(candidate, torch.from_numpy(others[near])) <= 0).all())

    # labelled objects
    counts = {"Car": int(rng.integers(3, 14)), "Pedestrian": int(rng.integers(1, 10)),
              "Cyclist": int(rng.integers(0, 4))}
    order = [name for name in CLASS_NAMES for _ in range(counts[name])]
    rng.shuffle(order)
    for name in order:
        size = _sample_size(rng, name)
        for _attempt in range(25):
            in_fov = rng.random() < 0.85
            a = float(rng.uniform(3, 72)) if in_fov else float(rng.uniform(-40, 95))
            mode = rng.random()
            if name == "Car":
                if mode < 0.35:  # parked at the kerb
                    s = float(rng.choice([-1, 1])) * (road_half - size[1] / 2 - float(rng.uniform(0.1, 0.4)))
                    heading = psi + (0.0 if rng.random() < 0.5 else math.pi) + float(rng.normal(0, 0.06))
                elif mode < 0.7:  # driving in a lane
                    s = float(rng.uniform(-road_half + 1.0, road_half - 1.0))
                    heading = psi + (0.0 if s < 0 else math.pi) * (rng.random() < 0.8) + float(rng.normal(0, 0.05))
                else:  # anywhere, any heading (drive-ways, parking lots, turning)
                    s = float(rng.uniform(-road_half - walk - 8, road_half + walk + 8))
                    heading = float(rng.uniform(-math.pi, math.pi))
            elif name == "Pedestrian":
                if mode < 0.75:
                    s = float(rng.choice([-1, 1])) * (road_half + float(rng.uniform(0.3, max(0.4, walk - 0.3))))
                else:
                    s = float(rng.uniform(-road_half, road_half))
                heading = float(rng.uniform(-math.pi, math.pi))
            else:
                if mode < 0.7:
                    s = float(rng.choice([-1, 1])) * (road_half - float(rng.uniform(0.5, 2.0)))
                    heading = psi + (0.0 if rng.random() < 0.5 else math.pi) + float(rng.normal(0, 0.15))
                else:
                    s = float(rng.uniform(-road_half - walk, road_half + walk))
                    heading = float(rng.uniform(-math.pi, math.pi))
            x, y = xy(a, s)
            distance = math.hypot(x, y)
            if distance < 3.0 + size[0] / 2 or (in_fov and (x <= 0 or abs(math.atan2(y, x)) > math.radians(40))):
                continue
            box = np.array([x, y, ground_z(x, y) + size[2] / 2, size[0], size[1], size[2],
                            float(limit_angle(torch.tensor(heading)))])
            if free(box, 0.25 if name == "Car" else 0.15):
                layout.objects.append(make_object(name, box, rng))
                footprints.append(box)
                break

    # clutter: poles, trees, bushes, small boxes -- placed after the objects, never on them
    def place(width, around):
        for _attempt in range(10):
            x, y = around()
            box = np.array([x, y, 0, width, width, 1, 0.0])
            if math.hypot(x, y) > 2.5 + width and free(box, 0.1):
                footprints.append(box)
                return x, y
        return None

    def kerb_spot():
        side = float(rng.choice([-1, 1]))
        return xy(float(rng.uniform(-40, 90)), side * (road_half + float(rng.uniform(0.3, 0.8))))

    def walk_spot():
        side = float(rng.choice([-1, 1]))
        return xy(float(rng.uniform(-40, 90)), side * (road_half + float(rng.uniform(0.5, walk + 3))))

    pole = dict(reflectance=0.45, colour=(0.45, 0.45, 0.48))
    for _ in range(int(rng.integers(3, 12))):
        spot = place(0.4, kerb_spot)
        if spot is None:
            continue
        radius, height = float(rng.uniform(0.05, 0.15)), float(rng.uniform(3, 8))
        z0 = ground_z(*spot)
        layout.background.append(_part("cylinder", (spot[0], spot[1], z0 + height / 2), (radius, radius, height / 2),
                                       **pole))
        if rng.random() < 0.35:  # a sign
            layout.background.append(_part("box", (spot[0], spot[1], z0 + height - 0.4), (0.03, 0.35, 0.35),
                                           _rot_z(psi + float(rng.choice([0, math.pi / 2]))), reflectance=0.9,
                                           colour=(0.9, 0.9, 0.9)))
    foliage = dict(dropout=0.35, noise=0.06)
    for _ in range(int(rng.integers(0, 9))):
        crown = rng.uniform([1.0, 1.0, 1.2], [2.5, 2.5, 3.0])
        spot = place(1.0, walk_spot)
        if spot is None:
            continue
        # the crown starts above 2 m, over the heads of pedestrians and cyclists and the roofs of cars
        trunk_r, trunk_h = float(rng.uniform(0.1, 0.25)), float(rng.uniform(2.4, 4.0))
        z0 = ground_z(*spot)
        layout.background.append(_part("cylinder", (spot[0], spot[1], z0 + trunk_h / 2),
                                       (trunk_r, trunk_r, trunk_h / 2),
                                       reflectance=0.35, colour=(0.35, 0.25, 0.15)))
        layout.background.append(_part("ellipsoid", (spot[0], spot[1], z0 + trunk_h + crown[2] * 0.85), crown,
                                       _rot_z(float(rng.uniform(0, math.pi))),
                                       reflectance=float(rng.uniform(0.25, 0.5)),
                                       colour=(0.15, float(rng.uniform(0.35, 0.55)), 0.12), **foliage))
    for _ in range(int(rng.integers(2, 12))):
        semi = rng.uniform([0.4, 0.4, 0.3], [1.3, 1.3, 0.8])
        spot = place(2 * float(semi[:2].max()) + 0.3, walk_spot)
        if spot is None:
            continue
        z0 = ground_z(*spot)
        green = (0.12, float(rng.uniform(0.3, 0.5)), 0.1)
        for _blob in range(int(rng.integers(1, 4))):
            offset = rng.uniform(-0.3, 0.3, 2) * semi[:2]
            blob = semi * rng.uniform(0.6, 1.0, 3)
            layout.background.append(_part("ellipsoid", (spot[0] + offset[0], spot[1] + offset[1], z0 + blob[2] * 0.8),
                                           blob, _rot_z(float(rng.uniform(0, math.pi))),
                                           reflectance=float(rng.uniform(0.25, 0.5)), colour=green, **foliage))
    for _ in range(int(rng.integers(0, 6))):
        half = rng.uniform([0.2, 0.2, 0.3], [0.9, 0.6, 0.8])
        spot = place(2 * float(half[:2].max()) + 0.2, walk_spot)
        if spot is None:
            continue
        layout.background.append(_part("box", (spot[0], spot[1], ground_z(*spot) + half[2]), half,
                                       _rot_z(float(rng.uniform(0, math.pi))), reflectance=float(rng.uniform(0.1, 0.6)),
                                       colour=_muted(rng, 0.1, 0.7)))
    return layout


# ---------------------------------------------------------------------------------------------------------
# Ray casting a layout
# ---------------------------------------------------------------------------------------------------------

def _block(centre: np.ndarray, radius: float, sensor: SensorModel, elevations: np.ndarray):
    """Beam rows (slice) and azimuth columns (index array) whose rays can meet the sphere (centre, radius)
    seen from the origin; ``None`` when no ray can."""
    steps = sensor.azimuth_steps
    dxy = math.hypot(centre[0], centre[1])
    dist = math.hypot(dxy, centre[2])
    if dist - radius > sensor.max_range:
        return None
    if dist <= radius * 1.01 or dxy <= radius:
        return slice(0, len(elevations)), np.arange(steps)
    half_el = math.asin(min(1.0, radius / dist))
    el = math.atan2(centre[2], dxy)
    rows = np.nonzero((elevations >= el - half_el) & (elevations <= el + half_el))[0]
    if rows.size == 0:
        return None
    az = math.atan2(centre[1], centre[0])
    half_az = math.asin(min(1.0, radius / dxy))
    step = 2 * math.pi / steps
    lo = math.ceil((az - half_az + math.pi) / step - 0.5)
    hi = math.floor((az + half_az + math.pi) / step - 0.5)
    if hi < lo:
        return None
    cols = np.arange(lo, hi + 1) % steps if hi - lo + 1 < steps else np.arange(steps)
    return slice(int(rows[0]), int(rows[-1]) + 1), cols


def _ground_t(layout: SceneLayout, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    r"""Distance to the ground plane :math:`z = g_0 + g_x x + g_y y` along rays going down onto it."""
    g0, gx, gy = layout.ground
    denom = directions[..., 2] - gx * directions[..., 0] - gy * directions[..., 1]
    numer = g0 - (origin[2] - gx * origin[0] - gy * origin[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = numer / denom
    return np.where((denom < -1e-9) & (t > 0), t, np.inf)


def _ground_surface(layout: SceneLayout, points: np.ndarray, colours: bool = True):
    """Reflectance and (when ``colours``) colour of ground points ``[M, 3]``: road (with lane marks),
    sidewalk, verge."""
    psi, road_half, walk = layout.road
    a = points[:, 0] * math.cos(psi) + points[:, 1] * math.sin(psi)
    s = -points[:, 0] * math.sin(psi) + points[:, 1] * math.cos(psi)
    road = np.abs(s) <= road_half
    sidewalk = ~road & (np.abs(s) <= road_half + walk)
    mark = road & ((np.abs(s) < 0.08) & (np.mod(a, 9.0) < 3.0) | (np.abs(np.abs(s) - (road_half - 0.25)) < 0.08))
    reflectance = np.where(road, 0.18, np.where(sidewalk, 0.3, 0.25))
    reflectance = np.where(mark, 0.8, reflectance)
    if not colours:
        return reflectance, None
    colour = np.where(road[:, None], [0.28, 0.28, 0.3], np.where(sidewalk[:, None], [0.55, 0.53, 0.5],
                                                                   [0.35, 0.42, 0.25]))
    colour = np.where(mark[:, None], [0.9, 0.9, 0.85], colour)
    return reflectance, colour


@dataclass
class _Cast:
    t: np.ndarray          # [B, A] nearest distance (inf: none)
    part: np.ndarray       # [B, A] index into the flat part list (-1: ground)
    self_hits: np.ndarray  # [K] rays that hit object k when cast alone


def _lidar_cast(layout: SceneLayout, sensor: SensorModel) -> tuple[_Cast, list[Primitive], np.ndarray]:
    directions = beam_directions(sensor)
    elevations = np.radians(np.asarray(sensor.elevations_deg))
    origin = np.zeros(3)
    best_t = _ground_t(layout, origin, directions)
    best_part = np.full(best_t.shape, -1, dtype=np.int64)
    parts: list[Primitive] = list(layout.background)
    owner = [-1] * len(parts)
    self_hits = np.zeros(len(layout.objects), dtype=np.int64)

    def update(block, t, index):
        rows, cols = block
        current = best_t[rows][:, cols]
        closer = t < current
        if closer.any():
            current[closer] = t[closer]
            chosen = best_part[rows][:, cols]
            chosen[closer] = index[closer] if isinstance(index, np.ndarray) else index
            best_t[rows, cols] = current
            best_part[rows, cols] = chosen

    for index, prim in enumerate(layout.background):
        block = _block(prim.centre, prim.radius, sensor, elevations)
        if block is None:
            continue
        rows, cols = block
        sub = directions[rows][:, cols]
        t, _ = _intersect(prim, origin, sub.reshape(-1, 3))
        update(block, t.reshape(sub.shape[:2]), index)
    for k, obj in enumerate(layout.objects):
        first = len(parts)
        parts.extend(obj.parts)
        owner.extend([k] * len(obj.parts))
        block = _block(obj.box[:3], obj.radius, sensor, elevations)
        if block is None:
            continue
        rows, cols = block
        sub = directions[rows][:, cols].reshape(-1, 3)
        ts = np.stack([_intersect(prim, origin, sub)[0] for prim in obj.parts])
        which = ts.argmin(0)
        t = ts[which, np.arange(ts.shape[1])]
        self_hits[k] = int((t <= sensor.max_range).sum())
        shape = (rows.stop - rows.start, cols.size)
        update(block, t.reshape(shape), (which + first).reshape(shape))
    return _Cast(best_t, best_part, self_hits), parts, np.asarray(owner, dtype=np.int64)


def _render_image(layout: SceneLayout, parts: list[Primitive], calib: KittiCalibration,
                  rng: np.random.Generator, scale: int = 4) -> np.ndarray:
    """A uint8 ``[375, 1242, 3]`` picture from camera 2: ray cast at ``1/scale`` resolution, Lambert shading
    (sun + ambient), fog towards the sky colour with distance, sky gradient, bilinear upsampling."""
    from PIL import Image

    height, width = IMAGE_HW
    h, w = math.ceil(height / scale), math.ceil(width / scale)
    projection = calib.P[2].numpy()
    intrinsics = projection[:3, :3]
    offset = np.linalg.solve(intrinsics, projection[:3, 3])   # P2 = K [I | offset]
    cam2lidar = np.linalg.inv(calib.lidar2cam.numpy())
    origin = cam2lidar[:3, :3] @ (-offset) + cam2lidar[:3, 3]
    u = (np.arange(w) + 0.5) * scale - 0.5
    v = (np.arange(h) + 0.5) * scale - 0.5
    uu, vv = np.meshgrid(u, v)
    rays_cam = np.stack([(uu - intrinsics[0, 2]) / intrinsics[0, 0], (vv - intrinsics[1, 2]) / intrinsics[1, 1],
                         np.ones_like(uu)], -1).reshape(-1, 3)
    directions = rays_cam @ cam2lidar[:3, :3].T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    best_t = _ground_t(layout, origin, directions)
    best_t = np.where(best_t < 200, best_t, np.inf)
    best_part = np.full(best_t.shape, -1, dtype=np.int64)
    normals = np.tile(np.array([-layout.ground[1], -layout.ground[2], 1.0]), (best_t.size, 1))
    for index, prim in enumerate(parts):
        rel = prim.centre - origin
        dist = float(np.linalg.norm(rel))
        if dist <= prim.radius:
            candidates = np.arange(best_t.size)
        else:
            cos_limit = math.cos(math.asin(min(1.0, prim.radius / dist)))
            candidates = np.nonzero(directions @ (rel / dist) >= cos_limit - 1e-9)[0]
        if candidates.size == 0:
            continue
        t, normal = _intersect(prim, origin, directions[candidates], want_normal=True)
        closer = t < best_t[candidates]
        if closer.any():
            idx = candidates[closer]
            best_t[idx] = t[closer]
            best_part[idx] = index
            normals[idx] = normal[closer]
    hit = np.isfinite(best_t)
    colour = np.zeros((best_t.size, 3))
    surface = np.array([p.colour for p in parts] + [(0.0, 0.0, 0.0)], dtype=np.float64)
    colour[:] = surface[best_part]
    ground = hit & (best_part < 0)
    if ground.any():
        points = origin + best_t[ground, None] * directions[ground]
        colour[ground] = _ground_surface(layout, points)[1]
    sun = np.array([0.4, -0.3, 0.85])
    sun /= np.linalg.norm(sun)
    lambert = np.clip(normals @ sun, 0, 1)
    shaded = colour * (0.4 + 0.6 * lambert[:, None])
    elevation = directions[:, 2]
    sky = np.stack([0.55 + 0.25 * elevation, 0.7 + 0.2 * elevation, 0.9 + 0.1 * elevation], 1).clip(0, 1)
    fog = 1 - np.exp(-np.where(hit, best_t, 0.0) / 180.0)
    shaded = np.where(hit[:, None], shaded * (1 - fog[:, None]) + sky * fog[:, None], sky)
    small = (shaded.reshape(h, w, 3).clip(0, 1) * 255 + rng.uniform(0, 1, (h, w, 3))).astype(np.uint8)
    image = Image.fromarray(small).resize((w * scale, h * scale), Image.BILINEAR)
    return np.asarray(image)[:height, :width].copy()


# ---------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------

_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]])


def _projected_boxes(boxes_camera: np.ndarray, calib: KittiCalibration, near: float = 0.1):
    r"""Axis-aligned 2-D boxes ``[K, 4]`` around the projected label boxes ``[K, 7]`` (camera frame
    ``(x, y, z, l, h, w, ry)``, bottom centre), and ``valid [K]`` (some part in front of the camera).

    Corners as the KITTI devkit builds them: :math:`X = R_y(ry) (\pm l/2, \{0, -h\}, \pm w/2) + (x, y, z)`;
    the box is clipped at the near plane ``z = near`` (corners in front plus the crossings of the 12 edges),
    then projected with ``P2``: :math:`(u, v) = (P_2 X)_{xy} / (P_2 X)_z`.
    """
    count = boxes_camera.shape[0]
    if count == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=bool)
    cam = camera_box_corners(torch.from_numpy(np.asarray(boxes_camera, dtype=np.float64))).numpy()
    p0, p1 = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]                        # [K, 12, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (near - p0[..., 2]) / (p1[..., 2] - p0[..., 2])
    crossing = ((p0[..., 2] - near) * (p1[..., 2] - near) < 0)
    cross_points = p0 + np.where(crossing, s, 0.0)[..., None] * (p1 - p0)
    points = np.concatenate([cam, cross_points], 1)                             # [K, 20, 3]
    keep = np.concatenate([cam[..., 2] >= near, crossing], 1)
    projection = calib.P[2].numpy()
    pix = points @ projection[:3, :3].T + projection[:3, 3]
    depth = np.where(keep, pix[..., 2], 1.0)
    u, v = pix[..., 0] / depth, pix[..., 1] / depth
    big = 1e9
    box2d = np.stack([np.where(keep, u, big).min(1), np.where(keep, v, big).min(1),
                      np.where(keep, u, -big).max(1), np.where(keep, v, -big).max(1)], 1)
    return box2d, keep.any(1)


def _labels(layout: SceneLayout, calib: KittiCalibration, visible: np.ndarray, self_hits: np.ndarray,
            points: np.ndarray) -> tuple[KittiLabels, np.ndarray, np.ndarray]:
    """KITTI labels of the objects that project into the image; returns (labels, boxes_lidar of the named
    rows [L, 7], object index per row [R])."""
    height, width = IMAGE_HW
    count = len(layout.objects)
    boxes = np.stack([obj.box for obj in layout.objects]) if count else np.zeros((0, 7))
    boxes_camera = boxes_lidar_to_camera(torch.from_numpy(boxes), calib.lidar2cam).numpy()
    full, in_front = _projected_boxes(boxes_camera, calib)
    clipped = np.stack([full[:, 0].clip(0, width - 1), full[:, 1].clip(0, height - 1),
                        full[:, 2].clip(0, width - 1), full[:, 3].clip(0, height - 1)], 1)
    area_full = np.maximum(full[:, 2] - full[:, 0], 0) * np.maximum(full[:, 3] - full[:, 1], 0)
    area_in = np.maximum(clipped[:, 2] - clipped[:, 0], 0) * np.maximum(clipped[:, 3] - clipped[:, 1], 0)
    in_image = in_front & (area_in > 0)
    truncation = np.where(area_full > 0, 1 - area_in / np.maximum(area_full, 1e-12), 1.0).clip(0, 1)
    depth = boxes_camera[:, 2]
    fraction = visible / np.maximum(self_hits, 1)
    occlusion = np.where(fraction >= 0.8, 0, np.where(fraction >= 0.4, 1, 2))
    labelled = in_image & (points > 0)
    dontcare = labelled & ((depth > MAX_LABEL_DEPTH) | (points < MIN_POINTS))
    named = np.nonzero(labelled & ~dontcare)[0]
    ignored = np.nonzero(dontcare)[0]
    ray_angle = np.arctan2(boxes_camera[:, 0], boxes_camera[:, 2])
    alpha = limit_angle(torch.from_numpy(boxes_camera[:, 6] - ray_angle)).numpy()
    rows = np.concatenate([named, ignored])
    names = [layout.objects[k].name for k in named] + ["DontCare"] * len(ignored)
    dc = np.zeros(len(rows), dtype=bool)
    dc[len(named):] = True
    cam = np.where(dc[:, None], np.array([-1000.0, -1000.0, -1000.0, -1.0, -1.0, -1.0, -10.0]), boxes_camera[rows])
    labels = KittiLabels(
        names=names,
        truncated=torch.from_numpy(np.where(dc, -1.0, truncation[rows])),
        occluded=torch.from_numpy(np.where(dc, -1, occlusion[rows]).astype(np.int64)),
        alpha=torch.from_numpy(np.where(dc, -10.0, alpha[rows])),
        bbox=torch.from_numpy(clipped[rows]),
        boxes_camera=torch.from_numpy(cam),
        num_lidar_pts=torch.from_numpy(points[rows].astype(np.int64)),
    )
    return labels, boxes[named], rows


# ---------------------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------------------

@dataclass
class SyntheticFrame:
    """One synthetic KITTI frame.

    Attributes:
        points: float32 ``[N, 4]`` (x, y, z, reflectance) in the LiDAR frame.
        labels: the ``label_2`` rows (camera frame), DontCare rows last; ``num_lidar_pts`` is set.
        calib: the KITTI calibration (:func:`kitti_calibration`).
        image: uint8 ``[375, 1242, 3]`` camera-2 picture.
        boxes_lidar: float64 ``[L, 7]`` LiDAR boxes of the named (non-DontCare) label rows, in row order.
        point_object: long ``[N]`` index into ``layout.objects`` of the object each point hit (-1: background).
        label_object: long ``[R]`` index into ``layout.objects`` of each label row.
        visible_fraction: float ``[K]`` visible / unoccluded rays per object of the layout.
        layout: the scene that was cast.
    """

    points: Tensor
    labels: KittiLabels
    calib: KittiCalibration
    image: Tensor
    boxes_lidar: Tensor
    point_object: Tensor
    label_object: Tensor
    visible_fraction: Tensor
    layout: SceneLayout
    seed: int | None = None


def _check_seed(seed, name="seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {seed!r}")
    return int(seed)


def render_layout(layout: SceneLayout, seed: int = 0, sensor: SensorModel = HDL64,
                  render_image: bool = True) -> SyntheticFrame:
    """Cast ``layout`` with ``sensor``; noise, dropout and image grain are drawn from ``seed``.

    Returns the :class:`SyntheticFrame` (points, labels, calibration, image); see the module docstring for
    the rules. ``render_image=False`` gives a black image (faster, for tests).
    """
    if not isinstance(layout, SceneLayout):
        raise TypeError(f"layout: expected SceneLayout, got {type(layout).__name__}")
    if not isinstance(sensor, SensorModel):
        raise TypeError(f"sensor: expected SensorModel, got {type(sensor).__name__}")
    rng = np.random.default_rng(np.random.SeedSequence(_check_seed(seed), spawn_key=(7,)))
    calib = kitti_calibration()
    cast, parts, owner = _lidar_cast(layout, sensor)
    directions = beam_directions(sensor)
    t = cast.t
    hit = (t <= sensor.max_range) & (t >= sensor.min_range)
    flat_part = cast.part[hit]
    flat_t = t[hit]
    flat_dir = directions[hit]
    surface_refl = np.array([p.reflectance for p in parts] + [0.0])
    surface_drop = np.array([p.dropout for p in parts] + [0.0])
    surface_noise = np.array([p.noise for p in parts] + [0.0])
    is_ground = flat_part < 0
    points_true = flat_t[:, None] * flat_dir
    refl = surface_refl[flat_part]
    if is_ground.any():
        refl[is_ground] = _ground_surface(layout, points_true[is_ground], colours=False)[0]
    drop_p = sensor.dropout + surface_drop[flat_part] + 0.25 * (flat_t / sensor.max_range) ** 2 * (1 - refl)
    keep = rng.random(flat_t.shape) >= drop_p
    noise_std = sensor.range_noise + surface_noise[flat_part] + np.where(is_ground, 0.01, 0.0)
    ranges = flat_t + rng.normal(0.0, 1.0, flat_t.shape) * noise_std
    refl = np.clip(refl * (1 + 0.15 * rng.normal(0, 1, refl.shape)) * (1 - 0.3 * flat_t / sensor.max_range), 0, 1)
    refl = np.round(refl, 2)
    xyz = ranges[:, None] * flat_dir
    points = np.concatenate([xyz, refl[:, None]], 1)[keep].astype(np.float32)
    point_owner = np.where(flat_part >= 0, owner[np.maximum(flat_part, 0)], -1)[keep]
    count = len(layout.objects)
    all_owner = np.where(cast.part >= 0, owner[np.maximum(cast.part, 0)], -1)
    visible = np.bincount(all_owner[(all_owner >= 0) & (t <= sensor.max_range)], minlength=count)[:count]
    num_points = np.bincount(point_owner[point_owner >= 0], minlength=count)[:count]
    labels, boxes_named, rows = _labels(layout, calib, visible, cast.self_hits, num_points)
    if render_image:
        image = _render_image(layout, parts, calib, rng)
    else:
        image = np.zeros(IMAGE_HW + (3,), dtype=np.uint8)
    return SyntheticFrame(
        points=torch.from_numpy(points), labels=labels, calib=calib, image=torch.from_numpy(image),
        boxes_lidar=torch.from_numpy(np.ascontiguousarray(boxes_named, dtype=np.float64)),
        point_object=torch.from_numpy(point_owner.astype(np.int64)),
        label_object=torch.from_numpy(rows.astype(np.int64)),
        visible_fraction=torch.from_numpy(visible / np.maximum(cast.self_hits, 1)), layout=layout, seed=int(seed))


def generate_scene(seed: int, sensor: SensorModel = HDL64, render_image: bool = True) -> SyntheticFrame:
    """A random street scene (:func:`random_layout`) cast with ``sensor``; a pure function of ``seed``."""
    seed = _check_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return render_layout(random_layout(rng), seed, sensor, render_image)


def frame_seed(seed: int, index: int) -> int:
    """The seed of frame ``index`` of a folder generated with ``seed``: 63 bits of
    ``numpy.random.SeedSequence(seed, spawn_key=(index,))``, so frames and seeds are independent streams."""
    seed, index = _check_seed(seed), _check_seed(index, "index")
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------------------
# Writing a KITTI folder
# ---------------------------------------------------------------------------------------------------------

_SUBDIRS = {"velodyne": ".bin", "calib": ".txt", "label_2": ".txt", "image_2": ".png"}
_OWN_NAME = re.compile(r"^\d{6}\.(bin|txt|png)$")


def _read_marker(out_dir: Path) -> dict | None:
    path = out_dir / _MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == __name__ else None


_DERIVED_FILE = re.compile(r"^kitti_(db)?infos_[A-Za-z0-9_]+\.pkl$")
_DERIVED_DB_FILE = re.compile(r"^\d{6}_[A-Za-z_]+_\d+\.bin$")


def _derived_entries(out_dir: Path) -> list[Path]:
    """Files derived from a synthetic folder by ``geoattn create-gt-database`` (``kitti_dbinfos_*.pkl``,
    ``kitti_infos_*.pkl``, ``gt_database/<frame>_<class>_<k>.bin``): stale once the frames are regenerated."""
    derived = [e for e in out_dir.iterdir() if e.is_file() and _DERIVED_FILE.match(e.name)]
    database = out_dir / "gt_database"
    if database.is_dir() and all(e.is_file() and _DERIVED_DB_FILE.match(e.name) for e in database.iterdir()):
        derived.append(database)
    return sorted(derived)


def _foreign_entries(out_dir: Path) -> list[str]:
    """Entries of ``out_dir`` that neither a previous run of :func:`write_synthetic_kitti` nor
    ``create-gt-database`` on its output would have written."""
    foreign = []
    derived = {e.name for e in _derived_entries(out_dir)}
    for entry in sorted(out_dir.iterdir()):
        if (entry.name == _MARKER and entry.is_file()) or entry.name in derived:
            continue
        if entry.name == "ImageSets" and entry.is_dir():
            foreign += [f"ImageSets/{e.name}" for e in sorted(entry.iterdir())
                        if e.name not in ("train.txt", "val.txt", "trainval.txt") or not e.is_file()]
            continue
        if entry.name == "training" and entry.is_dir():
            for sub in sorted(entry.iterdir()):
                if sub.name not in _SUBDIRS or not sub.is_dir():
                    foreign.append(f"training/{sub.name}")
                    continue
                foreign += [f"training/{sub.name}/{e.name}" for e in sorted(sub.iterdir())
                            if not (e.is_file() and _OWN_NAME.match(e.name) and e.suffix == _SUBDIRS[sub.name])]
            continue
        foreign.append(entry.name)
    return foreign


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _write_frame(job) -> tuple[int, dict]:
    """Generate and write frame ``index`` (a top-level function so that worker processes can run it)."""
    base, seed, index, sensor = job
    frame = generate_scene(frame_seed(seed, index), sensor)
    name = f"{index:06d}"
    write_velodyne(base / "velodyne" / f"{name}.bin", frame.points)
    write_calib(base / "calib" / f"{name}.txt", frame.calib)
    write_label(base / "label_2" / f"{name}.txt", frame.labels)
    atomic_write_bytes(base / "image_2" / f"{name}.png", _png_bytes(frame.image.numpy()))
    names: dict = {}
    for label in frame.labels.names:
        names[label] = names.get(label, 0) + 1
    return int(frame.points.shape[0]), names


def write_synthetic_kitti(out_dir, frames: int, seed: int = 0, val_fraction: float = 0.2, progress: bool = True,
                          sensor: SensorModel = HDL64, workers: int = 1) -> dict:
    """Generate ``frames`` scenes into a KITTI object folder.

    Writes ``out_dir/training/{velodyne,calib,label_2,image_2}/%06d.{bin,txt,txt,png}`` (frame ``i`` from
    :func:`generate_scene` ``(frame_seed(seed, i))``), ``out_dir/ImageSets/{train,val,trainval}.txt`` (the
    last ``round(frames * val_fraction)`` frames are ``val``) and a marker ``synthetic_kitti.json`` naming the
    parameters. Every file is written atomically; the same arguments give identical bytes.

    ``out_dir`` must be missing, empty or a previous synthetic folder; a previous folder written with the
    same arguments is left as it is (files derived from it, such as a GT database, stay valid), one with other
    arguments is regenerated when it holds nothing but generated files (stale frames are removed, and so are
    a GT database and infos pickles made from the old frames: ``kitti_dbinfos_*.pkl``, ``kitti_infos_*.pkl``,
    ``gt_database/<frame>_<class>_<k>.bin``), and any other folder raises ``FileExistsError`` (a user's files
    are never overwritten). ``workers > 1`` generates frames in that many processes (same bytes: every frame
    depends on its own seed only).

    Returns a summary: ``{"out_dir", "frames", "train", "val", "seconds", "points_per_frame",
    "objects": {class: count}, "dontcare", "skipped"}``.
    """
    import time

    if not isinstance(out_dir, (str, Path)):
        raise TypeError(f"out_dir: expected a str or pathlib.Path, got {type(out_dir).__name__}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames: expected an int >= 1, got {frames!r}")
    seed = _check_seed(seed)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1], got {val_fraction!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
    frames = int(frames)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir: {out_dir} exists and is not a folder")
    params = {"generator": __name__, "version": _FORMAT_VERSION, "frames": frames, "seed": seed,
              "val_fraction": float(val_fraction), "sensor": {k: getattr(sensor, k) for k in (
                  "azimuth_steps", "height", "max_range", "min_range", "range_noise", "dropout")},
              "elevations_deg": list(sensor.elevations_deg)}
    num_val = int(round(frames * val_fraction))
    ids = [f"{i:06d}" for i in range(frames)]
    summary = {"out_dir": str(out_dir), "frames": frames, "train": frames - num_val, "val": num_val,
               "seconds": 0.0, "points_per_frame": 0.0, "objects": {name: 0 for name in CLASS_NAMES},
               "dontcare": 0, "skipped": False}
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = _read_marker(out_dir)
        if marker is None:
            raise FileExistsError(f"out_dir: {out_dir} is not empty and is not a synthetic KITTI folder (no valid "
                                  f"{_MARKER}); refusing to write into it -- choose a new or empty folder")
        if marker.get("complete") and {k: marker.get(k) for k in params} == params:
            summary["skipped"] = True
            return summary
        foreign = _foreign_entries(out_dir)
        if foreign:
            raise FileExistsError(f"out_dir: {out_dir} is a synthetic KITTI folder of other parameters that also "
                                  f"holds other files ({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); "
                                  "refusing to regenerate it -- remove them or choose a new folder")
        for entry in _derived_entries(out_dir):
            if entry.is_dir():
                for item in entry.iterdir():
                    item.unlink()
                entry.rmdir()
            else:
                entry.unlink()
        for sub in _SUBDIRS:
            folder = out_dir / "training" / sub
            if folder.is_dir():
                for entry in folder.iterdir():
                    if _OWN_NAME.match(entry.name) and int(entry.name[:6]) >= frames:
                        entry.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / _MARKER, json.dumps({**params, "complete": False}, indent=1) + "\n")
    base = out_dir / "training"
    jobs = [(base, seed, i, sensor) for i in range(frames)]
    start = time.perf_counter()
    pool = None
    if workers > 1 and frames > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(min(workers, frames))
        results = pool.imap(_write_frame, jobs, chunksize=4)
    else:
        results = map(_write_frame, jobs)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=frames, desc="synthetic KITTI", unit="frame")
    total_points = 0
    try:
        for num_points, names in results:
            total_points += num_points
            for label, count in names.items():
                if label in summary["objects"]:
                    summary["objects"][label] += count
                elif label == "DontCare":
                    summary["dontcare"] += count
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    summary["seconds"] = time.perf_counter() - start
    summary["points_per_frame"] = total_points / frames
    sets = out_dir / "ImageSets"
    atomic_write_text(sets / "train.txt", "".join(f"{n}\n" for n in ids[:frames - num_val]))
    atomic_write_text(sets / "val.txt", "".join(f"{n}\n" for n in ids[frames - num_val:]))
    atomic_write_text(sets / "trainval.txt", "".join(f"{n}\n" for n in ids))
    atomic_write_text(out_dir / _MARKER, json.dumps({**params, "complete": True}, indent=1) + "\n")
    return summary
