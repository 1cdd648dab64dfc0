"""End-to-end registration: preprocessing, RoITr matching and pose, the FPFH baseline, the training loss.

Scale convention: a RoITr checkpoint is trained at one point spacing (``model.config.voxel_size``).
:class:`RoITrRegistration` downsamples the user's clouds at their ``voxel_size`` and multiplies the
coordinates by ``model.config.voxel_size / voxel_size`` so that the network always sees its training
density; the translation is scaled back afterwards. Small objects (a 15 cm bunny at 5 mm) and rooms
(5 cm) therefore use the same weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from geoattn.models.roitr import RoITr, RoITrConfig, RoITrOutput, centroid_fps
from geoattn.registration.io import atomic_write_bytes, check_cloud, check_downsampled
from geoattn.registration.losses import overlap_circle_loss, patch_overlaps, transport_labels, transport_nll_loss
from geoattn.registration.matching import (
    Correspondences,
    fine_correspondences,
    partition_points_to_nodes,
    patch_scores,
    superpoint_matching,
)
from geoattn.registration.pose import (compatibility_registration, local_to_global_registration,
                                       point_to_plane_icp, ransac_registration)
from geoattn.sparse.geometry import estimate_normals, transform_points
from geoattn.sparse.neighbors import grid_subsample
from geoattn.sparse.segment import scatter_mean

__all__ = [
    "DEFAULT_WEIGHTS",
    "ESTIMATORS",
    "RegistrationResult",
    "default_weights_path",
    "load_roitr",
    "save_roitr",
    "principal_frame",
    "equivariant_grid_subsample",
    "prepare_cloud",
    "RoITrRegistration",
    "match_output",
    "roitr_training_loss",
    "register",
]

DEFAULT_WEIGHTS = "roitr_synthetic.pt"
ESTIMATORS = ("sc2", "lgr", "ransac")


@dataclass
class RegistrationResult:
    """A 4x4 ``transform`` (float64) mapping source into target, with diagnostics."""

    transform: Tensor
    method: str
    seconds: float
    inlier_ratio: float
    num_correspondences: int
    num_points: tuple[int, int]
    timings: dict = field(default_factory=dict)
    correspondences: Correspondences | None = None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "transform": self.transform.double().tolist(),
            "inlier_ratio": self.inlier_ratio,
            "num_correspondences": self.num_correspondences,
            "num_points": list(self.num_points),
            "seconds": self.seconds,
            "timings": self.timings,
        }


def default_weights_path() -> Path:
    """Path of the checkpoint shipped in ``geoattn/weights``."""
    return Path(str(resources.files("geoattn") / "weights" / DEFAULT_WEIGHTS))


def save_roitr(model: RoITr, path: str | Path, meta: dict | None = None) -> None:
    """Save ``{"config", "state_dict", "meta"}`` (loadable with ``weights_only=True``)."""
    import io

    buffer = io.BytesIO()
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state, "meta": meta or {}}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_roitr(weights: str | Path | None = None, device: str | torch.device = "cpu") -> RoITr:
    """A :class:`RoITr` in eval mode from a checkpoint (the shipped one when ``weights`` is ``None``).

    Training-time checkpoints of ``examples/train_roitr_3dmatch.py`` (with optimiser state) load too.
    Raises ``FileNotFoundError`` / ``ValueError`` with a one-line reason.
    """
    path = Path(weights) if weights is not None else default_weights_path()
    if not path.is_file():
        hint = "" if weights is not None else " (the package ships without a checkpoint; pass --weights)"
        raise FileNotFoundError(f"{path}: RoITr checkpoint not found{hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable RoITr checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a RoITr checkpoint (expected 'config' and 'state_dict' entries)")
    model = RoITr(RoITrConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


def principal_frame(points: Tensor) -> tuple[Tensor, Tensor]:
    """Centroid ``[3]`` and principal axes ``[3, 3]`` (columns, largest variance first, det = +1) of
    ``points [N, 3]``, in float64.

    Both move with the cloud: for a rigid motion ``p -> p R^T + t`` the centroid becomes ``R c + t`` and
    the axes ``R A``. The sign of the first two axes makes the third central moment along them positive;
    the third axis is their cross product. Coordinates ``(p - c) @ A`` are therefore rotation invariant,
    except where two variances (nearly) coincide or a moment is (nearly) zero: there the axes are
    arbitrary but still a valid frame.
    """
    points64 = points.detach().double()
    centroid = points64.mean(0)
    centred = points64 - centroid
    covariance = centred.T @ centred / max(points64.size(0), 1)
    _, axes = torch.linalg.eigh(covariance)
    axes = axes.flip(1)  # descending variance
    skew = (centred @ axes[:, :2]).pow(3).sum(0)
    axes[:, :2] = axes[:, :2] * torch.where(skew < 0, -1.0, 1.0).to(axes)
    axes[:, 2] = torch.linalg.cross(axes[:, 0], axes[:, 1])
    return centroid, axes


def equivariant_grid_subsample(points: Tensor, voxel_size: float) -> Tensor:
    """Voxel-grid subsampling (cell centroids) on a grid aligned with :func:`principal_frame`.

    An axis-aligned grid is not rotation-equivariant: rotating a cloud first changes which points share
    a cell, hence the subsampled set (and everything computed from it). A grid centred on the centroid
    along the principal axes moves with the cloud, so ``subsample(p R^T + t) = subsample(p) R^T + t`` up
    to rounding at cell borders, and the cells are listed in an invariant order. Flipping an axis maps
    this grid onto itself, so an ambiguous axis sign does not change the set.
    """
    centroid, axes = principal_frame(points)
    # the centroid sits at a cell centre: the cells are then symmetric about it, so flipping an axis maps
    # the grid onto itself, and a cloud smaller than one cell collapses to one point
    canonical = ((points.detach().double() - centroid) @ axes + 0.5 * voxel_size).to(points.dtype)
    _, _, cluster = grid_subsample(canonical, voxel_size)
    return scatter_mean(points, cluster.to(points.device))


def prepare_cloud(points: Tensor, voxel_size: float, scale: float = 1.0, max_points: int | None = None,
                  normal_k: int = 16, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Downsample ``points`` with :func:`equivariant_grid_subsample` at ``voxel_size``, scale by ``scale``,
    keep at most ``max_points`` and estimate normals. Returns ``(pos [N, 3], normal [N, 3])``.

    Beyond ``max_points``, ``seed=None`` keeps a furthest-point sample started at the point nearest the
    centroid (deterministic and rotation-equivariant, for inference); an integer ``seed`` keeps a seeded
    random subset instead (a training augmentation). The normals' signs use the rotation-invariant rule of
    :func:`~geoattn.sparse.geometry.estimate_normals`, so the whole preparation commutes with rigid motions.
    """
    check_cloud(points)
    if voxel_size <= 0:
        raise ValueError(f"voxel_size: expected a positive size, got {voxel_size}")
    pos = equivariant_grid_subsample(points, voxel_size) * scale
    if max_points is not None and pos.size(0) > max_points:
        if seed is None:
            keep = centroid_fps(pos, max_points)
        else:
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(pos.size(0), generator=generator)[:max_points].sort().values
        pos = pos[keep.to(pos.device)]
    check_downsampled(pos.size(0), voxel_size)
    return pos, estimate_normals(pos, k=min(normal_k, pos.size(0)))


