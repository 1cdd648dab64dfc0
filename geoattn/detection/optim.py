"""OpenPCDet's ``adam_onecycle`` optimiser: Adam, decoupled weight decay and a per-iteration one-cycle schedule.

Facts from OpenPCDet (``tools/train_utils/optimization/__init__.py``, ``fastai_optim.py``,
``learning_schedules_fastai.py``, ``train_utils.py``):

* ``torch.optim.Adam`` with ``betas = (beta1, 0.99)``, eps ``1e-8``, and *no* coupled weight decay
  (``weight_decay = 0`` inside Adam);
* before every Adam step, every trainable parameter -- batch-norm weights and biases included
  (``bn_wd=True``) -- is multiplied by ``1 - wd * lr`` with the current LR (``true_wd=True``), whether or not
  it has a gradient;
* the schedule is stepped with the global iteration ``t`` (0-based) *before* the forward of that iteration, so
  the first update uses ``t = 0``. With ``T`` = total iterations (iterations per process per epoch times
  epochs) and ``a = int(T * pct_start)``, ``annealing_cos(s, e, p) = e + (s - e) / 2 * (cos(pi * p) + 1)``::

      lr(t)    = annealing_cos(LR / div, LR, t / a)                     for t < a
               = annealing_cos(LR, LR / div / 1e4, (t - a) / (T - a))   for t >= a
      beta1(t) = annealing_cos(m0, m1, t / a)  for t < a,  annealing_cos(m1, m0, (t - a) / (T - a)) after,

  with ``(m0, m1) = MOMS = (0.95, 0.85)``. Because ``T`` counts iterations per process, the schedule (and the
  effective batch) changes with the number of GPUs, as in OpenPCDet.

Gradient clipping (``GRAD_NORM_CLIP``, ``clip_grad_norm_`` after ``GradScaler.unscale_``) is the caller's job,
as in OpenPCDet's ``train_one_epoch``; :mod:`geoattn.detection.training` does it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

__all__ = ["annealing_cos", "OneCycleSchedule", "AdamOneCycle", "build_optimizer"]


def annealing_cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation ``end + (start - end) / 2 * (cos(pi * pct) + 1)``: ``start`` at 0, ``end`` at 1."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _positive(name: str, value: Any, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 or \
            (not integer and not math.isfinite(value)):
        raise ValueError(f"{name}: expected a positive {'int' if integer else 'number'}, got {value!r}")


class OneCycleSchedule:
    """The one-cycle LR and beta1 schedule as a pure function of the iteration (see the module docstring).

    Args:
        total_steps: ``T``, the planned number of optimiser iterations (>= 1).
        lr_max: the peak LR (``OPTIMIZATION.LR``).
        moms: ``(m0, m1)``: beta1 starts and ends at m0, reaches m1 at the LR peak.
        div_factor: the first LR is ``lr_max / div_factor``, the last ``lr_max / div_factor / 1e4``.
        pct_start: fraction of ``T`` spent warming up; ``a = int(T * pct_start)``.
    """

    def __init__(self, total_steps: int, lr_max: float, moms: Iterable[float] = (0.95, 0.85),
                 div_factor: float = 10.0, pct_start: float = 0.4) -> None:
        _positive("total_steps", total_steps, integer=True)
        _positive("lr_max", lr_max)
        _positive("div_factor", div_factor)
        moms = tuple(float(m) for m in moms)
        if len(moms) != 2 or not all(0.0 <= m < 1.0 for m in moms):
            raise ValueError(f"moms: expected two betas in [0, 1), got {moms!r}")
        if isinstance(pct_start, bool) or not isinstance(pct_start, (int, float)) or not 0.0 <= pct_start < 1.0:
            raise ValueError(f"pct_start: expected a number in [0, 1), got {pct_start!r}")
        self.total_steps = int(total_steps)
        self.lr_max = float(lr_max)
        self.moms = moms
        self.div_factor = float(div_factor)
        self.pct_start = float(pct_start)
        self.warmup_steps = int(self.total_steps * self.pct_start)

    @property
    def low_lr(self) -> float:
        return self.lr_max / self.div_factor

    def _phase(self, step: int) -> tuple[int, float]:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        a = self.warmup_steps
        if step < a:
            return 0, step / a
        return 1, (step - a) / (self.total_steps - a)

    def lr(self, step: int) -> float:
        """LR used by the update of iteration ``step`` (0-based)."""
        phase, pct = self._phase(step)
        if phase == 0:
            return annealing_cos(self.low_lr, self.lr_max, pct)
        return annealing_cos(self.lr_max, self.low_lr / 1e4, pct)

    def momentum(self, step: int) -> float:
        """beta1 used by the update of iteration ``step`` (0-based)."""
        phase, pct = self._phase(step)
        m0, m1 = self.moms
        return annealing_cos(m0, m1, pct) if phase == 0 else annealing_cos(m1, m0, pct)

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "lr_max": self.lr_max, "moms": list(self.moms),
                "div_factor": self.div_factor, "pct_start": self.pct_start}


class AdamOneCycle(torch.optim.Adam):
    """``torch.optim.Adam`` driven by :class:`OneCycleSchedule` with OpenPCDet's decoupled weight decay.

    One iteration ``t``: set every group's ``lr = lr(t)`` and ``betas = (beta1(t), beta2)``; for every
    parameter with ``requires_grad``, ``p <- p * (1 - wd * lr(t))``; then the plain Adam update (no coupled
    decay). :meth:`step` uses ``t = self.iteration`` and then advances it. OpenPCDet advances the schedule even
    when ``GradScaler`` skips a step on inf/NaN gradients; to keep that, call :meth:`set_iteration` with the
    global iteration before each step (as :mod:`geoattn.detection.training` does).

    ``state_dict`` holds Adam's state plus ``"one_cycle"`` (the iteration and the schedule), so ``--resume``
    continues the same curve; :meth:`load_state_dict` refuses a schedule with other hyper-parameters
    (``ValueError``) unless ``strict_schedule=False``.

    Args:
        params: parameters or parameter groups.
        total_steps, lr, moms, div_factor, pct_start: see :class:`OneCycleSchedule` (``lr`` is the peak LR).
        weight_decay: ``wd`` of the decoupled decay (>= 0).
        beta2: Adam's second-moment decay (OpenPCDet: 0.99). eps: Adam's epsilon.
    """

    def __init__(self, params, total_steps: int, lr: float = 0.003, weight_decay: float = 0.01,
                 moms: Iterable[float] = (0.95, 0.85), div_factor: float = 10.0, pct_start: float = 0.4,
                 beta2: float = 0.99, eps: float = 1e-8) -> None:
        schedule = OneCycleSchedule(total_steps, lr, moms, div_factor, pct_start)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay!r}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"beta2: expected a number in [0, 1), got {beta2!r}")
        super().__init__(params, lr=schedule.lr(0), betas=(schedule.momentum(0), beta2), eps=eps, weight_decay=0.0)
        self.schedule = schedule
        self.decoupled_weight_decay = float(weight_decay)
        self.beta2 = float(beta2)
        self.iteration = 0
        self.set_iteration(0)

    def set_iteration(self, iteration: int) -> None:
        """Point the schedule at global iteration ``iteration`` (OpenPCDet's ``lr_scheduler.step(it)``)."""
        lr, beta1 = self.schedule.lr(iteration), self.schedule.momentum(iteration)
        self.iteration = iteration
        for group in self.param_groups:
            group["lr"] = lr
            group["betas"] = (beta1, self.beta2)

    @property
    def lr(self) -> float:
        """The LR of the next update."""
        return self.schedule.lr(self.iteration)

    @property
    def momentum(self) -> float:
        """beta1 of the next update."""
        return self.schedule.momentum(self.iteration)

    @torch.no_grad()
    def step(self, closure=None):
        """Decay, Adam update at ``self.iteration``, then ``self.iteration += 1``."""
        self.set_iteration(self.iteration)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.decoupled_weight_decay > 0:
            for group in self.param_groups:
                params = [p for p in group["params"] if p.requires_grad]
                if params:
                    torch._foreach_mul_(params, 1.0 - self.decoupled_weight_decay * group["lr"])
        super().step()
        self.iteration += 1
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["one_cycle"] = {"iteration": self.iteration, "weight_decay": self.decoupled_weight_decay,
                              "beta2": self.beta2, **self.schedule.state_dict()}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict_schedule: bool = True) -> None:
        state_dict = dict(state_dict)
        one_cycle = state_dict.pop("one_cycle", None)
        if one_cycle is None:
            raise ValueError("AdamOneCycle.load_state_dict: the state has no 'one_cycle' entry (not an "
                             "AdamOneCycle state)")
        mine = {"weight_decay": self.decoupled_weight_decay, "beta2": self.beta2, **self.schedule.state_dict()}
        if strict_schedule:
            different = {key: (one_cycle.get(key), value) for key, value in mine.items()
                         if not _same(one_cycle.get(key), value)}
            if different:
                detail = ", ".join(f"{key}: saved {saved!r}, now {now!r}" for key, (saved, now) in different.items())
                raise ValueError(f"AdamOneCycle.load_state_dict: schedule differs from the saved one ({detail})")
        super().load_state_dict(state_dict)
        self.set_iteration(int(one_cycle["iteration"]))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return a == b


