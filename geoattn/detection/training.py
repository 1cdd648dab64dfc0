"""Training and evaluation of the CenterPoint detector: the library side of ``examples/train_detector.py``.

The loop follows OpenPCDet's ``tools/train_utils/train_utils.py``: per iteration, point the one-cycle schedule
at the global iteration (:meth:`~geoattn.detection.optim.AdamOneCycle.set_iteration`), forward (under
float16 autocast on CUDA when AMP is on), loss, backward (through ``GradScaler`` with the config's
``LOSS_SCALE_FP16`` as its initial scale), unscale, ``clip_grad_norm_(GRAD_NORM_CLIP)``, step. A step whose
gradient norm is not finite is skipped (``GradScaler`` does this on CUDA; on CPU the same test is made on the
clipped norm), and the schedule still advances, as in OpenPCDet.

Pieces (each usable on its own):

* :func:`build_detector_from_config` / :func:`load_detector` -- the model of a config, or of a checkpoint
  (refusing a checkpoint of another model config);
* :class:`DetectionCriterion` -- targets + CenterHead loss of a config: ``criterion(outputs, batch)``;
* :class:`EpochSampler` -- a seeded, per-epoch, rank-sharded sampler that can start mid-epoch (``--resume`` of
  a run stopped by a time budget);
* :func:`train_one_epoch`, :func:`predict`, :func:`kitti_annotations`, :func:`evaluate_predictions`,
  :func:`write_kitti_predictions`, :func:`checkpoint_state`.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from geoattn.detection.config import (check_same_model, num_point_features, point_cloud_range, validate_config,
                                      voxel_size)
from geoattn.io import load_checkpoint

__all__ = ["DEFAULT_CHECKPOINT", "build_detector_from_config", "load_detector", "DetectionCriterion",
           "EpochSampler", "train_one_epoch", "recompute_batchnorm_statistics", "predict", "kitti_annotations", "evaluate_predictions",
           "write_kitti_predictions", "checkpoint_state", "export_detector", "unwrap", "distributed_info", "gather_objects"]

#: The checkpoint shipped with the package (KITTI config trained on synthetic scenes), when present.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "kitti_scatterformer_synthetic.pt"


# -- models ------------------------------------------------------------------------------------------------

def build_detector_from_config(config: Mapping) -> nn.Module:
    """``geoattn.models.detection.build_detector`` on a config from :func:`~geoattn.detection.config.load_config`
    (``MODEL`` section, ``CLASS_NAMES``, ``POINT_CLOUD_RANGE``, ``VOXEL_SIZE``, ``len(used_feature_list)``)."""
    from geoattn.models.detection import build_detector

    return build_detector(config["MODEL"], list(config["CLASS_NAMES"]), point_cloud_range(config),
                          voxel_size(config), num_point_features(config))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def load_detector(path: str | os.PathLike, config: Mapping | None = None,
                  map_location: Any = "cpu") -> tuple[nn.Module, dict, dict]:
    """``(model in eval mode, config, checkpoint dict)`` from a checkpoint of :func:`checkpoint_state`.

    The model is rebuilt from the config stored in the checkpoint; when ``config`` is given it must describe
    the same model (:func:`~geoattn.detection.config.check_same_model`), else ``ValueError`` naming the file and
    the differing keys. ``FileNotFoundError`` / ``ValueError`` naming the file for a missing or corrupt
    checkpoint, or one without ``"model"`` and ``"config"`` entries.
    """
    state = load_checkpoint(path, map_location=map_location)
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not a detector checkpoint (expected 'model' and 'config' entries, got "
                         f"{sorted(state)})")
    saved = state["config"]
    try:
        validate_config(saved)
    except ValueError as error:
        raise ValueError(f"{path}: the stored config is invalid ({error})") from None
    if config is not None:
        check_same_model(saved, config, source=str(path))
    model = build_detector_from_config(saved)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{path}: the weights do not fit the stored config's model ({first})") from None
    model.eval()
    return model, saved, state


# -- loss --------------------------------------------------------------------------------------------------

class DetectionCriterion:
    """Target assignment + CenterHead loss of a config: ``loss, parts = criterion(outputs, batch)``.

    ``outputs``: the detector's dict of maps (``heatmap [B, K, H, W]`` fixes the feature-map size);
    ``batch``: the collated batch (``gt_boxes [B, M, 7]``, ``gt_labels [B, M]``, padding -1), moved to the
    outputs' device here. ``parts`` maps loss names to detached scalars.
    """

    def __init__(self, config: Mapping) -> None:
        from geoattn.detection.losses import CenterHeadLoss
        from geoattn.detection.targets import CenterTargetAssigner

        head = config["MODEL"]["DENSE_HEAD"]
        extent, voxel = point_cloud_range(config), voxel_size(config)
        self.assigner = CenterTargetAssigner.from_config(head, list(config["CLASS_NAMES"]), extent, voxel)
        self.loss = CenterHeadLoss.from_config(head, extent, voxel)

    def __call__(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        heatmap = outputs["heatmap"]
        boxes = batch["gt_boxes"].to(heatmap.device, torch.float32)
        labels = batch["gt_labels"].to(heatmap.device)
        targets = self.assigner(boxes, labels, tuple(heatmap.shape[-2:]))
        targets = targets.to(heatmap.device)
        # the loss in float32 even under autocast (focal loss logs, IoU geometry)
        outputs32 = {key: value.float() for key, value in outputs.items()}
        return self.loss(outputs32, targets)


# -- sampling ----------------------------------------------------------------------------------------------

class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank: a permutation drawn from ``torch.Generator().manual_seed(seed +
    1_000_003 * epoch)`` (or ``0..n-1`` without ``shuffle``), padded by wrapping to a multiple of
    ``world_size`` when ``pad`` (as ``DistributedSampler``, so every rank runs the same number of iterations),
    then ``order[rank::world_size]``. :meth:`set_epoch` ``(epoch, skip)`` starts the epoch after this rank's
    first ``skip`` indices (a resumed run that stopped mid-epoch sees the rest of the same order).
    """

    def __init__(self, num_items: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items: expected an int >= 0, got {num_items!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank!r}, {world_size!r}")
        self.num_items, self.shuffle, self.seed = num_items, bool(shuffle), int(seed)
        self.rank, self.world_size, self.pad = rank, world_size, bool(pad)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        if not isinstance(skip, int) or skip < 0:
            raise ValueError(f"skip: expected an int >= 0, got {skip!r}")
        self.epoch, self.skip = epoch, skip

    def _order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        if self.pad and self.num_items and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order += (order * (extra // len(order) + 1))[:extra]
        return order[self.rank::self.world_size][self.skip:]

    def per_rank(self) -> int:
        """Indices of this rank in a full epoch (before ``skip``)."""
        if self.pad:
            return math.ceil(self.num_items / self.world_size)
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self):
        return iter(self._order())

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.skip)


# -- distributed helpers -------------------------------------------------------------------------------------

def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_objects(items: list) -> list:
    """Concatenate every rank's list (rank order) on every rank; the list itself without a process group."""
    rank, world = distributed_info()
    if world == 1:
        return list(items)
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def _all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    _, world = distributed_info()
    if world == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return {k: float(v) / world for k, v in zip(keys, tensor.tolist())}


# -- training ----------------------------------------------------------------------------------------------

def _to_device(batch: Mapping[str, Any], device: torch.device) -> tuple[Tensor, Tensor, int]:
    return (batch["points"].to(device, non_blocking=True), batch["batch"].to(device, non_blocking=True),
            int(batch["batch_size"]))


def train_one_epoch(model: nn.Module, loader, optimizer, criterion: Callable, *, device: torch.device | str,
                    iteration: int, grad_norm_clip: float | None, scaler: torch.amp.GradScaler | None = None,
                    amp: bool = False, deadline: float | None = None, max_iterations: int | None = None,
                    progress: bool = False, description: str = "train") -> dict:
    """One pass over ``loader`` (see the module docstring for the per-iteration steps).

    Args:
        model: the detector (or its DDP wrapper), in train mode after the call.
        loader: yields collated batches; optimizer: :class:`~geoattn.detection.optim.AdamOneCycle`.
        criterion: ``(outputs, batch) -> (loss, parts)``, e.g. :class:`DetectionCriterion`.
        device: where the model lives; iteration: the global iteration of the first batch.
        grad_norm_clip: ``GRAD_NORM_CLIP`` (``None`` or <= 0: no clipping, the norm is still measured).
        scaler: a ``GradScaler`` (AMP on CUDA) or ``None``; amp: run the forward under float16 autocast.
        deadline: ``time.monotonic()`` value after which the epoch stops before its next iteration (every
            rank stops together: rank 0 decides and broadcasts).
        max_iterations: stop (``"stopped": True``) after this many iterations of this call.
        progress: show a tqdm bar (rank 0); description: its label.

    Returns ``{"iterations", "iteration" (global, after), "stopped" (deadline hit), "skipped" (non-finite
    steps), "seconds", "loss", "grad_norm", "lr" (last), <loss parts>}``, losses averaged over iterations and
    ranks.
    """
    device = torch.device(device)
    rank, world = distributed_info()
    model.train()
    sums: dict[str, float] = {}
    count = skipped = 0
    stopped = False
    started = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=description, dynamic_ncols=True, leave=False)
    parameters = [p for p in unwrap(model).parameters() if p.requires_grad]
    for batch in loader:
        if max_iterations is not None and count >= max_iterations:
            stopped = True
            break
        if deadline is not None:
            stop = torch.tensor([1.0 if time.monotonic() > deadline else 0.0], device=device)
            if world > 1:
                torch.distributed.broadcast(stop, src=0)
            if bool(stop.item()):
                stopped = True
                break
        optimizer.set_iteration(iteration)
        lr = optimizer.param_groups[0]["lr"]
        points, index, batch_size = _to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            outputs = model(points, index, batch_size)
        loss, parts = criterion(outputs, batch)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_norm_clip is not None and grad_norm_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(parameters, grad_norm_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(parameters, float("inf"))
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)  # skips (and lowers the scale) on inf/NaN gradients
            scaler.update()
            finite = bool(torch.isfinite(norm))
        else:
            finite = bool(torch.isfinite(norm))
            if finite:
                optimizer.step()
        if not finite:
            skipped += 1
        iteration += 1
        count += 1
        values = {"loss": float(loss.detach()), "grad_norm": float(norm) if finite else float("nan")}
        values.update({f"{key}": float(value) for key, value in parts.items()
                       if isinstance(value, (Tensor, float, int)) and key != "loss"})
        for key, value in values.items():
            if math.isfinite(value):
                sums[key] = sums.get(key, 0.0) + value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
    if bar is not None:
        bar.close()
    means = {key: value / max(count, 1) for key, value in sums.items()}
    means = _all_mean(means, device)
    return {"iterations": count, "iteration": iteration, "stopped": stopped, "skipped": skipped,
            "seconds": time.perf_counter() - started, "lr": optimizer.param_groups[0]["lr"], **means}


