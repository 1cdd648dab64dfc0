"""Human3.6M in the VideoPose3D npz formats: readers, cameras, normalisation, windows, flip augmentation.

Files (see ``datasets/h36m.md`` for how to obtain them):

- ``data_3d_h36m.npz``, key ``positions_3d``: ``{subject: {action: float32 (T, 32, 3)}}``, world frame, metres;
- ``data_2d_h36m_<source>.npz``, key ``positions_2d``: ``{subject: {action: [4 x (T, 17, 2)]}}`` in pixels, one
  array per camera in :data:`H36M_CAMERA_IDS` order, and ``metadata`` (layout, keypoint symmetry).

Both store pickled dictionaries; they are read with geoattn's restricted unpickler
(:func:`geoattn.io.restricted_pickle_loads`), which builds containers and numpy arrays only and refuses any
other class, so a file from elsewhere cannot run code.

Poses are ``[..., V, 3]`` arrays in metres; cameras follow the OpenCV convention (x right, y down,
z forward) with ``p_cam = (p_world - centre) @ R.T`` (``R`` rotates world into camera axes).
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geoattn.io import restricted_pickle_load, restricted_pickle_loads
from geoattn.nn.glagcn import H36M_JOINTS_LEFT, H36M_JOINTS_RIGHT
from geoattn.sparse.geometry import make_transform, quaternion_to_matrix, transform_points

__all__ = [
    "H36M_CAMERA_IDS",
    "H36M_32_TO_17",
    "H36M_ACTIONS",
    "Camera",
    "load_positions_3d",
    "load_positions_2d",
    "load_mmpose_cameras",
    "world_to_camera",
    "camera_to_world",
    "project_to_pixels",
    "normalize_screen_coordinates",
    "image_coordinates",
    "root_relative",
    "flip_pose",
    "centre_on_root",
    "uncentre_from_root",
    "ChunkedWindows",
    "group_by_action",
]

#: Camera serial numbers in the order of the 2D npz lists.
H36M_CAMERA_IDS: tuple[str, ...] = ("54138969", "55011271", "58860488", "60457274")
#: Indices of the 17 kept joints among the 32 of the raw Human3.6M skeleton.
H36M_32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
#: The 15 action classes; npz action names are these plus an optional " <n>" take suffix.
H36M_ACTIONS: tuple[str, ...] = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases", "Sitting",
    "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
)


@dataclass(frozen=True)
class Camera:
    """A calibrated camera. ``rotation [3, 3]`` maps world axes into camera axes, ``centre [3]`` is the
    camera position in world metres, ``focal [2]`` and ``principal [2]`` are in pixels, ``radial [3]``
    and ``tangential [2]`` are Human3.6M distortion coefficients, ``width``/``height`` the image size."""

    rotation: np.ndarray
    centre: np.ndarray
    focal: np.ndarray
    principal: np.ndarray
    width: int
    height: int
    radial: np.ndarray = field(default_factory=lambda: np.zeros(3))
    tangential: np.ndarray = field(default_factory=lambda: np.zeros(2))

    @staticmethod
    def from_quaternion(orientation: Sequence[float], translation_mm: Sequence[float], focal, principal,
                        width: int, height: int, radial=(0.0, 0.0, 0.0), tangential=(0.0, 0.0)) -> "Camera":
        """From VideoPose3D's extrinsics: ``orientation`` (w, x, y, z) rotates camera axes into the world,
        ``translation_mm`` is the camera centre in world millimetres."""
        camera_to_world = quaternion_to_matrix(torch.as_tensor(orientation, dtype=torch.float64)).numpy()
        return Camera(camera_to_world.T, np.asarray(translation_mm, dtype=np.float64) / 1000.0,
                      np.asarray(focal, dtype=np.float64), np.asarray(principal, dtype=np.float64),
                      int(width), int(height), np.asarray(radial, dtype=np.float64),
                      np.asarray(tangential, dtype=np.float64))


def _load_pickled_dict(path: str | Path, key: str) -> tuple[dict, object]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (see datasets/h36m.md for how to obtain it)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    with archive:
        files = sorted(name[:-4] for name in archive.namelist() if name.endswith(".npy"))
        if key not in files:
            raise ValueError(f"{path}: expected a '{key}' entry, found {files}")
        data = _pickled_entry(path, archive, key)
        metadata = _pickled_entry(path, archive, "metadata") if "metadata" in files else None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: '{key}': expected a dictionary, got {type(data).__name__}")
    return data, metadata


def _pickled_entry(path: Path, archive: zipfile.ZipFile, key: str):
    """The object in the 0-d object array ``key`` of an npz, unpickled by :func:`geoattn.io.restricted_pickle_loads`
    (numpy's own loader would run any code the pickle names)."""
    try:
        with archive.open(f"{key}.npy") as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(stream)
            rest = stream.read()
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: '{key}': not a readable .npy entry ({error})") from None
    if dtype != object:
        raise ValueError(f"{path}: '{key}': expected a pickled dictionary, got a {dtype} array of shape {shape}")
    array = restricted_pickle_loads(rest, f"{path} ('{key}')")
    if not isinstance(array, np.ndarray) or array.shape != ():
        raise ValueError(f"{path}: '{key}': expected one pickled dictionary, got {type(array).__name__}")
    return array.item()


def load_positions_3d(path: str | Path, joints_17: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Read ``data_3d_h36m.npz``: ``{subject: {action: float32 (T, 17 or 32, 3)}}``, world frame, metres."""
    data, _ = _load_pickled_dict(path, "positions_3d")
    out: dict[str, dict[str, np.ndarray]] = {}
    for subject, actions in data.items():
        out[subject] = {}
        for action, positions in actions.items():
            positions = np.asarray(positions, dtype=np.float32)
            if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[1] not in (17, 32):
                raise ValueError(f"{path}: {subject}/{action}: expected (T, 32, 3), got {positions.shape}")
            if joints_17 and positions.shape[1] == 32:
                positions = positions[:, list(H36M_32_TO_17)]
            out[subject][action] = positions
    return out


def load_positions_2d(path: str | Path) -> tuple[dict[str, dict[str, list[np.ndarray]]], dict]:
    """Read ``data_2d_h36m_<source>.npz``: (``{subject: {action: [per camera float32 (T, 17, 2)]}}`` in
    pixels, metadata). Extra columns (e.g. detection confidences) are dropped."""
    data, metadata = _load_pickled_dict(path, "positions_2d")
    metadata = dict(metadata or {})
    metadata.setdefault("num_joints", 17)
    metadata.setdefault("keypoints_symmetry", [list(H36M_JOINTS_LEFT), list(H36M_JOINTS_RIGHT)])
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for subject, actions in data.items():
        out[subject] = {}
        for action, per_camera in actions.items():
            views = []
            for view in per_camera:
                view = np.asarray(view, dtype=np.float32)
                if view.ndim != 3 or view.shape[-1] < 2:
                    raise ValueError(f"{path}: {subject}/{action}: expected (T, V, 2), got {view.shape}")
                views.append(view[..., :2])
            out[subject][action] = views
    return out, metadata


def load_mmpose_cameras(path: str | Path) -> dict[tuple[str, str], Camera]:
    """Read an mmpose-style ``cameras.pkl``: ``{(subject, camera_id): {R, T, f, c, k, p, w, h}}`` with
    ``R`` world -> camera and ``T`` the camera centre in metres."""
    raw = restricted_pickle_load(path, "camera pickle")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dictionary of cameras, got {type(raw).__name__}")
    cameras = {}
    for key, entry in raw.items():
        cameras[tuple(key)] = Camera(
            np.asarray(entry["R"], dtype=np.float64).reshape(3, 3),
            np.asarray(entry["T"], dtype=np.float64).reshape(3),
            np.asarray(entry["f"], dtype=np.float64).reshape(2),
            np.asarray(entry["c"], dtype=np.float64).reshape(2),
            int(entry["w"]), int(entry["h"]),
            np.asarray(entry.get("k", np.zeros(3)), dtype=np.float64).reshape(3),
            np.asarray(entry.get("p", np.zeros(2)), dtype=np.float64).reshape(2),
        )
    return cameras


def _rigid(points, rotation: np.ndarray, translation: np.ndarray):
    """``points @ rotation.T + translation`` through :func:`geoattn.sparse.geometry.transform_points`,
    for numpy arrays or tensors (dtype and type preserved)."""
    as_tensor = torch.as_tensor(points)
    transform = make_transform(torch.as_tensor(rotation, dtype=torch.float64),
                               torch.as_tensor(translation, dtype=torch.float64))
    flat = as_tensor.reshape(-1, 3).double()
    moved = transform_points(flat, transform.to(flat.device)).reshape(as_tensor.shape)
    if isinstance(points, Tensor):
        return moved.to(points.dtype)
    return moved.numpy().astype(np.asarray(points).dtype, copy=False)


def world_to_camera(points, camera: Camera):
    """``[..., 3]`` world points -> camera axes: ``(p - centre) @ R.T`` (numpy or torch, dtype kept)."""
    return _rigid(points, camera.rotation, -camera.rotation @ camera.centre)


def camera_to_world(points, camera: Camera):
    """Inverse of :func:`world_to_camera`: ``p @ R + centre``."""
    return _rigid(points, camera.rotation.T, camera.centre)


def project_to_pixels(points: np.ndarray | Tensor, camera: Camera, distort: bool = True):
    r"""Project camera-frame points ``[..., 3]`` to pixels ``[..., 2]`` (numpy or torch, dtype kept).

    With :math:`u = (x/z, y/z)`, :math:`r^2 = |u|^2`: :math:`u' = u\,(1 + k_1 r^2 + k_2 r^4 + k_3 r^6 +
    p\cdot u) + (p_2, p_1)\, r^2` (the Human3.6M model) and pixels :math:`f \odot u' + c`.
    """
    is_torch = isinstance(points, Tensor)
    lib = torch if is_torch else np

    def const(values):
        array = np.asarray(values, dtype=np.float64)
        return torch.as_tensor(array, dtype=points.dtype, device=points.device) if is_torch else array

    depth = points[..., 2:3]
    if is_torch:
        depth = depth.clamp_min(1e-6)
    else:
        depth = np.maximum(depth, 1e-6)
    normalised = points[..., :2] / depth
    if distort:
        radial_k, tangential_p = const(camera.radial), const(camera.tangential)
        r2 = (normalised ** 2).sum(-1, keepdims=True) if not is_torch else (normalised ** 2).sum(-1, keepdim=True)
        radial = 1 + radial_k[0] * r2 + radial_k[1] * r2 ** 2 + radial_k[2] * r2 ** 3
        tangential = (tangential_p * normalised).sum(-1, **({"keepdim": True} if is_torch else {"keepdims": True}))
        normalised = normalised * (radial + tangential) + lib.flip(tangential_p, [0] if is_torch else 0) * r2
    pixels = const(camera.focal) * normalised + const(camera.principal)
    return pixels if is_torch else pixels.astype(np.asarray(points).dtype, copy=False)


def normalize_screen_coordinates(pixels, width: int, height: int):
    """Pixels ``[..., 2]`` -> ``x / w * 2 - [1, h / w]``: x spans [-1, 1], the aspect ratio is kept."""
    if pixels.shape[-1] != 2:
        raise ValueError(f"pixels: expected a last dimension of 2, got shape {tuple(pixels.shape)}")
    return pixels / width * 2 - pixels.new_tensor([1.0, height / width]) if isinstance(pixels, Tensor) \
        else (pixels / width * 2 - np.array([1.0, height / width])).astype(pixels.dtype, copy=False)


def image_coordinates(normalised, width: int, height: int):
    """Inverse of :func:`normalize_screen_coordinates`."""
    if normalised.shape[-1] != 2:
        raise ValueError(f"normalised: expected a last dimension of 2, got shape {tuple(normalised.shape)}")
    offset = normalised.new_tensor([1.0, height / width]) if isinstance(normalised, Tensor) \
        else np.array([1.0, height / width])
    out = (normalised + offset) * width / 2
    return out if isinstance(normalised, Tensor) else out.astype(normalised.dtype, copy=False)


def root_relative(poses, root: int = 0):
    """Subtract joint ``root`` from every joint of ``[..., V, 3]`` (the root becomes 0)."""
    return poses - poses[..., root:root + 1, :]


def centre_on_root(poses, root: int = 0):
    """Express every joint except ``root`` relative to the root; the root keeps its absolute position.

    Invertible (see :func:`uncentre_from_root`) and commutes with :func:`flip_pose` when the root is
    not a left/right joint. For 2D inputs it removes the large common-mode motion of the whole body
    from the pose channels while the root slot still carries the trajectory (as VideoPose3D does for
    3D targets).
    """
    centred = poses - poses[..., root:root + 1, :]
    centred[..., root, :] = poses[..., root, :]
    return centred


def uncentre_from_root(centred, root: int = 0):
    """Inverse of :func:`centre_on_root`."""
    poses = centred + centred[..., root:root + 1, :]
    poses[..., root, :] = centred[..., root, :]
    return poses


def flip_pose(poses, joints_left: Sequence[int] = H36M_JOINTS_LEFT,
              joints_right: Sequence[int] = H36M_JOINTS_RIGHT):
    """Horizontal mirror of ``[..., V, D]`` poses (2D or 3D): negate x and swap left/right joints.

    Applying it twice gives the input back. Works on numpy arrays and tensors; returns a copy.
    """
    if len(joints_left) != len(joints_right):
        raise ValueError(f"joints_left/joints_right: expected equal lengths, got {len(joints_left)} and "
                         f"{len(joints_right)}")
    flipped = poses.clone() if isinstance(poses, Tensor) else np.array(poses, copy=True)
    flipped[..., 0] = -flipped[..., 0]
    left, right = list(joints_left), list(joints_right)
    flipped[..., left + right, :] = flipped[..., right + left, :]
    return flipped


class ChunkedWindows:
    """Receptive-field windows of 2D keypoints around every frame, with their centre-frame 3D targets.

    Each sequence is padded by repeating its first/last frame (``np.pad(mode='edge')``) so every frame
    gets a full window of ``receptive_field`` frames. With ``flip=True`` every window also appears
    mirrored (2D and 3D, left/right swapped), doubling :meth:`__len__`.

    Args:
        poses_2d: sequences ``(T_i, V, 2)`` (normalised screen coordinates).
        poses_3d: matching sequences ``(T_i, V, 3)`` (root-relative camera frame), or ``None`` at inference.
        receptive_field: odd window length.
        frame_stride: use every ``frame_stride``-th frame of each sequence as a window centre, starting
            at frame ``i % frame_stride`` for sequence ``i`` (windows still see every frame); 1 keeps all.

    :meth:`batches` yields ``(inputs [B, receptive_field, V, 2], targets [B, 1, V, 3] or None)`` float32.
    """

    def __init__(self, poses_2d: Sequence[np.ndarray], poses_3d: Sequence[np.ndarray] | None,
                 receptive_field: int, flip: bool = False, joints_left: Sequence[int] = H36M_JOINTS_LEFT,
                 joints_right: Sequence[int] = H36M_JOINTS_RIGHT, frame_stride: int = 1) -> None:
        if receptive_field < 1 or receptive_field % 2 == 0:
            raise ValueError(f"receptive_field: expected an odd positive int, got {receptive_field}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride: expected a positive int, got {frame_stride}")
        if poses_3d is not None and len(poses_3d) != len(poses_2d):
            raise ValueError(f"poses_3d: expected {len(poses_2d)} sequences like poses_2d, got {len(poses_3d)}")
        self.receptive_field, self.flip = receptive_field, flip
        self.joints_left, self.joints_right = tuple(joints_left), tuple(joints_right)
        pad = receptive_field // 2
        padded, starts, targets = [], [], []
        offset = 0
        for i, sequence in enumerate(poses_2d):
            sequence = np.asarray(sequence, dtype=np.float32)
            if sequence.ndim != 3 or sequence.shape[-1] != 2 or len(sequence) == 0:
                raise ValueError(f"poses_2d[{i}]: expected a non-empty (T, V, 2) array, got {sequence.shape}")
            if poses_3d is not None:
                target = np.asarray(poses_3d[i], dtype=np.float32)
                if target.shape[:2] != sequence.shape[:2] or target.shape[-1] != 3:
                    raise ValueError(f"poses_3d[{i}]: expected shape {sequence.shape[:2] + (3,)}, got {target.shape}")
                targets.append(target[i % frame_stride::frame_stride])
            padded.append(np.pad(sequence, ((pad, pad), (0, 0), (0, 0)), mode="edge"))
            first = i % frame_stride  # stagger: repeated views of one clip cover every frame between them
            starts.append(offset + np.arange(first, len(sequence), frame_stride))
            offset += len(sequence) + 2 * pad
        self._padded = np.concatenate(padded) if padded else np.zeros((0, 0, 2), np.float32)
        self._starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self._targets = np.concatenate(targets) if targets else None
        self.num_frames = len(self._starts)

    def __len__(self) -> int:
        return self.num_frames * (2 if self.flip else 1)

    def get(self, indices: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """Windows for item ``indices`` (items ``>= num_frames`` are the flipped copies)."""
        indices = np.asarray(indices, dtype=np.int64)
        frames = indices % max(self.num_frames, 1)
        mirrored = indices >= self.num_frames
        windows = self._padded[self._starts[frames][:, None] + np.arange(self.receptive_field)]
        targets = self._targets[frames][:, None] if self._targets is not None else None
        if mirrored.any():
            windows[mirrored] = flip_pose(windows[mirrored], self.joints_left, self.joints_right)
            if targets is not None:
                targets[mirrored] = flip_pose(targets[mirrored], self.joints_left, self.joints_right)
        return torch.from_numpy(windows), (torch.from_numpy(targets) if targets is not None else None)

    def batches(self, batch_size: int, shuffle: bool = False, generator: np.random.Generator | None = None):
        """Iterate over all items in batches (a new permutation per call when ``shuffle``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        order = np.arange(len(self))
        if shuffle:
            (generator or np.random.default_rng()).shuffle(order)
        for begin in range(0, len(order), batch_size):
            yield self.get(order[begin:begin + batch_size])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(frames={self.num_frames}, receptive_field={self.receptive_field}, "
                f"flip={self.flip})")


def group_by_action(positions: Mapping[str, Mapping[str, object]]) -> dict[str, list[tuple[str, str]]]:
    """``{action class: [(subject, action name), ...]}`` using the part of the name before any space."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for subject, actions in positions.items():
        for action in actions:
            groups.setdefault(action.split(" ")[0], []).append((subject, action))
    return groups

