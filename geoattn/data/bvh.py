"""Biovision Hierarchy (BVH) motion capture: parser, forward kinematics, mapping to Human3.6M-17.

A small self-contained reader (numpy only): the maintained PyPI parsers either stop at parsing (``bvh``,
last released 2017) or pull in their own maths stacks, while lifting needs only joint positions.

Conventions: Euler channels are applied in the order listed for each joint as intrinsic rotations
(``CHANNELS 3 Zrotation Yrotation Xrotation`` gives ``R = Rz @ Ry @ Rx``), angles in degrees; a joint's
world position is ``parent_position + parent_rotation @ (offset + translation channels)``. Every
``End Site`` becomes a joint named ``<parent>_end``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BVHMotion", "load_bvh", "forward_kinematics", "CMU_TO_H36M17", "to_h36m17", "resample",
           "y_up_to_z_up", "load_bvh_h36m17"]

_AXES = {"X": 0, "Y": 1, "Z": 2}

#: H36M-17 joints as CMU joint names; a tuple means the midpoint of those joints.
CMU_TO_H36M17: tuple[str | tuple[str, ...], ...] = (
    ("LeftHip", "RightHip"), "RightHip", "RightKnee", "RightAnkle", "LeftHip", "LeftKnee", "LeftAnkle",
    "Chest", "Neck", "Head", "Head_end", "LeftShoulder", "LeftElbow", "LeftWrist", "RightShoulder",
    "RightElbow", "RightWrist",
)


@dataclass
class BVHMotion:
    """A parsed BVH file. ``parents[j] < j`` (-1 for roots); ``channels[j]`` lists joint ``j``'s channel
    names and ``channel_start[j]`` their first column in ``motion [F, total channels]``."""

    names: list[str]
    parents: list[int]
    offsets: np.ndarray
    channels: list[list[str]]
    channel_start: list[int]
    frame_time: float
    motion: np.ndarray

    @property
    def num_frames(self) -> int:
        return self.motion.shape[0]

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time


_CHANNELS = {f"{axis}{kind}" for axis in ("X", "Y", "Z", "x", "y", "z") for kind in ("rotation", "position")}


def load_bvh(path: str | Path) -> BVHMotion:
    """Parse a BVH file (hierarchy and motion).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and the line for
    anything else: a file that is not text, a truncated hierarchy or motion block, a count, offset or motion
    value that is not a number (or not finite), an unknown channel name, and a frame time that is not positive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a BVH text file (byte {error.start} is not UTF-8)") from None
    tokens: list[str] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        tokens += words
        lines += [number] * len(words)
    names, parents, offsets, channels, channel_start = [], [], [], [], []
    stack: list[int] = []
    position, total_channels = 0, 0

    def where() -> str:
        return f"line {lines[position]}" if position < len(tokens) else "end of file"

    def take(what: str) -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(f"{path}: expected {what}, found the end of the file (file cut short?)")
        position += 1
        return tokens[position - 1]

    def expect(token: str) -> None:
        found_at = where()
        found = take(f"'{token}'")
        if found != token:
            raise ValueError(f"{path}: {found_at}: expected '{token}', found '{found[:40]}'")

    def number(what: str, kind: type = float):
        found_at = where()
        token = take(what)
        try:
            value = kind(token)
        except ValueError:
            raise ValueError(f"{path}: {found_at}: expected {what}, found '{token[:40]}'") from None
        if not np.isfinite(value):
            raise ValueError(f"{path}: {found_at}: expected a finite {what}, found '{token}'")
        return value

    expect("HIERARCHY")
    while True:
        if position >= len(tokens):
            raise ValueError(f"{path}: the file ends inside the hierarchy, before 'MOTION' (file cut short?)")
        token = tokens[position]
        if token == "MOTION":
            break
        if token in ("ROOT", "JOINT", "End"):
            if token == "End":
                expect("End")
                expect("Site")
                name = f"{names[stack[-1]]}_end" if stack else "End"
            else:
                position += 1
                name = take("a joint name")
            expect("{")
            joint = len(names)
            names.append(name)
            parents.append(stack[-1] if stack else -1)
            expect("OFFSET")
            offsets.append([number("an OFFSET value") for _ in range(3)])
            joint_channels: list[str] = []
            if token != "End" and position < len(tokens) and tokens[position] == "CHANNELS":
                position += 1
                count_at = where()
                count = number("a channel count", int)
                if count < 0:
                    raise ValueError(f"{path}: {count_at}: expected a non-negative channel count, found {count}")
                for _ in range(count):
                    channel_at = where()
                    channel = take("a channel name")
                    if channel not in _CHANNELS:
                        raise ValueError(f"{path}: {channel_at}: unknown channel '{channel[:40]}' of joint '{name}' "
                                         "(expected Xrotation ... Zposition)")
                    joint_channels.append(channel)
            channels.append(joint_channels)
            channel_start.append(total_channels)
            total_channels += len(joint_channels)
            stack.append(joint)
        elif token == "}":
            if not stack:
                raise ValueError(f"{path}: {where()}: unbalanced '}}'")
            stack.pop()
            position += 1
        else:
            raise ValueError(f"{path}: {where()}: unexpected token '{token[:40]}' in the hierarchy")
    if stack:
        raise ValueError(f"{path}: {where()}: hierarchy ended with {len(stack)} unclosed joints")
    if not names:
        raise ValueError(f"{path}: the hierarchy has no joints")
    expect("MOTION")
    expect("Frames:")
    frames_at = where()
    num_frames = number("a frame count", int)
    if num_frames < 0:
        raise ValueError(f"{path}: {frames_at}: expected a non-negative frame count, found {num_frames}")
    expect("Frame")
    expect("Time:")
    time_at = where()
    frame_time = number("a frame time")
    if frame_time <= 0:
        raise ValueError(f"{path}: {time_at}: expected a positive frame time in seconds, found {frame_time}")
    motion_at = where()
    try:
        values = np.asarray(tokens[position:], dtype=np.float64)
    except ValueError:
        bad = next(k for k in range(position, len(tokens)) if not _is_number(tokens[k]))
        raise ValueError(f"{path}: line {lines[bad]}: expected a motion value, found '{tokens[bad][:40]}'") from None
    if values.size != num_frames * total_channels:
        raise ValueError(f"{path}: {motion_at}: expected {num_frames} frames x {total_channels} channels of motion, "
                         f"got {values.size} values (file cut short?)")
    if not np.isfinite(values).all():
        bad = position + int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"{path}: line {lines[bad]}: expected a finite motion value, found '{tokens[bad]}'")
    return BVHMotion(names, parents, np.asarray(offsets, dtype=np.float64), channels, channel_start,
                     frame_time, values.reshape(num_frames, total_channels))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _axis_rotations(axis: int, radians: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(radians), np.sin(radians)
    out = np.zeros(radians.shape + (3, 3))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    out[..., axis, axis] = 1.0
    out[..., i, i] = cos
    out[..., j, j] = cos
    out[..., i, j] = -sin
    out[..., j, i] = sin
    return out


def forward_kinematics(motion: BVHMotion) -> np.ndarray:
    """World positions ``[F, J, 3]`` of every joint and end site (same unit as the file)."""
    frames = motion.num_frames
    positions = np.zeros((frames, len(motion.names), 3))
    rotations = np.zeros((frames, len(motion.names), 3, 3))
    for joint, parent in enumerate(motion.parents):
        local_rotation = np.broadcast_to(np.eye(3), (frames, 3, 3)).copy()
        translation = np.broadcast_to(motion.offsets[joint], (frames, 3)).copy()
        for k, channel in enumerate(motion.channels[joint]):
            if channel not in _CHANNELS:
                raise ValueError(f"motion: unknown channel '{channel}' of joint '{motion.names[joint]}'")
            column = motion.motion[:, motion.channel_start[joint] + k]
            axis = _AXES[channel[0].upper()]
            if channel[1:] == "rotation":
                local_rotation = local_rotation @ _axis_rotations(axis, np.deg2rad(column))
            else:
                translation[:, axis] += column
        if parent < 0:
            positions[:, joint] = translation
            rotations[:, joint] = local_rotation
        else:
            positions[:, joint] = positions[:, parent] + np.einsum("fij,fj->fi", rotations[:, parent], translation)
            rotations[:, joint] = rotations[:, parent] @ local_rotation
    return positions


def to_h36m17(positions: np.ndarray, names: Sequence[str],
              mapping: Sequence[str | tuple[str, ...]] = CMU_TO_H36M17) -> np.ndarray:
    """Pick (or average) named joints of ``positions [F, J, 3]`` into the H36M-17 layout ``[F, 17, 3]``."""
    lookup = {name: i for i, name in enumerate(names)}
    columns = []
    for entry in mapping:
        group = (entry,) if isinstance(entry, str) else tuple(entry)
        missing = [name for name in group if name not in lookup]
        if missing:
            raise ValueError(f"mapping: joints {missing} not in the skeleton (available: {list(names)})")
        columns.append(positions[:, [lookup[name] for name in group]].mean(1))
    return np.stack(columns, axis=1)


def resample(positions: np.ndarray, source_fps: float, target_fps: float) -> np.ndarray:
    """Linear interpolation of ``[F, ...]`` frames from ``source_fps`` to ``target_fps``."""
    if source_fps <= 0 or target_fps <= 0:
        raise ValueError(f"source_fps/target_fps: expected positive rates, got {source_fps}, {target_fps}")
    frames = positions.shape[0]
    duration = (frames - 1) / source_fps
    times = np.arange(int(np.floor(duration * target_fps + 1e-9)) + 1) / target_fps
    position = np.clip(times * source_fps, 0, frames - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, frames - 1)
    weight = (position - lower).reshape((-1,) + (1,) * (positions.ndim - 1))
    return positions[lower] * (1 - weight) + positions[upper] * weight


def y_up_to_z_up(positions: np.ndarray) -> np.ndarray:
    """Rotate +90 degrees about x so that +Y (BVH's usual up) becomes +Z: ``(x, y, z) -> (x, -z, y)``."""
    return np.stack([positions[..., 0], -positions[..., 2], positions[..., 1]], axis=-1)


def load_bvh_h36m17(path: str | Path, fps: float | None = 50.0, up: str = "z", scale: float = 1.0,
                    mapping: Sequence[str | tuple[str, ...]] = CMU_TO_H36M17) -> np.ndarray:
    """A BVH clip as H36M-17 positions ``float32 [F, 17, 3]``: forward kinematics, joint mapping,
    ``scale`` (file unit -> metres), optional resampling to ``fps`` and ``up='z'`` to turn a Y-up file
    into the Z-up world of :mod:`geoattn.pose.cameras` (``up='y'`` keeps the file's axes)."""
    if up not in ("y", "z"):
        raise ValueError(f"up: expected 'y' or 'z', got {up!r}")
    motion = load_bvh(path)
    positions = to_h36m17(forward_kinematics(motion), motion.names, mapping) * scale
    if fps is not None:
        positions = resample(positions, motion.fps, fps)
    if up == "z":
        positions = y_up_to_z_up(positions)
    return positions.astype(np.float32)
