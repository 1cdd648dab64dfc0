"""Training and evaluation helpers for 2D -> 3D lifting models (GLA-GCN, VideoPose3D-style baselines).

Models take windows ``[B, T, V, 2]`` and return centre-frame poses ``[B, 1, V, 3]``; data come from
:class:`geoattn.data.h36m.ChunkedWindows`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from geoattn.data.h36m import ChunkedWindows, flip_pose
from geoattn.nn.glagcn import H36M_JOINTS_LEFT, H36M_JOINTS_RIGHT
from geoattn.pose.metrics import mpjpe, n_mpjpe, p_mpjpe

__all__ = ["ScaleNormalizedLifter", "set_bn_momentum", "bn_momentum", "recalibrate_batch_norm",
           "recalibrate_if_better", "train_epoch", "predict", "pose_metrics"]


class ScaleNormalizedLifter(nn.Module):
    r"""Show a lifting model every 2D window at one image scale.

    For a window ``x [N, T, V, 2]`` with centre frame :math:`c = x_{\lfloor T/2 \rfloor}` the scale is the
    RMS distance of its joints from the root, :math:`s = \sqrt{\tfrac1V \sum_v \lVert c_v - c_{root}\rVert^2}`,
    and the wrapped ``lifter`` sees :math:`x \cdot r / s` (``r = target_rms``); its 3D output is returned
    unchanged. A subject's 2D size falls with its distance to the camera while its root-relative 3D pose
    (metres) does not, so dividing the distance out spares the lifter from learning that invariance. The
    whole window shares one factor, so motion towards the camera inside it is still visible. Pass
    ray-aligned or root-centred keypoints (a subject's position in the image is not a scale).

    Shapes: ``x [N, T, V, 2] -> lifter's output``; ``receptive_field()`` is the lifter's.
    """

    def __init__(self, lifter: nn.Module, root: int = 0, target_rms: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        if target_rms <= 0 or eps <= 0:
            raise ValueError(f"target_rms/eps: expected positive values, got {target_rms} and {eps}")
        self.lifter, self.root, self.target_rms, self.eps = lifter, root, float(target_rms), float(eps)

    def receptive_field(self) -> int:
        return self.lifter.receptive_field()

    def reset_parameters(self) -> None:
        self.lifter.reset_parameters()

    def window_scale(self, x: Tensor) -> Tensor:
        """``[N]`` RMS distance of the centre frame's joints from the root (at least ``eps``)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.size(-1) != 2 or not -x.size(2) <= self.root < x.size(2):
            raise ValueError(f"x: expected a 4-D tensor [N, T, V, 2] with a joint {self.root} (root), "
                             f"got shape {tuple(x.shape)}")
        centre = x[:, x.size(1) // 2]
        offsets = centre - centre[:, self.root].unsqueeze(1)  # (a slice root:root+1 is empty for root = -1)
        return offsets.pow(2).sum(-1).mean(-1).sqrt().clamp_min(self.eps)

    def forward(self, x: Tensor) -> Tensor:
        factor = self.target_rms / self.window_scale(x)
        return self.lifter(x * factor.to(x.dtype)[:, None, None, None])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.lifter!r}, target_rms={self.target_rms})"


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every batch-norm layer of ``model``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def bn_momentum(epoch: int, epochs: int, initial: float = 0.1, final: float = 0.001) -> float:
    """VideoPose3D's schedule: momentum decays exponentially from ``initial`` (epoch 0) to ``final``."""
    if epochs <= 1:
        return initial
    return initial * math.exp(epoch / (epochs - 1) * math.log(final / initial))


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, windows: ChunkedWindows, batch_size: int = 1024,
                           device: torch.device | str = "cpu", max_items: int | None = None,
                           rng: np.random.Generator | None = None) -> None:
    """Re-estimate every batch-norm layer's running statistics for the current weights.

    With few optimisation steps and VideoPose3D's decaying momentum, the running averages lag behind the
    weights, so eval-mode outputs drift from train-mode ones. This pass resets them and accumulates exact
    averages (``momentum=None``) over ``windows`` (or ``max_items`` random ones) with dropout off; the
    weights are untouched. The model is left in eval mode with its previous momenta.

    Batches are drawn in a random (seeded by ``rng``) order: a batch-norm variance is the mean of
    per-batch variances, which matches the variance over all windows only when every batch is a random
    sample (consecutive windows of one sequence and camera are nearly alike).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    order = (rng or np.random.default_rng(0)).permutation(len(windows))
    if max_items is not None and max_items < len(order):
        order = order[:max_items]
    for begin in range(0, len(order), batch_size):
        inputs, _ = windows.get(order[begin:begin + batch_size])
        model(inputs.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def recalibrate_if_better(model: nn.Module, windows: ChunkedWindows, score, batch_size: int = 1024,
                          device: torch.device | str = "cpu", rng: np.random.Generator | None = None) -> bool:
    """Recalibrate batch norm on ``windows`` (:func:`recalibrate_batch_norm`) and keep the new statistics only
    if they lower ``score(model)`` (a callable returning an error on held-out validation data).

    The running averages gathered during training are sometimes the better estimate (they average over
    many epochs of augmented data) and sometimes not (they lag behind the weights), so the choice is made
    on validation data. Returns whether the recalibrated statistics were kept; the model ends in eval mode.
    """
    model.eval()
    before = score(model)
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    recalibrate_batch_norm(model, windows, batch_size=batch_size, device=device, rng=rng)
    if score(model) < before:
        return True
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    model.eval()
    return False


def train_epoch(model: nn.Module, windows: ChunkedWindows, optimizer: torch.optim.Optimizer, batch_size: int,
                rng: np.random.Generator, device: torch.device | str = "cpu", progress=None, *, rank: int = 0,
                world_size: int = 1) -> float:
    """One pass over shuffled ``windows`` minimising MPJPE; returns the mean training loss of this process.

    ``progress`` is an optional callable ``progress(num_items, loss)`` (e.g. a tqdm ``update`` wrapper).
    Data-parallel training (``world_size`` processes, ``model`` wrapped in ``DistributedDataParallel``):
    every process draws the same permutation from its ``rng`` (seed it identically) and process ``rank``
    takes batches ``rank, rank + world_size, ...`` of it; the batch list is padded from its start so that every
    process makes the same number of steps (``ceil(batches / world_size)``). With ``world_size=1`` this is
    a plain pass, batch for batch what :meth:`ChunkedWindows.batches` yields.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank!r}, "
                         f"world_size={world_size!r}")
    model.train()
    order = np.arange(len(windows))
    rng.shuffle(order)
    starts = range(0, len(order), batch_size)
    total, count = 0.0, 0
    for step in range(math.ceil(len(starts) / world_size)):
        begin = starts[(step * world_size + rank) % len(starts)]
        inputs, targets = windows.get(order[begin:begin + batch_size])
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = mpjpe(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(inputs)
        count += len(inputs)
        if progress is not None:
            progress(len(inputs), loss.item())
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, windows: ChunkedWindows, batch_size: int = 1024, device: torch.device | str = "cpu",
            flip_test: bool = True, joints_left: Sequence[int] = H36M_JOINTS_LEFT,
            joints_right: Sequence[int] = H36M_JOINTS_RIGHT) -> Tensor:
    """Centre-frame predictions ``[M, V, 3]`` for the ``M = windows.num_frames`` un-flipped windows.

    With ``flip_test`` the model also sees each mirrored window; its output is mirrored back and
    averaged with the direct prediction (flip test-time augmentation).
    """
    model.eval()
    outputs = []
    for begin in range(0, windows.num_frames, batch_size):
        inputs, _ = windows.get(np.arange(begin, min(begin + batch_size, windows.num_frames)))
        inputs = inputs.to(device)
        prediction = model(inputs)[:, 0]
        if flip_test:
            mirrored = model(flip_pose(inputs, joints_left, joints_right))[:, 0]
            prediction = 0.5 * (prediction + flip_pose(mirrored, joints_left, joints_right))
        outputs.append(prediction.cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0)


def pose_metrics(prediction: Tensor, target: Tensor, scale: float = 1000.0) -> dict[str, float]:
    """``{'mpjpe', 'p_mpjpe', 'n_mpjpe'}`` (times ``scale``: metres -> millimetres by default)."""
    return {
        "mpjpe": float(mpjpe(prediction, target)) * scale,
        "p_mpjpe": float(p_mpjpe(prediction, target)) * scale,
        "n_mpjpe": float(n_mpjpe(prediction, target)) * scale,
    }
