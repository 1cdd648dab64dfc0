r"""Geometry shared by the point-cloud models: point pair features, PCA normals, rigid transforms (SE(3)),
camera projection and recorded LiDAR augmentation.

Conventions (ARCHITECTURE.md): points are rows; a rigid transform is a homogeneous ``T [..., 4, 4]`` that maps
source into target, :math:`p' = p R^\top + t`. Boxes are LiDAR-frame ``(x, y, z, dx, dy, dz, heading)`` with
``(x, y, z)`` the box centre (OpenPCDet). Everything follows the input's dtype and device and supports
autograd unless stated otherwise.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from geoattn.sparse.neighbors import knn
from geoattn.sparse.segment import scatter_mean

__all__ = [
    "vector_angle",
    "point_pair_features",
    "estimate_normals",
    "quaternion_to_matrix",
    "axis_angle_to_matrix",
    "random_rotation",
    "make_transform",
    "compose_transforms",
    "invert_transform",
    "transform_points",
    "weighted_kabsch",
    "project_to_image",
    "LidarAugmentation",
]


def _check_tensor(name: str, value, last_dims: tuple[int, ...], min_dim: int | None = None) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    min_dim = len(last_dims) if min_dim is None else min_dim
    if value.dim() < min_dim or tuple(value.shape[value.dim() - len(last_dims) :]) != last_dims:
        shape = ", ".join(["..."] + [str(d) for d in last_dims])
        raise ValueError(f"{name}: expected shape [{shape}], got {tuple(value.shape)}")


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _safe_norm(vector: Tensor) -> Tensor:
    """Euclidean norm over the last dim with a zero (not NaN) gradient at the zero vector."""
    squared = (vector * vector).sum(-1)
    if not _needs_grad(vector):  # same values; the guards below only protect the backward pass
        return squared.sqrt()
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), squared)


def vector_angle(a: Tensor, b: Tensor) -> Tensor:
    r"""Angle in ``[0, pi]`` between 3-vectors, :math:`\operatorname{atan2}(\lVert a \times b\rVert, a \cdot b)`.

    Accurate for nearly parallel vectors (unlike ``acos``); 0 when either vector is zero, with finite
    gradients there. Broadcasts over leading dimensions: ``[..., 3], [..., 3] -> [...]``.
    """
    a, b = torch.broadcast_tensors(a, b)
    sine = _safe_norm(torch.linalg.cross(a, b, dim=-1))
    cosine = (a * b).sum(-1)
    if not _needs_grad(a, b):  # atan2(0, 0) is already 0; the guard only keeps gradients finite
        return torch.atan2(sine, cosine)
    degenerate = (sine == 0) & (cosine == 0)
    return torch.atan2(sine, torch.where(degenerate, torch.ones_like(cosine), cosine))


def point_pair_features(
    pos_i: Tensor, normal_i: Tensor, pos_j: Tensor, normal_j: Tensor, *, normalize_angles: bool = False
) -> Tensor:
    r"""Point pair features of pairs ``(i, j)`` (Drost et al.; the RoITr / PPFNet variant).

    With :math:`d = p_j - p_i`:

    .. math:: \mathrm{PPF}(i, j) = \big(\lVert d\rVert,\ \angle(n_i, d),\ \angle(n_j, d),\ \angle(n_i, n_j)\big),
        \quad \angle(a, b) = \operatorname{atan2}(\lVert a\times b\rVert, a\cdot b) \in [0, \pi].

    Invariant to any rigid motion applied to positions and normals together, provided the normals keep
    their orientation (see :func:`estimate_normals`). ``d = 0`` (a point paired with itself) gives
    ``(0, 0, 0, angle(n_i, n_i))`` with finite gradients.

    Args:
        pos_i, normal_i, pos_j, normal_j: ``[..., 3]`` tensors (broadcast together).
        normalize_angles: divide the three angles by :math:`\pi` (RoITr's ``[0, 1]`` scaling).

    Returns:
        ``[..., 4]``: distance (input units) and three angles (radians, or in ``[0, 1]``).
    """
    for name, value in (("pos_i", pos_i), ("normal_i", normal_i), ("pos_j", pos_j), ("normal_j", normal_j)):
        _check_tensor(name, value, (3,), min_dim=1)
    offset = pos_j - pos_i
    angles = torch.stack(
        [vector_angle(normal_i, offset), vector_angle(normal_j, offset), vector_angle(normal_i, normal_j)], -1
    )
    if normalize_angles:
        angles = angles / math.pi
    distance = _safe_norm(offset)
    distance = distance.expand(angles.shape[:-1]) if distance.shape != angles.shape[:-1] else distance
    return torch.cat([distance.unsqueeze(-1), angles], -1)


def _smallest_eigenvector_3x3(covariance: Tensor) -> Tensor:
    """Unit eigenvector of the smallest eigenvalue of symmetric ``[N, 3, 3]`` matrices, in closed form.

    Eigenvalues by the trigonometric method (Smith 1961), the eigenvector as the longest cross product of two
    rows of ``C - lambda I``; a few dozen elementwise ops instead of one LAPACK call per matrix. Rows where
    the smallest eigenvalue is (nearly) repeated, so that the cross products vanish, fall back to ``eigh``.
    """
    a00, a01, a02 = covariance[:, 0, 0], covariance[:, 0, 1], covariance[:, 0, 2]
    a11, a12, a22 = covariance[:, 1, 1], covariance[:, 1, 2], covariance[:, 2, 2]
    mean_eigenvalue = (a00 + a11 + a22) / 3
    b00, b11, b22 = a00 - mean_eigenvalue, a11 - mean_eigenvalue, a22 - mean_eigenvalue
    off_diagonal = a01 * a01 + a02 * a02 + a12 * a12
    spread = ((b00 * b00 + b11 * b11 + b22 * b22 + 2 * off_diagonal) / 6).sqrt()
    safe_spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    determinant = b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02)
    half_det = (determinant / (2 * safe_spread**3)).clamp(-1.0, 1.0)
    smallest = mean_eigenvalue + 2 * spread * torch.cos(torch.acos(half_det) / 3 + 2 * math.pi / 3)
    rows = covariance - smallest[:, None, None] * torch.eye(3, dtype=covariance.dtype, device=covariance.device)
    candidates = torch.stack(
        [
            torch.linalg.cross(rows[:, 0], rows[:, 1], dim=-1),
            torch.linalg.cross(rows[:, 0], rows[:, 2], dim=-1),
            torch.linalg.cross(rows[:, 1], rows[:, 2], dim=-1),
        ],
        dim=1,
    )
    lengths = (candidates * candidates).sum(-1)
    best_length, best = lengths.max(1)
    vectors = candidates.gather(1, best[:, None, None].expand(-1, 1, 3)).squeeze(1)
    scale = (spread * spread).clamp(min=torch.finfo(covariance.dtype).tiny)
    degenerate = best_length <= 1e-10 * scale * scale
    vectors = vectors / best_length.clamp(min=torch.finfo(covariance.dtype).tiny).sqrt()[:, None]
    if bool(degenerate.any()):
        rows_index = degenerate.nonzero().squeeze(1)
        vectors[rows_index] = torch.linalg.eigh(covariance[rows_index]).eigenvectors[:, :, 0]
    return vectors


def estimate_normals(
    pos: Tensor,
    k: int = 16,
    batch: Tensor | None = None,
    *,
    viewpoint: Tensor | Sequence[float] | None = None,
) -> Tensor:
    r"""Unit normals from PCA of the ``k`` nearest neighbours (the point itself included).

    The normal is the eigenvector of the smallest eigenvalue of the neighbourhood covariance. Its sign:

    * default (``viewpoint=None``), a rotation- and translation-invariant rule: the normal points away from
      the centroid :math:`\mu_i` of its neighbourhood, :math:`n_i \cdot (p_i - \mu_i) > 0` (outwards on
      convex parts of a surface). Where that is ambiguous (a flat patch, :math:`|n_i\cdot(p_i-\mu_i)|` below
      :math:`10^{-3}` of the neighbourhood's RMS radius) the normal points away from the centroid of the
      whole cloud (of its batch element). Both references move with the cloud, so normals co-rotate under
      any rigid motion (up to rounding in ambiguous cases), which point pair features need.
    * ``viewpoint`` given (``[3]``), the classic rule: normals face the viewpoint,
      :math:`n_i \cdot (v - p_i) \ge 0` (RoITr orients towards the sensor at the origin; not invariant
      to rotations about other points).

    Args:
        pos: points ``[N, 3]``.
        k: neighbourhood size (clamped to each batch element's size; fewer than 3 points give an arbitrary
            unit normal).
        batch: sorted batch ids ``[N]``.

    Returns:
        ``normals [N, 3]`` of unit length, in ``pos.dtype`` (no gradient: eigenvectors of nearly degenerate
        covariances have unbounded derivatives).
    """
    _check_tensor("pos", pos, (3,), min_dim=2)
    if pos.dim() != 2:
        raise ValueError(f"pos: expected a 2-D tensor [N, 3], got shape {tuple(pos.shape)}")
    if pos.size(0) == 0:
        return pos.new_empty((0, 3))
    with torch.no_grad():
        points = pos.detach()
        index, _ = knn(points, points, k, batch, batch)
        work = torch.float64  # covariances of metre-scale clouds lose digits in float32
        # offsets from the centre point are small, so the float32 subtraction loses nothing that matters
        local = (points[index.clamp(min=0)] - points[:, None, :]).to(work)  # [N, k, 3]
        valid = index >= 0
        if bool(valid.all()):
            count = torch.full((points.size(0), 1), float(index.size(1)), dtype=work, device=pos.device)
        else:  # batch elements smaller than k: padded slots count for nothing
            local = local * valid.unsqueeze(-1)
            count = valid.sum(1, keepdim=True).to(work)
        mean = local.sum(1) / count  # centroid minus the point
        covariance = local.transpose(1, 2) @ local / count.unsqueeze(-1) - mean[:, :, None] * mean[:, None, :]
        normals = _smallest_eigenvector_3x3(covariance)
        if viewpoint is not None:
            view = torch.as_tensor(viewpoint, dtype=work, device=pos.device).reshape(-1)
            if view.numel() != 3:
                raise ValueError(f"viewpoint: expected 3 coordinates, got {view.numel()}")
            sign_reference = view - points.to(work)
        else:
            sign_reference = -mean  # p_i - centroid_i
            spread = covariance.diagonal(dim1=1, dim2=2).sum(1).clamp(min=0).sqrt()
            ambiguous = (normals * sign_reference).sum(-1).abs() <= 1e-3 * spread
            if bool(ambiguous.any()):
                points64 = points.to(work)
                if batch is None:
                    cloud_centroid = points64.mean(0, keepdim=True)
                else:
                    cloud_centroid = scatter_mean(points64, batch.long())[batch.long()]
                sign_reference = torch.where(ambiguous[:, None], points64 - cloud_centroid, sign_reference)
        flip = (normals * sign_reference).sum(-1) < 0
        normals = torch.where(flip[:, None], -normals, normals)
    return normals.to(pos.dtype)


# ---------------------------------------------------------------------------------------------
# SE(3)
# ---------------------------------------------------------------------------------------------
def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    r"""Rotation matrices ``[..., 3, 3]`` from quaternions ``[..., 4]`` ordered ``(w, x, y, z)`` (normalised here)."""
    _check_tensor("quaternion", quaternion, (4,), min_dim=1)
    w, x, y, z = (quaternion / _safe_norm(quaternion).unsqueeze(-1)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, -1).reshape(quaternion.shape[:-1] + (3, 3))


def axis_angle_to_matrix(rotation_vector: Tensor) -> Tensor:
    r"""Rotation matrices ``[..., 3, 3]`` from rotation vectors ``[..., 3]`` (axis times angle in radians,
    right-handed); the zero vector gives the identity."""
    _check_tensor("rotation_vector", rotation_vector, (3,), min_dim=1)
    angle = rotation_vector.norm(dim=-1, keepdim=True)
    # sin(angle / 2) / angle * v: the axis is never divided out where the angle is 0
    scale = torch.where(angle > 0, (0.5 * angle).sin() / torch.where(angle > 0, angle, 1.0), 0.5)
    return quaternion_to_matrix(torch.cat([(0.5 * angle).cos(), scale * rotation_vector], -1))


def random_rotation(
    num: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Rotations drawn uniformly (Haar measure) from SO(3): ``[3, 3]`` or ``[num, 3, 3]``.

    A normalised 4-D standard Gaussian is uniform on the unit quaternion sphere, which double covers SO(3)
    uniformly (unlike uniform Euler angles). ``generator`` makes the draw reproducible (its device must
    match ``device``); sampling happens in float64 then casts to ``dtype`` (default: torch's default).
    """
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
        raise ValueError(f"num: expected None or a non-negative int, got {num!r}")
    dtype = dtype or torch.get_default_dtype()
    count = 1 if num is None else num
    quaternion = torch.randn(count, 4, generator=generator, dtype=torch.float64, device=device)
    # a zero draw has probability 0 but would not be a rotation: replace it by the identity
    quaternion[(quaternion == 0).all(-1), 0] = 1.0
    rotation = quaternion_to_matrix(quaternion).to(dtype)
    return rotation[0] if num is None else rotation


def make_transform(rotation: Tensor, translation: Tensor) -> Tensor:
    r"""Homogeneous ``T [..., 4, 4]`` from ``rotation [..., 3, 3]`` and ``translation [..., 3]`` (broadcast)."""
    _check_tensor("rotation", rotation, (3, 3))
    _check_tensor("translation", translation, (3,), min_dim=1)
    batch_shape = torch.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1])
    top = torch.cat(
        [rotation.expand(batch_shape + (3, 3)), translation.expand(batch_shape + (3,)).unsqueeze(-1)], -1
    )
    bottom = top.new_zeros(batch_shape + (1, 4))
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def compose_transforms(transform_a: Tensor, transform_b: Tensor) -> Tensor:
    r"""``T_a @ T_b``: first apply ``T_b``, then ``T_a`` (batch dims broadcast)."""
    _check_tensor("transform_a", transform_a, (4, 4))
    _check_tensor("transform_b", transform_b, (4, 4))
    return transform_a @ transform_b