def recompute_batchnorm_statistics(model: nn.Module, loader, device: torch.device | str,
                                   num_batches: int | None = None, progress: bool = False) -> int:
    """Replace every BatchNorm's running mean and variance by their exact average over ``num_batches``
    batches of ``loader`` (all when ``None``), the model's parameters and the optimiser untouched.

    Why: BN's running statistics are an exponential average (momentum 0.01 in the official config, a time
    constant of ~100 iterations) of statistics of weights that keep changing; after a short schedule they lag
    the final weights, and the eval-mode network then differs from the trained one. Measured on synthetic
    KITTI scenes after a short fit: heatmap scores at car centres of 0.78-0.97 in train mode, 0.00-0.04 in eval
    mode for cars within 35 m (dense voxels, where the lagging statistics are furthest off), and the train-mode
    values again after this recomputation. Runs the forward in train mode under ``torch.no_grad`` (with
    ``SyncBatchNorm`` every rank must see the same number of batches), then restores the mode and momenta.
    Returns the number of batches used.
    """
    device = torch.device(device)
    model = unwrap(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    rank, _ = distributed_info()
    total = len(loader) if num_batches is None else min(int(num_batches), len(loader))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="BN statistics", dynamic_ncols=True, leave=False)
    used = 0
    model.train()
    try:
        with torch.no_grad():
            for batch in loader:
                if used >= total:
                    break
                points, index, batch_size = _to_device(batch, device)
                model(points, index, batch_size)
                used += 1
                if bar is not None:
                    bar.update(1)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
        if bar is not None:
            bar.close()
    return used


