"""CenterHead decoding: heatmap top-K, box decoding, IoU score rectification, class-specific rotated NMS.

As OpenPCDet's ``CenterHead.generate_predicted_boxes`` with ``centernet_utils.decode_bbox_from_heatmap``,
``USE_IOU_TO_RECTIFY_SCORE`` and ``NMS_TYPE: class_specific_nms``:

1. ``p = sigmoid(heatmap)``; the top ``K`` cells per class, then the top ``K`` of those over all classes
   (``_topk``), giving score, class ``k`` and cell ``(y, x)``;
2. boxes decoded at those cells by :func:`geoattn.detection.targets.decode_boxes`;
3. kept when ``score > score_threshold`` and the centre lies inside ``post_center_limit_range``;
4. ``score <- score^(1 - a_k) * iou^a_k`` with ``iou = clamp((iou_pred + 1) / 2, 0, 1)``;
5. rotated BEV NMS per class at ``nms_thresholds[k]`` (:func:`geoattn.detection.nms.multiclass_nms_bev`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from geoattn.detection.targets import _check_geometry, _check_triple, _section, decode_boxes, gather_maps

__all__ = ["topk_heatmap", "decode_center_head", "CenterHeadPostProcessor"]


def topk_heatmap(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Top-``k`` cells of ``scores [B, C, H, W]`` over all classes, as the official two-stage ``_topk``.

    The best ``min(k, H W)`` cells of each class, then the best ``min(k, C * that)`` of these.
    Returns ``(score [B, k'], index [B, k'] (y * W + x), class [B, k'] long, ys [B, k'], xs [B, k'])``.
    """
    batch, classes, height, width = scores.shape
    k1 = min(k, height * width)
    per_score, per_index = torch.topk(scores.reshape(batch, classes, -1), k1)  # [B, C, k1]
    k2 = min(k, classes * k1)
    score, pick = torch.topk(per_score.reshape(batch, -1), k2)
    cls = torch.div(pick, k1, rounding_mode="floor")
    index = torch.gather(per_index.reshape(batch, -1), 1, pick)
    ys = torch.div(index, width, rounding_mode="floor")
    xs = index % width
    return score, index, cls, ys, xs


def _multiclass_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresholds: Sequence[float],
                    pre_max_size: Any, post_max_size: Any) -> Tensor:
    from geoattn.detection.nms import multiclass_nms_bev

    return multiclass_nms_bev(boxes, scores, labels, iou_thresholds, pre_max_size=pre_max_size,
                              post_max_size=post_max_size)


def _per_class(value: Any, num_classes: int, name: str) -> tuple:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,) * num_classes
    if isinstance(value, Tensor):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != num_classes:
        raise ValueError(f"{name}: expected one value or {num_classes} (one per class), got {value!r}")
    for v in value:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{name}: expected numbers, got {value!r}")
    return tuple(value)


