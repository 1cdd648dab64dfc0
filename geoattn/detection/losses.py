"""CenterHead losses (OpenPCDet ``CenterHead.get_loss`` with ``IOU_REG_LOSS``, ``loss_utils.py``).

``loss = cls_weight * L_hm + loc_weight * sum_c w_c L_reg[c] + iou_weight * L_iou + loc_weight * L_diou``

* ``L_hm``: CornerNet focal loss (alpha 2, beta 4) of the clamped sigmoid heatmap against the Gaussian
  targets, divided by the number of positive (target == 1) cells;
* ``L_reg``: per-channel L1 of the 8 regression channels gathered at the object cells, divided by the number
  of objects (at least 1);
* ``L_iou``: L1 between the IoU branch and ``2 IoU - 1``, IoU the rotated 3-D IoU of the (detached) decoded
  box and its ground truth, divided by the number of objects;
* ``L_diou``: ``1 - DIoU`` of the decoded box and its ground truth (axis-aligned, as the official
  ``bbox3d_overlaps_diou``), divided by the number of objects.

Everything is computed on all ``max_objs`` slots with the mask as weights, so the number of positives stays
a tensor (no device-to-host synchronisation) and the functions are differentiable everywhere.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from geoattn.detection.targets import (CenterTargets, _check_geometry, _section, decode_boxes, gather_maps)
from geoattn.sparse.boxes import boxes_iou3d_pairs

__all__ = [
    "clamped_sigmoid",
    "focal_loss_centernet",
    "reg_l1_loss",
    "iou_branch_loss",
    "diou_3d",
    "diou_loss",
    "center_head_loss",
    "CenterHeadLoss",
]

REGRESSION_HEADS = ("center", "center_z", "dim", "rot")


def clamped_sigmoid(logits: Tensor) -> Tensor:
    """``clamp(sigmoid(x), 1e-4, 1 - 1e-4)`` (the official ``CenterHead.sigmoid``)."""
    return torch.clamp(logits.sigmoid(), min=1e-4, max=1 - 1e-4)


def focal_loss_centernet(pred: Tensor, target: Tensor) -> Tensor:
    """CornerNet focal loss of probabilities ``pred`` against Gaussian ``target`` (same shape) -> scalar.

    ``pos = sum_{t=1} log(p) (1 - p)^2``, ``neg = sum_{t<1} log(1 - p) p^2 (1 - t)^4``,
    ``loss = -(pos + neg) / max(n_pos, 1)`` with ``n_pos`` the number of cells where ``t == 1``
    (with no positive cell ``pos = 0`` and this is ``-neg``, as the official ``neg_loss_cornernet``).
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError("pred, target: expected torch.Tensors, got "
                        f"{type(pred).__name__}, {type(target).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    target = target.to(pred.dtype)
    pos = target.eq(1)
    pos_loss = torch.where(pos, torch.log(pred) * (1 - pred) ** 2, torch.zeros_like(pred)).sum()
    neg_loss = torch.where(target.lt(1), torch.log(1 - pred) * pred ** 2 * (1 - target) ** 4,
                           torch.zeros_like(pred)).sum()
    num_pos = pos.sum().to(pred.dtype)
    return -(pos_loss + neg_loss) / num_pos.clamp(min=1)


def reg_l1_loss(pred: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """Per-channel masked L1 ``[C]``: ``sum_{b,n} mask |pred - target| / max(sum mask, 1)``.

    ``pred``, ``target``: ``[B, N, C]`` (predictions already gathered at the object cells); ``mask``:
    ``[B, N]``. NaN targets are excluded as in the official ``_reg_loss``.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred, target: expected two tensors [B, N, C] of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask: expected shape {tuple(pred.shape[:2])}, got {tuple(mask.shape)}")
    num = mask.to(pred.dtype).sum()
    weight = mask[..., None] & ~torch.isnan(target)
    diff = torch.where(weight, (pred - torch.nan_to_num(target)).abs(), torch.zeros_like(pred))
    return diff.sum(dim=(0, 1)) / num.clamp(min=1)


_UNIT_BOX = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)


def _fill_unmasked(boxes: Tensor, mask: Tensor) -> Tensor:
    """Boxes with the unmasked slots replaced by a unit box (keeps IoU/DIoU finite there)."""
    return torch.where(mask[..., None], boxes, boxes.new_tensor(_UNIT_BOX))


def iou_branch_loss(iou_pred: Tensor, box_pred: Tensor, gt_boxes: Tensor, mask: Tensor) -> Tensor:
    """IoU-branch L1: ``sum mask |iou_pred - (2 IoU(box_pred, gt) - 1)| / max(sum mask, 1e-4)``.

    ``iou_pred [B, N]``, ``box_pred [B, N, 7]`` (detached here), ``gt_boxes [B, N, 7]``, ``mask [B, N]``
    (``calculate_iou_loss_centerhead``; IoU from :func:`geoattn.sparse.boxes.boxes_iou3d_pairs`, the
    matched pairs only).
    """
    batch, num = mask.shape
    box_pred = _fill_unmasked(box_pred.detach(), mask).reshape(-1, 7)
    gt = _fill_unmasked(gt_boxes.to(box_pred.dtype), mask).reshape(-1, 7)
    target = 2 * boxes_iou3d_pairs(box_pred, gt).reshape(batch, num) - 1
    diff = torch.where(mask, (iou_pred - target.to(iou_pred.dtype)).abs(), torch.zeros_like(iou_pred))
    return diff.sum() / mask.to(iou_pred.dtype).sum().clamp(min=1e-4)


def diou_3d(pred: Tensor, gt: Tensor) -> Tensor:
    """Axis-aligned 3-D distance-IoU ``[...]`` of boxes ``[..., 7]`` (heading ignored, as the official).

    ``DIoU = V_inter / V_union - |c_pred - c_gt|^2 / d_outer^2`` with the BEV extents taken axis-aligned,
    ``d_outer`` the diagonal of the enclosing box (x, y extent and height), clamped to ``[-1, 1]``.
    """
    p_min, p_max = pred[..., 0:2] - pred[..., 3:5] / 2, pred[..., 0:2] + pred[..., 3:5] / 2
    g_min, g_max = gt[..., 0:2] - gt[..., 3:5] / 2, gt[..., 0:2] + gt[..., 3:5] / 2
    vol_pred = pred[..., 3] * pred[..., 4] * pred[..., 5]
    vol_gt = gt[..., 3] * gt[..., 4] * gt[..., 5]
    p_top, p_bottom = pred[..., 2] + 0.5 * pred[..., 5], pred[..., 2] - 0.5 * pred[..., 5]
    g_top, g_bottom = gt[..., 2] + 0.5 * gt[..., 5], gt[..., 2] - 0.5 * gt[..., 5]
    inter_h = (torch.minimum(p_top, g_top) - torch.maximum(p_bottom, g_bottom)).clamp(min=0)
    inter = (torch.minimum(p_max, g_max) - torch.maximum(p_min, g_min)).clamp(min=0)
    vol_inter = inter[..., 0] * inter[..., 1] * inter_h
    vol_union = vol_gt + vol_pred - vol_inter
    centre_dist = ((gt[..., 0:3] - pred[..., 0:3]) ** 2).sum(-1)
    outer_h = (torch.maximum(p_top, g_top) - torch.minimum(p_bottom, g_bottom)).clamp(min=0)
    outer = (torch.maximum(p_max, g_max) - torch.minimum(p_min, g_min)).clamp(min=0)
    outer_diag = outer[..., 0] ** 2 + outer[..., 1] ** 2 + outer_h ** 2
    return (vol_inter / vol_union - centre_dist / outer_diag).clamp(min=-1.0, max=1.0)


def diou_loss(box_pred: Tensor, gt_boxes: Tensor, mask: Tensor) -> Tensor:
    """``sum mask (1 - DIoU(box_pred, gt)) / max(sum mask, 1e-4)`` (``calculate_iou_reg_loss_centerhead``).

    ``box_pred``/``gt_boxes`` ``[B, N, 7]``, ``mask [B, N]``; 0 when no slot is masked. Differentiable in
    ``box_pred``.
    """
    pred = _fill_unmasked(box_pred, mask)
    gt = _fill_unmasked(gt_boxes.to(box_pred.dtype), mask)
    value = torch.where(mask, 1.0 - diou_3d(pred, gt), torch.zeros_like(pred[..., 0]))
    return value.sum() / mask.to(box_pred.dtype).sum().clamp(min=1e-4)


def _check_outputs(outputs: Mapping[str, Tensor], targets: CenterTargets, need: Sequence[str]) -> None:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs: expected a dict of head maps, got {type(outputs).__name__}")
    if not isinstance(targets, CenterTargets):
        raise TypeError(f"targets: expected CenterTargets, got {type(targets).__name__}")
    heatmap = outputs.get("heatmap")
    if not isinstance(heatmap, Tensor) or heatmap.dim() != 4:
        raise ValueError(f"outputs['heatmap']: expected a tensor [B, K, H, W], got "
                         f"{None if heatmap is None else tuple(getattr(heatmap, 'shape', ()))}")
    if heatmap.shape != targets.heatmap.shape:
        raise ValueError(f"outputs['heatmap']: expected the targets' shape {tuple(targets.heatmap.shape)}, "
                         f"got {tuple(heatmap.shape)}")
    channels = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "iou": 1}
    batch, _, height, width = heatmap.shape
    for name in need:
        value = outputs.get(name)
        expected = (batch, channels[name], height, width)
        if not isinstance(value, Tensor) or tuple(value.shape) != expected:
            raise ValueError(f"outputs[{name!r}]: expected a tensor of shape {expected}, got "
                             f"{None if value is None else tuple(getattr(value, 'shape', ()))}")


def center_head_loss(outputs: Mapping[str, Tensor], targets: CenterTargets, cls_weight: float = 1.0,
                     loc_weight: float = 2.0, code_weights: Sequence[float] = (1.0,) * 8,
                     iou_weight: float = 1.0, iou_reg_loss: bool = True,
                     voxel_size: Sequence[float] | None = None, point_range: Sequence[float] | None = None,
                     feature_map_stride: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Total CenterHead loss and its parts (OpenPCDet ``CenterHead.get_loss``, one head, ``IOU_REG_LOSS``).

    Args:
        outputs: head maps ``heatmap [B, K, H, W]`` (logits), ``center``, ``center_z``, ``dim``, ``rot``
            and optionally ``iou`` (the detector contract).
        targets: :class:`~geoattn.detection.targets.CenterTargets` for the same maps.
        cls_weight, loc_weight, code_weights (8): ``LOSS_CONFIG.LOSS_WEIGHTS``.
        iou_weight: weight of the IoU-branch loss (1 in the official code); used when ``"iou"`` is present.
        iou_reg_loss: add the DIoU loss times ``loc_weight`` (``IOU_REG_LOSS``).
        voxel_size, point_range, feature_map_stride: the BEV geometry, needed to decode boxes for the IoU
            branch and the DIoU loss.

    Returns:
        ``(loss, parts)`` with ``parts`` detached scalars ``hm_loss`` (weighted), ``loc_loss`` (weighted),
        ``iou_loss``, ``iou_reg_loss`` (weighted; 0 when off) and ``loss``.
    """
    has_iou = "iou" in outputs
    _check_outputs(outputs, targets, REGRESSION_HEADS + (("iou",) if has_iou else ()))
    code = tuple(float(w) for w in code_weights)
    if len(code) != 8:
        raise ValueError(f"code_weights: expected 8 weights, got {len(code)} ({code_weights!r})")
    need_boxes = has_iou or iou_reg_loss
    if need_boxes:
        if voxel_size is None or point_range is None or feature_map_stride is None:
            raise ValueError("voxel_size, point_range, feature_map_stride: needed to decode boxes for the IoU "
                             "losses, got None")
        voxel, prange, stride = _check_geometry(voxel_size, point_range, feature_map_stride)

    heatmap = outputs["heatmap"]
    hm_loss = focal_loss_centernet(clamped_sigmoid(heatmap), targets.heatmap) * float(cls_weight)
    indices, mask = targets.indices, targets.mask
    gathered = {name: gather_maps(outputs[name], indices) for name in REGRESSION_HEADS}
    pred_reg = torch.cat([gathered[name] for name in REGRESSION_HEADS], dim=-1)
    reg = reg_l1_loss(pred_reg, mask, targets.boxes.to(pred_reg.dtype))
    loc_loss = (reg * reg.new_tensor(code)).sum() * float(loc_weight)
    loss = hm_loss + loc_loss
    zero = loss.new_zeros(())
    iou_loss, iou_reg = zero, zero
    if need_boxes:
        width = heatmap.shape[3]
        xs, ys = indices % width, torch.div(indices, width, rounding_mode="floor")
        boxes = decode_boxes(gathered["center"], gathered["center_z"], gathered["dim"], gathered["rot"],
                             xs, ys, voxel, prange, stride)
        if has_iou:
            iou_pred = gather_maps(outputs["iou"], indices)[..., 0]
            iou_loss = iou_branch_loss(iou_pred, boxes, targets.gt_boxes, mask) * float(iou_weight)
            loss = loss + iou_loss
        if iou_reg_loss:
            iou_reg = diou_loss(boxes, targets.gt_boxes, mask) * float(loc_weight)
            loss = loss + iou_reg
    parts = {"hm_loss": hm_loss.detach(), "loc_loss": loc_loss.detach(), "iou_loss": iou_loss.detach(),
             "iou_reg_loss": iou_reg.detach(), "loss": loss.detach()}
    return loss, parts


class CenterHeadLoss:
    """:func:`center_head_loss` with the weights and geometry of a config: ``loss_fn(outputs, targets)``."""

    def __init__(self, cls_weight: float = 1.0, loc_weight: float = 2.0,
                 code_weights: Sequence[float] = (1.0,) * 8, iou_weight: float = 1.0, iou_reg_loss: bool = True,
                 voxel_size: Sequence[float] | None = None, point_range: Sequence[float] | None = None,
                 feature_map_stride: int | None = None) -> None:
        self.cls_weight = float(cls_weight)
        self.loc_weight = float(loc_weight)
        self.code_weights = tuple(float(w) for w in code_weights)
        if len(self.code_weights) != 8:
            raise ValueError(f"code_weights: expected 8 weights, got {len(self.code_weights)}")
        self.iou_weight = float(iou_weight)
        self.iou_reg_loss = bool(iou_reg_loss)
        self.voxel_size, self.point_range, self.feature_map_stride = voxel_size, point_range, feature_map_stride
        if voxel_size is not None or point_range is not None or feature_map_stride is not None:
            _check_geometry(voxel_size, point_range, feature_map_stride)

    @classmethod
    def from_config(cls, dense_head_cfg: Mapping[str, Any], point_cloud_range: Sequence[float] | None = None,
                    voxel_size: Sequence[float] | None = None) -> "CenterHeadLoss":
        """Build from ``MODEL.DENSE_HEAD`` (``LOSS_CONFIG.LOSS_WEIGHTS``, ``IOU_REG_LOSS``,
        ``TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE``); the geometry is needed for the IoU losses."""
        lcfg = _section(dense_head_cfg, "LOSS_CONFIG", "MODEL.DENSE_HEAD")
        weights = _section(lcfg, "LOSS_WEIGHTS", "MODEL.DENSE_HEAD.LOSS_CONFIG")
        path = "MODEL.DENSE_HEAD.LOSS_CONFIG.LOSS_WEIGHTS"
        values = {}
        for key, default in (("cls_weight", 1.0), ("loc_weight", 2.0)):
            value = weights.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{path}.{key}: expected a non-negative number, got {value!r}")
            values[key] = float(value)
        code = weights.get("code_weights", [1.0] * 8)
        if (not isinstance(code, (list, tuple)) or len(code) != 8
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in code)):
            raise ValueError(f"{path}.code_weights: expected 8 numbers, got {code!r}")
        iou_reg = dense_head_cfg.get("IOU_REG_LOSS", False)
        if not isinstance(iou_reg, bool):
            raise ValueError(f"MODEL.DENSE_HEAD.IOU_REG_LOSS: expected a bool, got {iou_reg!r}")
        stride = None
        if point_cloud_range is not None or voxel_size is not None:
            tcfg = _section(dense_head_cfg, "TARGET_ASSIGNER_CONFIG", "MODEL.DENSE_HEAD")
            stride = tcfg.get("FEATURE_MAP_STRIDE")
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
                raise ValueError("MODEL.DENSE_HEAD.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE: expected a "
                                 f"positive int, got {stride!r}")
        return cls(values["cls_weight"], values["loc_weight"], code, 1.0, iou_reg, voxel_size,
                   point_cloud_range, stride)

    def __call__(self, outputs: Mapping[str, Tensor], targets: CenterTargets) -> tuple[Tensor, dict[str, Tensor]]:
        return center_head_loss(outputs, targets, self.cls_weight, self.loc_weight, self.code_weights,
                                self.iou_weight, self.iou_reg_loss, self.voxel_size, self.point_range,
                                self.feature_map_stride)
