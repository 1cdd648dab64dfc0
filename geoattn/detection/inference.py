"""Single-frame 3-D detection with a trained checkpoint: the library side of ``geoattn detect``.

:meth:`Detector.load` rebuilds the network from the configuration stored in a checkpoint of
``examples/train_detector.py`` (the package's KITTI checkpoint trained on synthetic scenes by default),
:func:`read_frame_for_detection` reads one KITTI velodyne file with its calibration and image size (or makes a
synthetic scene), and ``detector(frame)`` returns a :class:`DetectionResult` that writes KITTI label files and
bird's-eye pictures. The points go through the evaluation pipeline of the configuration: camera field of view
when ``FOV_POINTS_ONLY`` is set, ``used_feature_list`` columns, ``POINT_CLOUD_RANGE`` mask.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from geoattn.data.kitti import KittiCalibration, KittiLabels, read_calib, read_label, read_velodyne
from geoattn.sparse.geometry import project_to_image

__all__ = ["DetectionFrame", "DetectionResult", "Detector", "read_frame_for_detection"]

#: KITTI's camera-2 image size, used when a frame comes without an image.
KITTI_IMAGE_SHAPE = (375, 1242)


@dataclass
class DetectionFrame:
    """One LiDAR frame to detect in: raw ``points [N, F]`` (sensor frame), optional calibration, image size and
    ground truth (``labels``, camera frame, for pictures and the demo's summary)."""

    points: Tensor
    frame_id: str
    calib: KittiCalibration | None = None
    image_shape: tuple[int, int] | None = None
    labels: KittiLabels | None = None
    source: str = ""


def _sibling(frame: Path, folder: str, suffix: str) -> Path:
    """``<root>/<folder>/<stem><suffix>`` for a frame at ``<root>/velodyne/<stem>.bin``."""
    return frame.parent.parent / folder / f"{frame.stem}{suffix}"


def read_frame_for_detection(path: str | os.PathLike | None, calib: str | os.PathLike | None = None,
                             image_shape: Sequence[int] | None = None, num_point_features: int = 4,
                             demo_seed: int | None = None) -> DetectionFrame:
    """Read a KITTI velodyne ``.bin`` (float32 ``[N, num_point_features]``) for :class:`Detector`.

    ``calib`` defaults to ``../calib/<frame>.txt`` beside the velodyne folder and the image size to that of
    ``../image_2/<frame>.png`` (else :data:`KITTI_IMAGE_SHAPE`); ``../label_2/<frame>.txt``, when present, is
    kept as ground truth for the picture. With ``demo_seed`` a synthetic scene
    (:func:`geoattn.detection.synthetic.generate_scene`) is generated instead and ``path`` must be ``None``.
    """
    if demo_seed is not None:
        if path is not None:
            raise ValueError("demo_seed: a synthetic demo frame takes no file")
        from geoattn.detection.synthetic import generate_scene

        scene = generate_scene(int(demo_seed), render_image=False)
        return DetectionFrame(scene.points, f"synthetic_{demo_seed}", scene.calib, KITTI_IMAGE_SHAPE, scene.labels,
                              source=f"synthetic scene {demo_seed}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LiDAR frame")
    size = path.stat().st_size
    if size == 0 or size % (4 * num_point_features) != 0:
        raise ValueError(f"{path}: expected float32 x {num_point_features} per point (a multiple of "
                         f"{4 * num_point_features} bytes), got {size} bytes")
    points = read_velodyne(path, num_point_features)
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{path}: holds non-finite values (NaN or inf)")
    calib_path = Path(calib) if calib is not None else _sibling(path, "calib", ".txt")
    calibration = None
    if calib is not None or calib_path.is_file():
        if not calib_path.is_file():
            raise FileNotFoundError(f"--calib {calib_path}: no such calibration file")
        calibration = read_calib(calib_path)
    if image_shape is not None:
        height, width = (int(v) for v in image_shape)
        if height < 1 or width < 1:
            raise ValueError(f"image_shape: expected two positive sizes (H, W), got {tuple(image_shape)}")
        shape = (height, width)
    else:
        image_path = _sibling(path, "image_2", ".png")
        shape = KITTI_IMAGE_SHAPE
        if image_path.is_file():
            from PIL import Image

            with Image.open(image_path) as image:
                shape = (image.height, image.width)
    label_path = _sibling(path, "label_2", ".txt")
    labels = read_label(label_path) if label_path.is_file() else None
    return DetectionFrame(points, path.stem, calibration, shape, labels, source=str(path))


@dataclass
class DetectionResult:
    """Detections of one frame: LiDAR ``boxes [P, 7]``, ``scores [P]``, ``labels [P]`` (0-based into
    ``class_names``), their KITTI camera-frame rows (``kitti``, when the frame has a calibration) and what the
    picture needs."""

    frame: DetectionFrame
    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: list[str]
    points: Tensor
    point_range: list[float]
    kitti: KittiLabels | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def write_kitti(self, path: str | os.PathLike) -> None:
        """KITTI label file with scores (16 columns), written atomically; needs the frame's calibration."""
        from geoattn.data.kitti import write_label

        if self.kitti is None:
            raise ValueError(f"--out {path}: KITTI labels are in the camera frame and need the frame's "
                             "calibration (--calib, or calib/<frame>.txt beside velodyne/)")
        write_label(path, self.kitti)

    def render(self, path: str | os.PathLike) -> None:
        """Bird's-eye PNG of the points, the detections and (when known) the ground truth."""
        from geoattn.data.kitti import boxes_camera_to_lidar
        from geoattn.detection.render import render_bev

        gt = None
        if self.frame.labels is not None and self.frame.calib is not None:
            objects = self.frame.labels.without_dontcare()
            gt = boxes_camera_to_lidar(objects.boxes_camera, self.frame.calib.lidar2cam)
        render_bev(self.points, path, self.boxes, self.labels, self.scores, self.class_names, gt_boxes=gt,
                   point_range=self.point_range,
                   title=f"{self.frame.frame_id}: {self.boxes.shape[0]} detections ({self.seconds:.2f} s)")

    def to_dict(self) -> dict:
        rows = []
        for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            rows.append({"class": self.class_names[label], "score": round(score, 4),
                         "box_lidar": [round(v, 4) for v in box]})
        return {"frame": self.frame.frame_id, "source": self.frame.source, "num_points": int(self.points.shape[0]),
                "seconds": round(self.seconds, 3), "detections": rows, **self.extra}

    def format_table(self) -> str:
        lines = [f"{self.frame.frame_id}: {self.boxes.shape[0]} detections from {self.points.shape[0]} points "
                 f"in {self.seconds:.2f} s"]
        if self.boxes.shape[0]:
            lines.append(f"  {'class':<11}{'score':>6}  {'x':>7}{'y':>7}{'z':>7}  {'dx':>5}{'dy':>5}{'dz':>5}"
                         f"{'heading':>8}")
        for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist()):
            lines.append(f"  {self.class_names[label]:<11}{score:6.3f}  {box[0]:7.2f}{box[1]:7.2f}{box[2]:7.2f}  "
                         f"{box[3]:5.2f}{box[4]:5.2f}{box[5]:5.2f}{box[6]:8.3f}")
        for key, value in self.extra.items():
            lines.append(f"  {key}: {json.dumps(value)}")
        return "\n".join(lines)