def decode_center_head(outputs: Mapping[str, Tensor], voxel_size: Sequence[float], point_range: Sequence[float],
                       feature_map_stride: int, score_threshold: float = 0.1,
                       post_center_limit_range: Sequence[float] = (-80.0, -80.0, -10.0, 80.0, 80.0, 10.0),
                       max_obj_per_sample: int = 500,
                       iou_rectifier: Sequence[float] | float | None = (0.68, 0.71, 0.65),
                       nms_thresholds: Sequence[float] | float = (0.75, 0.6, 0.55),
                       nms_pre_max_size: int | Sequence[int] | None = 4096,
                       nms_post_max_size: int | Sequence[int] | None = 500) -> list[dict[str, Tensor]]:
    """Detections per frame from CenterHead maps (see the module docstring for the steps).

    Args:
        outputs: ``heatmap [B, K, H, W]`` logits, ``center``, ``center_z``, ``dim``, ``rot`` and optionally
            ``iou`` (the detector contract).
        voxel_size, point_range, feature_map_stride: the BEV geometry.
        score_threshold: keep ``sigmoid`` scores strictly above it (before rectification).
        post_center_limit_range: ``(x0, y0, z0, x1, y1, z1)``; box centres must lie in it (inclusive).
        max_obj_per_sample: ``K`` of the top-K.
        iou_rectifier: ``a_k`` per class (or one for all); ``None`` or no ``iou`` map: no rectification.
        nms_thresholds: BEV IoU threshold per class (or one for all).
        nms_pre_max_size, nms_post_max_size: per class (or one), ``None`` for no limit.

    Returns:
        list of ``B`` dicts ``boxes [P, 7]``, ``scores [P]``, ``labels [P]`` (long, 0-based), grouped by class
        in class order, each class in descending score. Only the final selection needs the host (the list of
        variable-length results); no Python loop over boxes. Runs under ``torch.no_grad``.
    """
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs: expected a dict of head maps, got {type(outputs).__name__}")
    heatmap = outputs.get("heatmap")
    if not isinstance(heatmap, Tensor) or heatmap.dim() != 4:
        raise ValueError("outputs['heatmap']: expected a tensor [B, K, H, W], got "
                         f"{None if heatmap is None else tuple(getattr(heatmap, 'shape', ()))}")
    batch, num_classes, height, width = heatmap.shape
    channels = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "iou": 1}
    for name, ch in channels.items():
        if name == "iou" and name not in outputs:
            continue
        value = outputs.get(name)
        if not isinstance(value, Tensor) or tuple(value.shape) != (batch, ch, height, width):
            raise ValueError(f"outputs[{name!r}]: expected a tensor of shape {(batch, ch, height, width)}, got "
                             f"{None if value is None else tuple(getattr(value, 'shape', ()))}")
    voxel, prange, stride = _check_geometry(voxel_size, point_range, feature_map_stride)
    limit = _check_triple(post_center_limit_range, "post_center_limit_range", 6)
    if isinstance(max_obj_per_sample, bool) or not isinstance(max_obj_per_sample, int) or max_obj_per_sample < 1:
        raise ValueError(f"max_obj_per_sample: expected a positive int, got {max_obj_per_sample!r}")
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
        raise ValueError(f"score_threshold: expected a number, got {score_threshold!r}")
    thresholds = tuple(float(t) for t in _per_class(nms_thresholds, num_classes, "nms_thresholds"))
    pre = _per_class(nms_pre_max_size, num_classes, "nms_pre_max_size")
    post = _per_class(nms_post_max_size, num_classes, "nms_post_max_size")
    rectify = iou_rectifier is not None and "iou" in outputs
    if rectify:
        alpha = _per_class(iou_rectifier, num_classes, "iou_rectifier")
        if not all(a is not None and 0.0 <= float(a) <= 1.0 for a in alpha):
            raise ValueError(f"iou_rectifier: expected values in [0, 1], got {iou_rectifier!r}")

    with torch.no_grad():
        if batch == 0 or height * width == 0:
            return [_empty(heatmap) for _ in range(batch)]
        score, index, cls, ys, xs = topk_heatmap(heatmap.sigmoid(), max_obj_per_sample)
        g = {name: gather_maps(outputs[name], index) for name in ("center", "center_z", "dim", "rot")}
        boxes = decode_boxes(g["center"], g["center_z"], g["dim"], g["rot"], xs, ys, voxel, prange, stride)
        low, high = boxes.new_tensor(limit[:3]), boxes.new_tensor(limit[3:])
        keep = (boxes[..., :3] >= low).all(-1) & (boxes[..., :3] <= high).all(-1) & (score > score_threshold)
        if rectify:
            iou = ((gather_maps(outputs["iou"], index)[..., 0] + 1) * 0.5).clamp(min=0, max=1.0)
            a = score.new_tensor([float(v) for v in alpha])[cls]
            score = torch.pow(score, 1 - a) * torch.pow(iou.to(score.dtype), a)
        # One NMS call for the whole batch: frame b, class k becomes group b * K + k, so frames and classes
        # never suppress each other and pre/post sizes apply per (frame, class) as in the official loop.
        frame = torch.arange(batch, device=heatmap.device)[:, None].expand_as(cls)
        flat_keep = keep.reshape(-1)
        sel_boxes = boxes.reshape(-1, 7)[flat_keep]
        sel_scores = score.reshape(-1)[flat_keep]
        sel_cls = cls.reshape(-1)[flat_keep]
        sel_frame = frame.reshape(-1)[flat_keep]
        group = sel_frame * num_classes + sel_cls
        chosen = _multiclass_nms(sel_boxes, sel_scores, group, thresholds * batch, pre * batch, post * batch)
        chosen_frame = sel_frame[chosen]
        counts = torch.bincount(chosen_frame, minlength=batch).tolist()
        # NMS returns groups in ascending group order, so the detections of each frame are contiguous.
        out = []
        for b_boxes, b_scores, b_labels in zip(sel_boxes[chosen].split(counts), sel_scores[chosen].split(counts),
                                               sel_cls[chosen].split(counts)):
            out.append({"boxes": b_boxes, "scores": b_scores, "labels": b_labels.long()})
        return out


def _empty(heatmap: Tensor) -> dict[str, Tensor]:
    return {"boxes": heatmap.new_zeros(0, 7), "scores": heatmap.new_zeros(0),
            "labels": torch.zeros(0, dtype=torch.long, device=heatmap.device)}