# -- inference and evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, loader, postprocessor: Callable, device: torch.device | str, amp: bool = False,
            progress: bool = False, description: str = "eval") -> list[dict]:
    """Detections for every frame of ``loader``: a list of dicts ``frame_id``, ``boxes [P, 7]``, ``scores [P]``,
    ``labels [P]`` (CPU, 0-based), ``calib``, ``image_shape``, ``annos`` (the batch's raw labels)."""
    device = torch.device(device)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    rank, _ = distributed_info()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=description, dynamic_ncols=True, leave=False)
    results: list[dict] = []
    for batch in loader:
        points, index, batch_size = _to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            outputs = model(points, index, batch_size)
        detections = postprocessor({key: value.float() for key, value in outputs.items()})
        for b, detection in enumerate(detections):
            results.append({"frame_id": batch["frame_id"][b],
                            "boxes": detection["boxes"].detach().float().cpu(),
                            "scores": detection["scores"].detach().float().cpu(),
                            "labels": detection["labels"].detach().long().cpu(),
                            "calib": batch["calib"][b], "image_shape": batch["image_shape"][b],
                            "annos": batch["annos"][b]})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return results


def kitti_annotations(predictions: Sequence[Mapping], class_names: Sequence[str]) -> list:
    """KITTI camera-frame labels of each prediction (``geoattn.detection.kitti_eval.lidar_detections_to_kitti``:
    2-D boxes, alpha, score; boxes outside the image dropped). ``ValueError`` naming the frame when it has no
    calibration or image size."""
    from geoattn.detection.kitti_eval import lidar_detections_to_kitti

    out = []
    for item in predictions:
        if item.get("calib") is None or item.get("image_shape") is None:
            raise ValueError(f"frame {item.get('frame_id')}: KITTI predictions need the calibration and the image "
                             "size (calib/ and image_2/ of the frame)")
        out.append(lidar_detections_to_kitti(item["boxes"], item["scores"], item["labels"], list(class_names),
                                             item["calib"], tuple(int(v) for v in item["image_shape"])))
    return out