class Detector:
    """A trained detector with its configuration's pre- and post-processing: ``detector(frame) -> result``."""

    def __init__(self, model: torch.nn.Module, config: Mapping, device: str | torch.device = "cpu",
                 source: str = ""):
        from geoattn.detection.config import num_point_features, point_cloud_range, voxel_size

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.source = source
        self.class_names = list(config["CLASS_NAMES"])
        self.point_range = point_cloud_range(config)
        self.num_point_features = num_point_features(config)
        data = config["DATA_CONFIG"]
        encoding = data.get("POINT_FEATURE_ENCODING", {}) or {}
        source_features = list(encoding.get("src_feature_list", ["x", "y", "z", "intensity"]))
        used = list(encoding.get("used_feature_list", source_features))
        self.num_source_features = len(source_features)
        self.used_index = torch.tensor([source_features.index(name) for name in used])
        self.fov_points_only = bool(data.get("FOV_POINTS_ONLY", False))
        self.dense_head_cfg = config["MODEL"]["DENSE_HEAD"]
        self.voxel_size = voxel_size(config)

    @classmethod
    def load(cls, checkpoint: str | os.PathLike | None = None, config: str | os.PathLike | Mapping | None = None,
             device: str | torch.device = "cpu") -> "Detector":
        """Rebuild the detector of ``checkpoint`` (default: the shipped KITTI checkpoint). ``config`` (a built-in
        name, a YAML path or a loaded dict), when given, must describe the checkpoint's model, else
        ``ValueError`` naming the checkpoint and the differing keys."""
        from geoattn.detection.config import load_config
        from geoattn.detection.training import DEFAULT_CHECKPOINT, load_detector

        if checkpoint is None:
            checkpoint = DEFAULT_CHECKPOINT
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"no shipped detector checkpoint at {checkpoint}: pass --checkpoint")
        wanted = load_config(config) if isinstance(config, (str, os.PathLike)) else config
        model, stored, _ = load_detector(checkpoint, config=wanted, map_location="cpu")
        return cls(model, stored, device, source=str(checkpoint))

    def preprocess(self, frame: DetectionFrame) -> Tensor:
        """The configuration's evaluation pipeline on ``frame.points``: field of view, used features, range."""
        points = frame.points
        if points.dim() != 2 or points.shape[1] != self.num_source_features:
            raise ValueError(f"{frame.source or 'points'}: expected {self.num_source_features} features per point "
                             f"for this checkpoint, got shape {tuple(points.shape)}")
        if self.fov_points_only:
            if frame.calib is None:
                raise ValueError(f"{frame.source or frame.frame_id}: this checkpoint sees only the camera's field "
                                 "of view (FOV_POINTS_ONLY) and needs the calibration: pass --calib")
            _, _, valid = project_to_image(points[:, :3].double(), frame.calib.lidar2img(2), frame.image_shape)
            points = points[valid]
        points = points[:, self.used_index].float()
        low = torch.tensor(self.point_range[:3])
        high = torch.tensor(self.point_range[3:])
        return points[((points[:, :3] >= low) & (points[:, :3] < high)).all(dim=1)].contiguous()

    @torch.no_grad()
    def __call__(self, frame: DetectionFrame, score_threshold: float | None = None) -> DetectionResult:
        import time

        from geoattn.detection.kitti_eval import lidar_detections_to_kitti
        from geoattn.detection.postprocess import CenterHeadPostProcessor

        post = CenterHeadPostProcessor.from_config(self.dense_head_cfg, self.point_range, self.voxel_size)
        if score_threshold is not None:
            if not 0.0 <= float(score_threshold) <= 1.0:
                raise ValueError(f"score_threshold: expected a number in [0, 1], got {score_threshold}")
            post.kwargs["score_threshold"] = float(score_threshold)
        points = self.preprocess(frame)
        start = time.perf_counter()
        device_points = points.to(self.device)
        batch = torch.zeros(points.shape[0], dtype=torch.long, device=self.device)
        detection = post(self.model(device_points, batch, 1))[0]
        boxes, scores, labels = (detection[key].detach().cpu() for key in ("boxes", "scores", "labels"))
        seconds = time.perf_counter() - start
        kitti = None
        if frame.calib is not None:
            kitti = lidar_detections_to_kitti(boxes.double(), scores.double(), labels.long(), self.class_names,
                                              frame.calib, frame.image_shape)
        extra = {}
        if frame.labels is not None:
            objects = frame.labels.without_dontcare()
            extra["ground_truth"] = {name: objects.names.count(name) for name in self.class_names}
        return DetectionResult(frame, boxes.float(), scores.float(), labels.long(), self.class_names, points,
                               self.point_range, kitti, seconds, extra)