class RoITrRegistration:
    """Coarse-to-fine registration with a :class:`RoITr` model.

    Args:
        model: the network (switched to ``eval()`` here: training mode would not change the output,
            but keeping inference in eval mode is a guard against label leakage in future heads).
        voxel_size: downsampling grid of the user's clouds, in their units (``None``: the model's own).
        max_points: cap per cloud after downsampling.
        num_coarse: superpoint pairs kept by coarse matching (``None``: two per superpoint of the smaller
            cloud, at most 256; GeoTransformer's 256 for about 470 superpoints is about one per two, and on
            small clouds a fixed 256 mostly adds wrong pairs and transport cost); point_limit: points per patch.
        fine_topk / fine_threshold: mutual top-k and confidence threshold of the fine matching.
        sinkhorn_iterations: optimal-transport iterations at inference (``None``: the model's own, 100 in
            training). The default 10 gives the same correspondences as 100 on the measured pairs: the mutual
            top-k of the assignment settles in a few iterations, and the transport dominated the run time.
        estimator: ``"sc2"`` (second-order spatial compatibility, default; robust at inlier ratios of a few
            percent), ``"lgr"`` (local-to-global) or ``"ransac"``.
        acceptance_radius: inlier radius in model units (default: twice the model's voxel size).
        refine_iterations: point-to-plane ICP iterations on the prepared clouds after the estimator, with
            the acceptance radius as the pairing distance (0: off). Cheap (a few thousand points) and it
            pulls estimates that are close but not exact (a few degrees, tens of centimetres) onto the surface.
        icp: also refine with Open3D point-to-plane ICP on the full-resolution input clouds (off by default).
    """

    def __init__(self, model: RoITr, voxel_size: float | None = None, max_points: int = 12000,
                 num_coarse: int | None = None, point_limit: int = 64, fine_topk: int = 3,
                 fine_threshold: float = 0.05,
                 estimator: str = "sc2", acceptance_radius: float | None = None, icp: bool = False,
                 normal_k: int = 16, seed: int = 0, sinkhorn_iterations: int | None = 10,
                 refine_iterations: int = 30):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
        self.model = model.eval()
        self.voxel_size = voxel_size if voxel_size is not None else model.config.voxel_size
        if self.voxel_size <= 0:
            raise ValueError(f"voxel_size: expected a positive size, got {self.voxel_size}")
        self.scale = model.config.voxel_size / self.voxel_size
        self.max_points, self.num_coarse, self.point_limit = max_points, num_coarse, point_limit
        self.fine_topk, self.fine_threshold, self.estimator = fine_topk, fine_threshold, estimator
        self.acceptance_radius = acceptance_radius or 2.0 * model.config.voxel_size
        self.icp, self.normal_k, self.seed = icp, normal_k, seed
        self.sinkhorn_iterations = sinkhorn_iterations
        if not isinstance(refine_iterations, int) or refine_iterations < 0:
            raise ValueError(f"refine_iterations: expected a non-negative int, got {refine_iterations!r}")
        self.refine_iterations = refine_iterations

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def match(self, src_pos: Tensor, src_normal: Tensor, tgt_pos: Tensor, tgt_normal: Tensor
              ) -> tuple[RoITrOutput, Correspondences]:
        """Descriptors and correspondences of prepared clouds (model units)."""
        output = self.model(src_pos, src_normal, tgt_pos, tgt_normal)
        num_coarse = self.num_coarse
        if num_coarse is None:
            num_coarse = min(256, 2 * min(output.src_nodes.size(0), output.tgt_nodes.size(0)))
        return output, match_output(self.model, output, num_coarse, self.point_limit, self.fine_topk,
                                    self.fine_threshold, self.sinkhorn_iterations)

    def __call__(self, src: Tensor, tgt: Tensor) -> RegistrationResult:
        start = time.perf_counter()
        check_cloud(src, "src")
        check_cloud(tgt, "tgt")
        device = self.device
        src_pos, src_normal = prepare_cloud(src.to(device).float(), self.voxel_size, self.scale, self.max_points,
                                            self.normal_k)
        tgt_pos, tgt_normal = prepare_cloud(tgt.to(device).float(), self.voxel_size, self.scale, self.max_points,
                                            self.normal_k)
        prepared = time.perf_counter()
        _, corr = self.match(src_pos, src_normal, tgt_pos, tgt_normal)
        matched = time.perf_counter()
        if self.estimator == "sc2":
            estimate = compatibility_registration(corr.src, corr.tgt, corr.scores, self.acceptance_radius)
        elif self.estimator == "lgr":
            estimate = local_to_global_registration(corr.src, corr.tgt, corr.scores, corr.patch,
                                                    self.acceptance_radius)
        else:
            generator = torch.Generator().manual_seed(self.seed)
            estimate = ransac_registration(corr.src, corr.tgt, corr.scores, distance=self.acceptance_radius / 2,
                                           generator=generator)
        transform = estimate.transform.double()
        if self.refine_iterations > 0:
            transform = point_to_plane_icp(src_pos, tgt_pos, tgt_normal, transform, self.acceptance_radius,
                                           self.refine_iterations)
        residual = (transform_points(corr.src.double(), transform) - corr.tgt.double()).norm(dim=1)
        inliers = float((residual < self.acceptance_radius).double().mean()) if residual.numel() else 0.0
        transform = transform.cpu().clone()
        transform[:3, 3] /= self.scale
        posed = time.perf_counter()
        timings = {"prepare": prepared - start, "match": matched - prepared, "pose": posed - matched}
        if self.icp:
            from geoattn.registration.fpfh import icp_refine

            transform = icp_refine(src, tgt, transform, self.voxel_size)
            timings["icp"] = time.perf_counter() - posed
        # correspondences are reported in the input frames (model units divided by the scale)
        corr = Correspondences(corr.src / self.scale, corr.tgt / self.scale, corr.scores, corr.patch)
        return RegistrationResult(transform, "roitr", time.perf_counter() - start, inliers, int(corr.src.size(0)),
                                  (int(src_pos.size(0)), int(tgt_pos.size(0))), timings, corr)