def invert_transform(transform: Tensor) -> Tensor:
    r"""Inverse of rigid transforms ``[..., 4, 4]``: :math:`(R, t)^{-1} = (R^\top, -R^\top t)` (exact, no solve)."""
    _check_tensor("transform", transform, (4, 4))
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    translation = -(rotation_t @ transform[..., :3, 3:]).squeeze(-1)
    return make_transform(rotation_t, translation)


def transform_points(points: Tensor, transform: Tensor) -> Tensor:
    r"""Apply ``transform [..., 4, 4]`` to row points ``[..., N, 3]``: :math:`p R^\top + t` (batch dims broadcast)."""
    _check_tensor("points", points, (3,), min_dim=2)
    _check_tensor("transform", transform, (4, 4))
    rotation = transform[..., :3, :3]
    if points.dim() == 2 and transform.dim() == 2:  # the common case: one fused multiply-add
        return torch.addmm(transform[:3, 3], points, rotation.t())
    translation = transform[..., None, :3, 3]
    return points @ rotation.transpose(-1, -2) + translation


def weighted_kabsch(src: Tensor, dst: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""Weighted least-squares rigid transform (Kabsch / Umeyama without scale) mapping ``src`` onto ``dst``.

    Minimises :math:`\sum_i w_i \lVert R s_i + t - d_i\rVert^2` over rotations (det = +1):
    with weighted centroids :math:`\bar s, \bar d` and :math:`H = \sum_i w_i (s_i-\bar s)(d_i-\bar d)^\top =
    U\Sigma V^\top`, :math:`R = V \operatorname{diag}(1, 1, \det(VU^\top)) U^\top` (the reflection fix) and
    :math:`t = \bar d - R\bar s`.

    Args:
        src, dst: corresponding points ``[..., N, 3]``.
        weights: non-negative ``[..., N]`` (default all ones); only their ratios matter.

    Returns:
        ``T [..., 4, 4]`` with ``dst ~ transform_points(src, T)``. Solved in float64 and cast back;
        differentiable where the singular values of ``H`` are distinct (the usual SVD caveat).
    """
    _check_tensor("src", src, (3,), min_dim=2)
    _check_tensor("dst", dst, (3,), min_dim=2)
    if src.shape != dst.shape:
        raise ValueError(f"dst: expected the shape of src {tuple(src.shape)}, got {tuple(dst.shape)}")
    if src.size(-2) == 0:
        raise ValueError("src: expected at least one correspondence, got N = 0")
    if weights is None:
        weights = src.new_ones(src.shape[:-1])
    elif not isinstance(weights, Tensor) or weights.shape != src.shape[:-1]:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected shape {tuple(src.shape[:-1])}, got {shape}")
    out_dtype = src.dtype
    src64, dst64, w64 = src.double(), dst.double(), weights.double().unsqueeze(-1)
    total = w64.sum(-2, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    w64 = w64 / total
    src_centroid = (w64 * src64).sum(-2, keepdim=True)
    dst_centroid = (w64 * dst64).sum(-2, keepdim=True)
    cross = (w64 * (src64 - src_centroid)).transpose(-1, -2) @ (dst64 - dst_centroid)  # H [..., 3, 3]
    u, _, vh = torch.linalg.svd(cross)
    v = vh.transpose(-1, -2)
    sign = torch.sign(torch.linalg.det(v @ u.transpose(-1, -2))).detach()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.ones(sign.shape + (3,), dtype=torch.float64, device=src.device)
    fix = torch.cat([fix[..., :2], sign.unsqueeze(-1)], -1)
    rotation = (v * fix.unsqueeze(-2)) @ u.transpose(-1, -2)
    translation = dst_centroid.squeeze(-2) - (rotation @ src_centroid.transpose(-1, -2)).squeeze(-1)
    return make_transform(rotation, translation).to(out_dtype)


# ---------------------------------------------------------------------------------------------
# camera projection
# ---------------------------------------------------------------------------------------------
def project_to_image(
    points: Tensor,
    lidar2img: Tensor,
    image_hw: Sequence[int] | Tensor,
    *,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Project LiDAR points into one or several cameras.

    With :math:`(x, y, z, w) = \mathrm{lidar2img}\,[p; 1]` (``lidar2img = K [R|t]``, mmdet3d style),
    ``depth = z`` and ``uv = (x / z, y / z)`` in pixels (OpenCV: ``(0, 0)`` is the centre of the top-left
    pixel, ``u`` to the right). A point is ``valid`` when ``depth > eps`` and ``0 <= u < W``, ``0 <= v < H``.
    Points behind the camera get finite (meaningless) ``uv`` and finite gradients.

    Args:
        points: ``[N, 3]`` (extra columns are not allowed: slice ``points[:, :3]``).
        lidar2img: ``[4, 4]`` (one camera) or ``[V, 4, 4]``.
        image_hw: ``(H, W)`` shared by all cameras, or ``[V, 2]`` per camera.

    Returns:
        ``uv [N, 2]``, ``depth [N]``, ``valid [N]`` bool; with ``V`` cameras ``[V, N, 2]``, ``[V, N]``, ``[V, N]``.
    """
    _check_tensor("points", points, (3,), min_dim=2)
    if points.dim() != 2:
        raise ValueError(f"points: expected a 2-D tensor [N, 3], got shape {tuple(points.shape)}")
    _check_tensor("lidar2img", lidar2img, (4, 4))
    if lidar2img.dim() not in (2, 3):
        raise ValueError(f"lidar2img: expected [4, 4] or [V, 4, 4], got shape {tuple(lidar2img.shape)}")
    matrix = lidar2img.to(points.dtype)
    hw = torch.as_tensor(image_hw, dtype=points.dtype, device=points.device)
    num_views = 1 if lidar2img.dim() == 2 else lidar2img.size(0)
    if hw.dim() == 1 and hw.numel() == 2:
        hw = hw.expand(num_views, 2)
    if hw.shape != (num_views, 2):
        raise ValueError(f"image_hw: expected (H, W) or [{num_views}, 2], got shape {tuple(hw.shape)}")
    single = lidar2img.dim() == 2
    matrix = matrix.unsqueeze(0) if single else matrix
    # [V, N, 3] homogeneous image coordinates (the fourth row of lidar2img is not needed), one fused
    # multiply-add per camera
    camera = torch.baddbmm(
        matrix[:, None, :3, 3], points.expand(num_views, -1, -1), matrix[:, :3, :3].transpose(-1, -2)
    )
    depth = camera[..., 2]
    in_front = depth > eps
    safe_depth = torch.where(in_front, depth, torch.ones_like(depth))
    uv = camera[..., :2] / safe_depth.unsqueeze(-1)
    height, width = hw[:, 0, None], hw[:, 1, None]
    valid = in_front & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    if single:
        return uv[0], depth[0], valid[0]
    return uv, depth, valid


# ---------------------------------------------------------------------------------------------
# recorded LiDAR augmentation
# ---------------------------------------------------------------------------------------------
class LidarAugmentation:
    r"""A recorded sequence of global LiDAR augmentations with an exact inverse.

    Operations (applied in the order they are added; all are maps of the form :math:`p \mapsto A p + b`):

    * ``flip("x")``: mirror across the x axis, :math:`y \to -y`, heading :math:`\to -h`
      (OpenPCDet ``random_flip_along_x``); ``flip("y")``: :math:`x \to -x`, heading :math:`\to \pi - h`.
    * ``rotate(angle)``: counter-clockwise about +z by ``angle`` radians, heading :math:`\to h + angle`.
    * ``scale(factor)``: :math:`p \to s p`, box sizes :math:`\times s`.
    * ``translate((tx, ty, tz))``: :math:`p \to p + t`.

    The recorded maps are composed into one float64 affine map, so ``apply_*`` rounds once and
    ``invert_*`` undoes everything in reverse order (flip, rotate by ``-angle``, divide by ``s``, subtract
    ``t``), again in float64: a float32 KITTI frame round-trips to about one float32 ulp (< 1e-5 m).
    Headings are not wrapped (wrapping would make the inverse inexact); wrap them when you need to.
    Velocities (``vx, vy`` box columns 7-8 with ``has_velocity=True``) follow the linear part.

    Example::

        aug = LidarAugmentation().flip("x").rotate(0.3).scale(1.02).translate((0.1, 0.0, 0.0))
        points_aug = aug.apply_points(points)         # [N, C >= 3], extra columns unchanged
        boxes_aug = aug.apply_boxes(boxes)            # [M, 7 + ...]
        raw = aug.invert_points(points_aug)           # back in the sensor frame of the image
        lidar2img_aug = lidar2img @ aug.inverse_matrix()   # project augmented points directly
    """

    def __init__(self, operations: Sequence[tuple[str, object]] = ()):
        self.operations: list[tuple[str, object]] = []
        for name, value in operations:  # replay through the recorders, which validate the values
            if name not in ("flip", "rotate", "scale", "translate"):
                raise ValueError(f"operations: expected names flip/rotate/scale/translate, got {name!r}")
            getattr(self, name)(value)

    # -- recording ------------------------------------------------------------------------------
    def flip(self, axis: str = "x") -> "LidarAugmentation":
        if axis not in ("x", "y"):
            raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
        self.operations.append(("flip", axis))
        return self

    def rotate(self, angle: float) -> "LidarAugmentation":
        angle = float(angle)
        if not math.isfinite(angle):
            raise ValueError(f"angle: expected a finite angle in radians, got {angle}")
        self.operations.append(("rotate", angle))
        return self

    def scale(self, factor: float) -> "LidarAugmentation":
        factor = float(factor)
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"factor: expected a positive finite scale, got {factor}")
        self.operations.append(("scale", factor))
        return self

    def translate(self, offset: Sequence[float] | Tensor) -> "LidarAugmentation":
        values = [float(v) for v in (offset.tolist() if isinstance(offset, Tensor) else offset)]
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"offset: expected 3 finite numbers (tx, ty, tz), got {values}")
        self.operations.append(("translate", tuple(values)))
        return self

    @classmethod
    def sample(
        cls,
        generator: torch.Generator | None = None,
        flip_x_prob: float = 0.5,
        flip_y_prob: float = 0.0,
        rotation_range: tuple[float, float] = (-math.pi / 4, math.pi / 4),
        scale_range: tuple[float, float] = (0.95, 1.05),
        translation_std: float | Sequence[float] = 0.0,
    ) -> "LidarAugmentation":
        """Random augmentation in the usual order flip -> rotate -> scale -> translate (LoGoNet/OpenPCDet)."""
        def uniform() -> float:
            return float(torch.rand((), generator=generator, dtype=torch.float64))

        aug = cls()
        if uniform() < flip_x_prob:
            aug.flip("x")
        if uniform() < flip_y_prob:
            aug.flip("y")
        low, high = rotation_range
        aug.rotate(low + (high - low) * uniform())
        low, high = scale_range
        aug.scale(low + (high - low) * uniform())
        std = torch.as_tensor(translation_std, dtype=torch.float64).expand(3)
        if bool((std > 0).any()):
            aug.translate(torch.randn(3, generator=generator, dtype=torch.float64) * std)
        return aug

    # -- composed maps -----------------------------------------------------------------------------
    def _affine(self) -> tuple[Tensor, Tensor, float, float]:
        """``(A [3, 3], b [3], heading_sign, heading_offset)`` of the composed map, float64 on the CPU."""
        linear = torch.eye(3, dtype=torch.float64)
        offset = torch.zeros(3, dtype=torch.float64)
        sign, heading = 1.0, 0.0
        for name, value in self.operations:
            if name == "flip":
                step = torch.diag(torch.tensor([1.0, -1.0, 1.0] if value == "x" else [-1.0, 1.0, 1.0], dtype=torch.float64))
                sign, heading = -sign, -heading + (0.0 if value == "x" else math.pi)
                linear, offset = step @ linear, step @ offset
            elif name == "rotate":
                c, s = math.cos(value), math.sin(value)
                step = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
                heading += value
                linear, offset = step @ linear, step @ offset
            elif name == "scale":
                linear, offset = linear * value, offset * value
            else:
                offset = offset + torch.tensor(value, dtype=torch.float64)
        return linear, offset, sign, heading

    def matrix(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The 4x4 affine map raw -> augmented (not rigid when scaled)."""
        linear, offset, _, _ = self._affine()
        return make_transform(linear, offset).to(dtype=dtype, device=device)

    def inverse_matrix(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The 4x4 affine map augmented -> raw."""
        linear, offset, _, _ = self._affine()
        inverse = torch.linalg.inv(linear)
        return make_transform(inverse, -(inverse @ offset)).to(dtype=dtype, device=device)

    # -- points ------------------------------------------------------------------------------------
    def apply_points(self, points: Tensor) -> Tensor:
        """Augment ``points [N, C >= 3]`` (columns 3+ unchanged); returns a new tensor."""
        _check_points_columns("points", points, 3)
        linear, offset, _, _ = self._affine()
        xyz = points[:, :3].double() @ linear.to(points.device).T + offset.to(points.device)
        return torch.cat([xyz.to(points.dtype), points[:, 3:]], 1)

    def invert_points(self, points: Tensor) -> Tensor:
        """Undo :meth:`apply_points`: reverse order, each step inverted, in float64."""
        _check_points_columns("points", points, 3)
        xyz = points[:, :3].double()
        for name, value in reversed(self.operations):
            xyz = _invert_step(xyz, name, value)
        return torch.cat([xyz.to(points.dtype), points[:, 3:]], 1)

    # -- boxes -------------------------------------------------------------------------------------
    def apply_boxes(self, boxes: Tensor, has_velocity: bool = False) -> Tensor:
        """Augment boxes ``[M, 7 + ...]`` (x, y, z, dx, dy, dz, heading[, vx, vy], ...)."""
        _check_points_columns("boxes", boxes, 9 if has_velocity else 7)
        linear, offset, sign, heading = self._affine()
        scale = _uniform_scale(self.operations)
        out = boxes.clone()
        device = boxes.device
        out[:, :3] = (boxes[:, :3].double() @ linear.to(device).T + offset.to(device)).to(boxes.dtype)
        out[:, 3:6] = (boxes[:, 3:6].double() * scale).to(boxes.dtype)
        out[:, 6] = (sign * boxes[:, 6].double() + heading).to(boxes.dtype)
        if has_velocity:
            velocity = torch.cat([boxes[:, 7:9].double(), boxes.new_zeros(boxes.size(0), 1, dtype=torch.float64)], 1)
            out[:, 7:9] = (velocity @ linear.to(device).T)[:, :2].to(boxes.dtype)
        return out

    def invert_boxes(self, boxes: Tensor, has_velocity: bool = False) -> Tensor:
        """Undo :meth:`apply_boxes` (reverse order, each step inverted, float64)."""
        _check_points_columns("boxes", boxes, 9 if has_velocity else 7)
        centre = boxes[:, :3].double()
        size = boxes[:, 3:6].double()
        heading = boxes[:, 6].double()
        velocity = (
            torch.cat([boxes[:, 7:9].double(), boxes.new_zeros(boxes.size(0), 1, dtype=torch.float64)], 1)
            if has_velocity
            else None
        )
        for name, value in reversed(self.operations):
            centre = _invert_step(centre, name, value)
            if velocity is not None and name != "translate":
                velocity = _invert_step(velocity, name, value)
            if name == "flip":
                heading = -heading if value == "x" else math.pi - heading
            elif name == "rotate":
                heading = heading - value
            elif name == "scale":
                size = size / value
        out = boxes.clone()
        out[:, :3] = centre.to(boxes.dtype)
        out[:, 3:6] = size.to(boxes.dtype)
        out[:, 6] = heading.to(boxes.dtype)
        if velocity is not None:
            out[:, 7:9] = velocity[:, :2].to(boxes.dtype)
        return out

    def __len__(self) -> int:
        return len(self.operations)

    def __repr__(self) -> str:
        steps = ", ".join(f"{name}({value!r})" for name, value in self.operations)
        return f"LidarAugmentation([{steps}])"


def _check_points_columns(name: str, value, columns: int) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != 2 or value.size(1) < columns:
        raise ValueError(f"{name}: expected a 2-D tensor [N, >= {columns}], got shape {tuple(value.shape)}")


def _uniform_scale(operations) -> float:
    scale = 1.0
    for name, value in operations:
        if name == "scale":
            scale *= value
    return scale


def _invert_step(xyz: Tensor, name: str, value) -> Tensor:
    """Inverse of one recorded step on float64 rows ``[N, 3]``."""
    if name == "flip":
        column = 1 if value == "x" else 0
        xyz = xyz.clone()
        xyz[:, column] = -xyz[:, column]
        return xyz
    if name == "rotate":
        c, s = math.cos(value), math.sin(value)
        x, y = xyz[:, 0], xyz[:, 1]
        return torch.stack([c * x + s * y, -s * x + c * y, xyz[:, 2]], 1)
    if name == "scale":
        return xyz / value
    return xyz - torch.tensor(value, dtype=xyz.dtype, device=xyz.device)