def write_kitti_predictions(predictions: Sequence[Mapping], detections: Sequence, out_dir: str | os.PathLike) -> int:
    """Write ``detections[i]`` (KittiLabels) to ``out_dir/<frame_id>.txt`` (16 columns, atomically); return the
    number of files."""
    from geoattn.data.kitti import write_label

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item, labels in zip(predictions, detections):
        write_label(out_dir / f"{item['frame_id']}.txt", labels)
    return len(detections)


def evaluate_predictions(predictions: Sequence[Mapping], config: Mapping, dataset=None,
                         detections: Sequence | None = None) -> dict:
    """The config's metric (``MODEL.POST_PROCESSING.EVAL_METRIC``) over ``predictions`` (from :func:`predict`).

    ``kitti``: :func:`geoattn.detection.kitti_eval.evaluate_kitti` of the frames that have labels (``annos``),
    classes = the config's classes the KITTI metric knows; ``detections`` (KittiLabels per prediction) may be
    passed to avoid converting twice. ``waymo``: :func:`geoattn.detection.waymo_eval.evaluate_waymo` against
    ``dataset.evaluation_gt()`` (frames in dataset order; ``predictions`` must cover the dataset in order).
    Returns the metric dict plus ``"frames"``.
    """
    metric = str(config["MODEL"].get("POST_PROCESSING", {}).get("EVAL_METRIC", "kitti")).lower()
    class_names = list(config["CLASS_NAMES"])
    if metric == "kitti":
        from geoattn.detection.kitti_eval import KITTI_EVAL_CLASSES, evaluate_kitti

        if detections is None:
            detections = kitti_annotations(predictions, class_names)
        pairs = [(item["annos"], det) for item, det in zip(predictions, detections) if item.get("annos") is not None]
        if not pairs:
            raise ValueError("evaluate_predictions: no frame has labels (label_2/) to score against")
        classes = [name for name in class_names if name in KITTI_EVAL_CLASSES]
        result = evaluate_kitti([gt for gt, _ in pairs], [dt for _, dt in pairs], classes=classes)
        return {**result, "frames": len(pairs)}
    if metric == "waymo":
        from geoattn.detection.waymo_eval import evaluate_waymo

        if dataset is None or not hasattr(dataset, "evaluation_gt"):
            raise ValueError("evaluate_predictions: the Waymo metric needs the dataset (evaluation_gt())")
        gt = dataset.evaluation_gt()
        if len(gt) != len(predictions):
            raise ValueError(f"evaluate_predictions: expected {len(gt)} predictions (one per frame), got "
                             f"{len(predictions)}")
        dt = [{"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]} for p in predictions]
        result = evaluate_waymo(gt, dt, class_names=tuple(class_names))
        return {**result, "frames": len(gt)}
    raise ValueError(f"MODEL.POST_PROCESSING.EVAL_METRIC: expected 'kitti' or 'waymo', got {metric!r}")


# -- checkpoints ---------------------------------------------------------------------------------------------

def checkpoint_state(model: nn.Module, optimizer=None, scaler=None, *, epoch: int, iteration: int,
                     **extra: Any) -> dict:
    """The dict saved every epoch (pass it with the config to :func:`geoattn.io.save_checkpoint`): ``model``
    (CPU tensors, DDP unwrapped), ``optimizer`` (with the one-cycle position), ``scaler``, ``epoch`` (epochs
    completed), ``iteration`` (global), ``geoattn_version`` and ``extra`` (plain values)."""
    import geoattn

    state = {"model": {key: value.detach().cpu() for key, value in unwrap(model).state_dict().items()},
             "epoch": int(epoch), "iteration": int(iteration), "geoattn_version": geoattn.__version__}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    state.update(extra)
    return state


def export_detector(checkpoint: str | os.PathLike, path: str | os.PathLike, half: bool = True) -> Path:
    """A compact copy of a training checkpoint for inference (``geoattn detect``, ``--eval-only``): the model
    weights (floating tensors in float16 when ``half``; :func:`load_detector` casts them back to the model's
    float32 on load), the config and the run's bookkeeping, without the optimiser. Written atomically; refuses to
    overwrite ``checkpoint`` itself."""
    from geoattn.io import save_checkpoint

    if Path(path).resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--export {path}: refusing to overwrite the checkpoint being exported")
    state = load_checkpoint(checkpoint, map_location="cpu")
    if "model" not in state or "config" not in state:
        raise ValueError(f"{checkpoint}: not a detector checkpoint (expected 'model' and 'config' entries)")
    weights = {key: value.half() if half and value.is_floating_point() else value
               for key, value in state["model"].items()}
    keep = {key: state[key] for key in ("epoch", "iteration", "planned_iterations", "seed", "data", "elapsed",
                                        "world_size", "geoattn_version") if key in state}
    return save_checkpoint(path, {"model": weights, **keep, "exported_from": str(checkpoint)}, state["config"])