def match_output(model: RoITr, output: RoITrOutput, num_coarse: int = 256, point_limit: int = 64,
                 fine_topk: int = 3, fine_threshold: float = 0.05,
                 sinkhorn_iterations: int | None = None) -> Correspondences:
    """Coarse superpoint matching, patch optimal transport and mutual top-k on a model output."""
    src_patches = partition_points_to_nodes(output.src_points, output.src_nodes, point_limit)
    tgt_patches = partition_points_to_nodes(output.tgt_points, output.tgt_nodes, point_limit)
    src_node, tgt_node, _ = superpoint_matching(output.src_node_feats, output.tgt_node_feats, num_coarse,
                                                src_patches.node_valid, tgt_patches.node_valid)
    src_patch, tgt_patch = src_patches.index[src_node], tgt_patches.index[tgt_node]
    scores = patch_scores(output.src_point_feats, output.tgt_point_feats, src_patch, tgt_patch)
    log_assignment = model.optimal_transport(scores, src_patch >= 0, tgt_patch >= 0, sinkhorn_iterations)
    return fine_correspondences(output.src_points, output.tgt_points, src_patch, tgt_patch, log_assignment,
                                fine_topk, fine_threshold)


def roitr_training_loss(model: RoITr, output: RoITrOutput, transform: Tensor, point_limit: int = 64,
                        max_patch_pairs: int = 128, positive_overlap: float = 0.1, radius: float | None = None,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Coarse circle loss + fine transport NLL for a pair with ground truth ``transform`` (model units).

    The fine loss uses up to ``max_patch_pairs`` ground-truth patch pairs with overlap above
    ``positive_overlap`` (sampled with ``generator``), not predicted ones, as in the paper. Returns a dict
    with ``loss``, ``coarse_loss``, ``fine_loss`` and the diagnostics ``patch_precision`` (fraction of
    predicted coarse pairs that overlap) and ``inlier_ratio`` of the predicted correspondences.
    """
    radius = radius or 2.0 * model.config.voxel_size
    transform = transform.to(output.src_points)
    src_patches = partition_points_to_nodes(output.src_points, output.src_nodes, point_limit)
    tgt_patches = partition_points_to_nodes(output.tgt_points, output.tgt_nodes, point_limit)
    src_node, tgt_node, overlap = patch_overlaps(output.src_points, output.tgt_points, src_patches.index,
                                                 tgt_patches.index, transform, radius)
    coarse = overlap_circle_loss(output.src_node_feats, output.tgt_node_feats, src_node, tgt_node, overlap,
                                 positive_overlap)
    positive = (overlap > positive_overlap).nonzero(as_tuple=True)[0]
    if positive.numel() > max_patch_pairs:
        positive = positive[torch.randperm(positive.numel(), generator=generator)[:max_patch_pairs].to(positive.device)]
    if positive.numel() > 0:
        src_patch, tgt_patch = src_patches.index[src_node[positive]], tgt_patches.index[tgt_node[positive]]
        scores = patch_scores(output.src_point_feats, output.tgt_point_feats, src_patch, tgt_patch)
        log_assignment = model.optimal_transport(scores, src_patch >= 0, tgt_patch >= 0)
        labels = transport_labels(output.src_points, output.tgt_points, src_patch, tgt_patch, transform, radius)
        fine = transport_nll_loss(log_assignment, labels)
    else:
        fine = output.src_point_feats.sum() * 0.0
    with torch.no_grad():
        overlapping = torch.zeros(output.src_nodes.size(0), output.tgt_nodes.size(0), dtype=torch.bool,
                                  device=output.src_points.device)
        overlapping[src_node, tgt_node] = True
        pred_src, pred_tgt, _ = superpoint_matching(output.src_node_feats, output.tgt_node_feats, 64,
                                                    src_patches.node_valid, tgt_patches.node_valid)
        precision = overlapping[pred_src, pred_tgt].float().mean() if pred_src.numel() else coarse.new_zeros(())
    return {"loss": coarse + fine, "coarse_loss": coarse.detach(), "fine_loss": fine.detach(),
            "patch_precision": precision}


def register(src: Tensor, tgt: Tensor, method: str = "roitr", voxel_size: float = 0.05,
             weights: str | Path | None = None, device: str = "cpu", seed: int = 0, icp: bool = False,
             estimator: str = "sc2", model: RoITr | None = None) -> RegistrationResult:
    """Register ``src [N, 3]`` onto ``tgt [M, 3]`` with ``method`` ``"roitr"`` or ``"fpfh"``.

    There is no fallback between methods: a missing checkpoint is an error, not a switch to FPFH.
    """
    if method == "roitr":
        model = model if model is not None else load_roitr(weights, device)
        pipeline = RoITrRegistration(model, voxel_size=voxel_size, icp=icp, estimator=estimator, seed=seed)
        return pipeline(src, tgt)
    if method == "fpfh":
        from geoattn.registration.fpfh import fpfh_registration

        start = time.perf_counter()
        result = fpfh_registration(src, tgt, voxel_size, seed=seed, icp=True)
        return RegistrationResult(result["transform"].double(), "fpfh", time.perf_counter() - start,
                                  result["fitness"], result["num_correspondences"], result["num_points"],
                                  result["timings"])
    raise ValueError(f"method: expected 'roitr' or 'fpfh', got {method!r}")