class CenterHeadPostProcessor:
    """:func:`decode_center_head` with a config's settings: ``post(outputs) -> list[dict]``."""

    def __init__(self, voxel_size: Sequence[float], point_range: Sequence[float], feature_map_stride: int,
                 score_threshold: float = 0.1,
                 post_center_limit_range: Sequence[float] = (-80.0, -80.0, -10.0, 80.0, 80.0, 10.0),
                 max_obj_per_sample: int = 500, iou_rectifier: Sequence[float] | float | None = (0.68, 0.71, 0.65),
                 nms_thresholds: Sequence[float] | float = (0.75, 0.6, 0.55),
                 nms_pre_max_size: int | Sequence[int] | None = 4096,
                 nms_post_max_size: int | Sequence[int] | None = 500) -> None:
        self.voxel_size, self.point_range, self.feature_map_stride = _check_geometry(
            voxel_size, point_range, feature_map_stride)
        self.kwargs = dict(score_threshold=score_threshold, post_center_limit_range=tuple(post_center_limit_range),
                           max_obj_per_sample=max_obj_per_sample, iou_rectifier=iou_rectifier,
                           nms_thresholds=nms_thresholds, nms_pre_max_size=nms_pre_max_size,
                           nms_post_max_size=nms_post_max_size)

    @classmethod
    def from_config(cls, dense_head_cfg: Mapping[str, Any], point_cloud_range: Sequence[float],
                    voxel_size: Sequence[float]) -> "CenterHeadPostProcessor":
        """Build from ``MODEL.DENSE_HEAD`` (``POST_PROCESSING``, ``TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE``).

        ``NMS_CONFIG.NMS_TYPE`` must be ``class_specific_nms`` (the official Waymo recipe); other values raise.
        """
        base = "MODEL.DENSE_HEAD"
        tcfg = _section(dense_head_cfg, "TARGET_ASSIGNER_CONFIG", base)
        stride = tcfg.get("FEATURE_MAP_STRIDE")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"{base}.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE: expected a positive int, "
                             f"got {stride!r}")
        pcfg = _section(dense_head_cfg, "POST_PROCESSING", base)
        path = f"{base}.POST_PROCESSING"
        ncfg = _section(pcfg, "NMS_CONFIG", path)
        nms_type = ncfg.get("NMS_TYPE", "class_specific_nms")
        if nms_type != "class_specific_nms":
            raise ValueError(f"{path}.NMS_CONFIG.NMS_TYPE: expected 'class_specific_nms', got {nms_type!r}")
        score = pcfg.get("SCORE_THRESH", 0.1)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ValueError(f"{path}.SCORE_THRESH: expected a number, got {score!r}")
        limit = pcfg.get("POST_CENTER_LIMIT_RANGE", [-80, -80, -10.0, 80, 80, 10.0])
        try:
            limit = _check_triple(limit, "POST_CENTER_LIMIT_RANGE", 6)
        except (TypeError, ValueError):
            raise ValueError(f"{path}.POST_CENTER_LIMIT_RANGE: expected 6 numbers, got {limit!r}") from None
        max_obj = pcfg.get("MAX_OBJ_PER_SAMPLE", 500)
        if isinstance(max_obj, bool) or not isinstance(max_obj, int) or max_obj < 1:
            raise ValueError(f"{path}.MAX_OBJ_PER_SAMPLE: expected a positive int, got {max_obj!r}")
        use_iou = pcfg.get("USE_IOU_TO_RECTIFY_SCORE", False)
        if not isinstance(use_iou, bool):
            raise ValueError(f"{path}.USE_IOU_TO_RECTIFY_SCORE: expected a bool, got {use_iou!r}")
        rectifier = pcfg.get("IOU_RECTIFIER") if use_iou else None
        if use_iou and not (isinstance(rectifier, (list, tuple, int, float)) and not isinstance(rectifier, bool)):
            raise ValueError(f"{path}.IOU_RECTIFIER: expected a number or a list per class, got {rectifier!r}")
        if isinstance(rectifier, (list, tuple)) and len(rectifier) == 1:
            rectifier = float(rectifier[0])
        thresh = ncfg.get("NMS_THRESH")
        if thresh is None:
            raise ValueError(f"{path}.NMS_CONFIG.NMS_THRESH: expected a number or a list per class, got None")
        pre = ncfg.get("NMS_PRE_MAXSIZE", 4096)
        post_size = ncfg.get("NMS_POST_MAXSIZE", 500)
        return cls(voxel_size, point_cloud_range, stride, float(score), limit, max_obj, rectifier, thresh,
                   pre, post_size)

    def __call__(self, outputs: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        return decode_center_head(outputs, self.voxel_size, self.point_range, self.feature_map_stride,
                                  **self.kwargs)
