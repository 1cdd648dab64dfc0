"""Acclaim ASF/AMC motion capture (the CMU database's own format): parser, forward kinematics, H36M-17.

An ASF file describes the skeleton: per bone a unit ``direction`` and a ``length`` in the rest pose, an
``axis`` (three angles and their order, e.g. ``axis 0 0 20 XYZ``) defining the bone's local frame ``C``, and
the ``dof`` it moves in (``rx ry rz`` ...), plus the root's channel ``order`` (``TX TY TZ RX RY RZ``) and its
own ``axis`` / ``orientation``. An AMC file lists, frame after frame, the root's values in that order and each
bone's values in its dof order. Forward kinematics (column vectors; rotations applied in the order they are
listed, so ``rx ry rz`` gives ``M = Rz @ Ry @ Rx``, and ``axis ... XYZ`` gives ``C`` the same way):

.. math::
    L_{\\text{bone}} = L_{\\text{parent}} \\, C \\, M \\, C^{-1}, \\qquad
    p_{\\text{end}} = p_{\\text{start}} + \\text{length} \\cdot L_{\\text{bone}} \\, \\text{direction},

where a bone starts where its parent ends and the root's children start at the root's translation. Lengths
and translations are in the file's unit, ``:units length s`` meaning ``0.0254 / s`` metres per unit (inches
scaled by ``s``; CMU: ``s = 0.45``). AMC files carry no frame rate: the CMU database records at 120 fps.

:func:`load_asf_amc` gives the clip as the BVH reader's H36M-17 positions do (:func:`geoattn.data.bvh.load_bvh_h36m17`):
metres, +Z up, resampled to 50 fps.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoattn.data.bvh import _axis_rotations, resample, to_h36m17, y_up_to_z_up

__all__ = ["ASFSkeleton", "load_asf", "load_amc", "asf_amc_forward_kinematics", "CMU_ASF_TO_H36M17", "CMU_FPS",
           "load_asf_amc"]

#: Frame rate of the CMU motion capture database (AMC files do not store one).
CMU_FPS = 120.0
#: H36M-17 joints as the END points of CMU ASF bones ("root": the root's position); a tuple is a midpoint.
#: The hip joints are the ends of lhipjoint / rhipjoint, the spine the end of lowerback, the thorax the end of
#: lowerneck, the neck/nose the end of upperneck and the head the end of head, as in the CMU BVH conversions.
CMU_ASF_TO_H36M17: tuple[str | tuple[str, ...], ...] = (
    ("lhipjoint", "rhipjoint"), "rhipjoint", "rfemur", "rtibia", "lhipjoint", "lfemur", "ltibia",
    "lowerback", "lowerneck", "upperneck", "head", "lclavicle", "lhumerus", "lradius", "rclavicle",
    "rhumerus", "rradius",
)
_AXES = {"X": 0, "Y": 1, "Z": 2}
_ROOT_CHANNELS = {"TX", "TY", "TZ", "RX", "RY", "RZ"}


@dataclass
class ASFSkeleton:
    """A parsed ASF file. Bone 0 is ``root``; ``parents[b] < b`` (-1 for the root). ``dofs[b]`` lists bone
    ``b``'s AMC values in order (``rx``, ``ry``, ``rz``; the root: its ``order``, ``TX`` ... ``RZ``),
    ``axes[b]`` is its frame ``C`` [3, 3], ``directions`` [B, 3] unit vectors, ``lengths`` [B] in file
    units, ``metres_per_unit`` the ``:units length`` conversion and ``degrees`` the angle unit."""

    names: list[str]
    parents: list[int]
    directions: np.ndarray
    lengths: np.ndarray
    axes: np.ndarray
    dofs: list[list[str]]
    root_position: np.ndarray
    metres_per_unit: float
    degrees: bool = True
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.names)}


def _text_lines(path: Path, kind: str) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not an {kind} text file (byte {error.start} is not UTF-8)") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if words and not words[0].startswith("#"):
            lines.append((number, words))
    return lines


def _numbers(path: Path, number: int, words: Sequence[str], count: int, what: str) -> np.ndarray:
    if len(words) < count:
        raise ValueError(f"{path}: line {number}: expected {count} numbers for {what}, found {len(words)}")
    try:
        values = np.asarray([float(word) for word in words[:count]])
    except ValueError:
        raise ValueError(f"{path}: line {number}: expected {count} numbers for {what}, found "
                         f"{' '.join(words[:count])[:60]!r}") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: line {number}: expected finite numbers for {what}, found {' '.join(words[:count])}")
    return values


def _ordered_rotation(angles_by_axis: dict[int, np.ndarray], order: Sequence[int], shape) -> np.ndarray:
    """``R = R_last @ ... @ R_first`` for rotations about ``order`` (first listed applied first)."""
    rotation = np.broadcast_to(np.eye(3), tuple(shape) + (3, 3)).copy()
    for axis in order:
        rotation = _axis_rotations(axis, angles_by_axis[axis]) @ rotation
    return rotation


def _axis_frame(path: Path, number: int, words: Sequence[str], degrees: bool) -> np.ndarray:
    angles = _numbers(path, number, words, 3, "an axis")
    order = words[3].upper() if len(words) > 3 else "XYZ"
    if sorted(order) != ["X", "Y", "Z"]:
        raise ValueError(f"{path}: line {number}: expected an axis order such as XYZ, found {order!r}")
    radians = np.deg2rad(angles) if degrees else angles
    return _ordered_rotation({a: np.asarray(radians[a]) for a in range(3)}, [_AXES[c] for c in order], ())


def load_asf(path: str | Path) -> ASFSkeleton:
    """Parse an ASF skeleton. ``FileNotFoundError`` for a missing file, ``ValueError`` naming the file and
    line for malformed content (non-numeric values, unknown dof or root channel, a bone without direction
    or length, a hierarchy naming unknown bones or leaving bones unattached)."""
    path = Path(path)
    lines = _text_lines(path, "ASF")
    section, degrees, unit = None, True, 1.0
    root_order, root_axis, root_position = ["TX", "TY", "TZ", "RX", "RY", "RZ"], "XYZ", np.zeros(3)
    root_orientation = None
    bones: dict[str, dict] = {}
    current: dict | None = None
    children: dict[str, list[str]] = {}
    for number, words in lines:
        key = words[0]
        if key.startswith(":"):
            section = key[1:].lower()
            continue
        if section == "units":
            if key == "length":
                (unit,) = _numbers(path, number, words[1:], 1, "the length unit")
                if unit <= 0:
                    raise ValueError(f"{path}: line {number}: expected a positive length unit, found {unit}")
            elif key == "angle":
                degrees = words[1].lower().startswith("deg") if len(words) > 1 else True
        elif section == "root":
            if key == "order":
                root_order = [word.upper() for word in words[1:]]
                unknown = [word for word in root_order if word not in _ROOT_CHANNELS]
                if unknown or len(set(root_order)) != len(root_order):
                    raise ValueError(f"{path}: line {number}: expected root channels among TX TY TZ RX RY RZ "
                                     f"(each once), found {' '.join(words[1:])}")
            elif key == "axis":
                root_axis = words[1].upper() if len(words) > 1 else "XYZ"
            elif key == "position":
                root_position = _numbers(path, number, words[1:], 3, "the root position")
            elif key == "orientation":
                root_orientation = (number, words[1:])
        elif section == "bonedata":
            if key == "begin":
                current = {"line": number}
            elif key == "end":
                if current is None or "name" not in current:
                    raise ValueError(f"{path}: line {number}: 'end' of a bone without 'begin' and 'name'")
                for needed in ("direction", "length"):
                    if needed not in current:
                        raise ValueError(f"{path}: line {current['line']}: bone '{current['name']}' has no {needed}")
                bones[current["name"]] = current
                current = None
            elif current is not None:
                if key == "name":
                    current["name"] = words[1]
                elif key == "direction":
                    current["direction"] = _numbers(path, number, words[1:], 3, "a direction")
                elif key == "length":
                    current["length"] = float(_numbers(path, number, words[1:], 1, "a length")[0])
                elif key == "axis":
                    current["axis"] = (number, words[1:])
                elif key == "dof":
                    dofs = [word.lower() for word in words[1:]]
                    if any(dof not in ("rx", "ry", "rz") for dof in dofs):
                        raise ValueError(f"{path}: line {number}: expected rotational dofs among rx ry rz, found "
                                         f"{' '.join(words[1:])} (translating or stretching bones are not supported)")
                    current["dof"] = dofs
        elif section == "hierarchy" and key not in ("begin", "end"):
            children.setdefault(key, []).extend(words[1:])
    # root first, then every bone after its parent (breadth-first from the root)
    names, parents, order = ["root"], [-1], ["root"]
    for name in order:
        for child in children.get(name, []):
            if child not in bones:
                raise ValueError(f"{path}: the hierarchy names bone '{child}', which :bonedata does not define")
            if child in names:
                raise ValueError(f"{path}: bone '{child}' appears twice in the hierarchy")
            names.append(child)
            parents.append(names.index(name))
            order.append(child)
    unattached = sorted(set(bones) - set(names))
    if unattached:
        raise ValueError(f"{path}: bones {unattached} are not attached to the root in :hierarchy")
    directions, lengths, axes, dofs = [np.zeros(3)], [0.0], [], [root_order]
    if root_orientation is None:
        axes.append(np.eye(3))
    else:  # the root's frame: its orientation angles in its axis order
        number, words = root_orientation
        axes.append(_axis_frame(path, number, [*words[:3], root_axis], degrees))
    for name in names[1:]:
        bone = bones[name]
        norm = np.linalg.norm(bone["direction"])
        if norm == 0:
            raise ValueError(f"{path}: line {bone['line']}: bone '{name}' has a zero direction")
        directions.append(bone["direction"] / norm)
        lengths.append(bone["length"])
        axes.append(_axis_frame(path, *bone["axis"], degrees) if "axis" in bone else np.eye(3))
        dofs.append(bone.get("dof", []))
    return ASFSkeleton(names, parents, np.asarray(directions), np.asarray(lengths), np.asarray(axes), dofs,
                       root_position, 0.0254 / unit, degrees)


def load_amc(path: str | Path, skeleton: ASFSkeleton) -> dict[str, np.ndarray]:
    """Parse an AMC motion for ``skeleton``: ``{bone name: [F, len(dofs)] values}`` in the file's units
    (bones without dofs are absent). Every frame must list every moving bone with its dof count of values;
    ``ValueError`` names the file and line otherwise."""
    path = Path(path)
    lines = _text_lines(path, "AMC")
    moving = [name for name, dofs in zip(skeleton.names, skeleton.dofs) if dofs]
    frames: list[dict[str, np.ndarray]] = []
    frame_line = 0
    for number, words in lines:
        if words[0].startswith(":"):
            continue
        if len(words) == 1 and words[0].isdigit():
            if frames:
                _check_frame(path, frame_line, frames[-1], moving)
            frames.append({})
            frame_line = number
            continue
        name = words[0]
        if not frames:
            raise ValueError(f"{path}: line {number}: values of '{name[:40]}' before the first frame number")
        if name not in skeleton.index:
            raise ValueError(f"{path}: line {number}: bone '{name[:40]}' is not in the skeleton")
        count = len(skeleton.dofs[skeleton.index[name]])
        if len(words) - 1 != count:
            raise ValueError(f"{path}: line {number}: expected {count} values for '{name}', found {len(words) - 1}")
        frames[-1][name] = _numbers(path, number, words[1:], count, f"'{name}'")
    if not frames:
        raise ValueError(f"{path}: no frames (expected a frame number line, then one line per bone)")
    _check_frame(path, frame_line, frames[-1], moving)
    return {name: np.stack([frame[name] for frame in frames]) for name in moving}


def _check_frame(path: Path, line: int, frame: dict, moving: Sequence[str]) -> None:
    missing = [name for name in moving if name not in frame]
    if missing:
        raise ValueError(f"{path}: line {line}: the frame lacks bones {missing[:5]} (file cut short?)")


def asf_amc_forward_kinematics(skeleton: ASFSkeleton, motion: dict[str, np.ndarray]) -> np.ndarray:
    """Positions ``[F, B, 3]`` in metres (file axes): index 0 the root's position, index ``b`` the END of
    bone ``b`` (``skeleton.names``)."""
    num_frames = len(next(iter(motion.values())))
    positions = np.zeros((num_frames, len(skeleton.names), 3))
    frames_local = np.zeros((num_frames, len(skeleton.names), 3, 3))
    to_radians = np.deg2rad if skeleton.degrees else (lambda value: value)
    for bone, parent in enumerate(skeleton.parents):
        values = motion.get(skeleton.names[bone], np.zeros((num_frames, 0)))
        angles, order, translation = {a: np.zeros(num_frames) for a in range(3)}, [], np.zeros((num_frames, 3))
        for k, dof in enumerate(skeleton.dofs[bone]):
            axis = _AXES[dof[-1].upper()]
            if dof.upper().startswith("T"):
                translation[:, axis] = values[:, k]
            else:
                angles[axis], order = to_radians(values[:, k]), order + [axis]
        axis_frame = skeleton.axes[bone]
        local = axis_frame @ _ordered_rotation(angles, order, (num_frames,)) @ axis_frame.T
        if parent < 0:
            frames_local[:, bone] = local
            positions[:, bone] = (translation + skeleton.root_position) * skeleton.metres_per_unit
            continue
        frames_local[:, bone] = frames_local[:, parent] @ local
        start = positions[:, parent]
        step = skeleton.lengths[bone] * skeleton.metres_per_unit * skeleton.directions[bone]
        positions[:, bone] = start + np.einsum("fij,j->fi", frames_local[:, bone], step)
    return positions


def load_asf_amc(asf: str | Path, amc: str | Path, fps: float | None = 50.0, up: str = "z",
                 source_fps: float = CMU_FPS,
                 mapping: Sequence[str | tuple[str, ...]] = CMU_ASF_TO_H36M17) -> np.ndarray:
    """An ASF/AMC clip as H36M-17 positions ``float32 [F, 17, 3]`` in metres: forward kinematics, the
    joint mapping, resampling from ``source_fps`` (CMU: 120) to ``fps`` (``None``: keep) and ``up='z'`` to
    turn the Y-up CMU world into the Z-up world of :mod:`geoattn.pose.cameras` (``up='y'`` keeps it)."""
    if up not in ("y", "z"):
        raise ValueError(f"up: expected 'y' or 'z', got {up!r}")
    skeleton = load_asf(asf)
    positions = asf_amc_forward_kinematics(skeleton, load_amc(amc, skeleton))
    positions = to_h36m17(positions, skeleton.names, mapping)
    if fps is not None:
        positions = resample(positions, source_fps, fps)
    if up == "z":
        positions = y_up_to_z_up(positions)
    return positions.astype(np.float32)