def build_optimizer(params, optimization: Mapping[str, Any], total_steps: int) -> AdamOneCycle:
    """:class:`AdamOneCycle` from an ``OPTIMIZATION`` config section (``OPTIMIZER: adam_onecycle``, ``LR``,
    ``WEIGHT_DECAY``, ``MOMS``, ``DIV_FACTOR``, ``PCT_START``); ``total_steps`` = iterations per process per
    epoch times ``NUM_EPOCHS``. ``ValueError`` naming ``OPTIMIZATION.<KEY>`` for a missing or bad value or
    another optimiser."""
    name = optimization.get("OPTIMIZER")
    if name != "adam_onecycle":
        raise ValueError(f"OPTIMIZATION.OPTIMIZER: expected 'adam_onecycle', got {name!r}")
    values = {}
    for key in ("LR", "WEIGHT_DECAY", "MOMS", "DIV_FACTOR", "PCT_START"):
        if key not in optimization:
            raise ValueError(f"OPTIMIZATION.{key}: missing")
        values[key] = optimization[key]
    try:
        return AdamOneCycle(params, total_steps, lr=values["LR"], weight_decay=values["WEIGHT_DECAY"],
                            moms=values["MOMS"], div_factor=values["DIV_FACTOR"], pct_start=values["PCT_START"])
    except ValueError as error:
        message = str(error)
        for arg, key in (("lr_max", "LR"), ("weight_decay", "WEIGHT_DECAY"), ("moms", "MOMS"),
                         ("div_factor", "DIV_FACTOR"), ("pct_start", "PCT_START")):
            if message.startswith(arg + ":"):
                raise ValueError(f"OPTIMIZATION.{key}:" + message[len(arg) + 1:]) from None
        raise
