"""geoattn.detection.optim: the one-cycle schedule at hand-computed iterations, the update formula, resume."""
from __future__ import annotations

import math

import pytest
import torch

from geoattn.detection.optim import AdamOneCycle, OneCycleSchedule, annealing_cos, build_optimizer

OPT = {"OPTIMIZER": "adam_onecycle", "LR": 0.006, "WEIGHT_DECAY": 0.05, "MOMS": [0.95, 0.85], "PCT_START": 0.1,
       "DIV_FACTOR": 100}


def test_schedule_hand_computed():
    # T = 100, a = int(100 * 0.1) = 10; lr_max 0.006, low 6e-5, final 6e-9
    schedule = OneCycleSchedule(100, 0.006, (0.95, 0.85), 100, 0.1)
    assert schedule.warmup_steps == 10
    assert schedule.lr(0) == pytest.approx(6e-5, rel=1e-12)
    assert schedule.momentum(0) == pytest.approx(0.95, rel=1e-12)
    # t = 5: halfway up, cos(pi/2) = 0 -> mean of the ends
    assert schedule.lr(5) == pytest.approx((6e-5 + 0.006) / 2, rel=1e-12)
    assert schedule.momentum(5) == pytest.approx(0.90, rel=1e-12)
    # t = 10: the peak, second phase begins (pct 0)
    assert schedule.lr(10) == pytest.approx(0.006, rel=1e-12)
    assert schedule.momentum(10) == pytest.approx(0.85, rel=1e-12)
    # t = 55: halfway down: (0.006 + 6e-9) / 2; beta1 back halfway
    assert schedule.lr(55) == pytest.approx((0.006 + 6e-9) / 2, rel=1e-12)
    assert schedule.momentum(55) == pytest.approx(0.90, rel=1e-12)
    # t = 2: the formula written out
    expected = 0.006 + (6e-5 - 0.006) / 2 * (math.cos(math.pi * 0.2) + 1)
    assert schedule.lr(2) == pytest.approx(expected, rel=1e-12)
    # last iteration t = 99: pct 89 / 90
    assert schedule.lr(99) == pytest.approx(6e-9 + (0.006 - 6e-9) / 2 * (math.cos(math.pi * 89 / 90) + 1), rel=1e-12)
    assert schedule.lr(99) < 3e-6
    assert annealing_cos(1.0, 0.0, 0.0) == 1.0 and annealing_cos(1.0, 0.0, 1.0) == pytest.approx(0.0, abs=1e-15)


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleSchedule(0, 0.1)
    with pytest.raises(ValueError, match="lr_max"):
        OneCycleSchedule(10, -1.0)
    with pytest.raises(ValueError, match="pct_start"):
        OneCycleSchedule(10, 0.1, pct_start=1.0)
    with pytest.raises(ValueError, match="moms"):
        OneCycleSchedule(10, 0.1, moms=(0.9,))
    with pytest.raises(ValueError, match="step"):
        OneCycleSchedule(10, 0.1).lr(-1)
    with pytest.raises(ValueError, match="OPTIMIZATION.OPTIMIZER"):
        build_optimizer([torch.zeros(1, requires_grad=True)], {**OPT, "OPTIMIZER": "sgd"}, 10)
    with pytest.raises(ValueError, match="OPTIMIZATION.LR"):
        build_optimizer([torch.zeros(1, requires_grad=True)], {**OPT, "LR": "x"}, 10)
    with pytest.raises(ValueError, match="OPTIMIZATION.MOMS: missing"):
        build_optimizer([torch.zeros(1, requires_grad=True)], {k: v for k, v in OPT.items() if k != "MOMS"}, 10)


def _reference_run(p0, grads, schedule, wd, beta2=0.99, eps=1e-8):
    """Plain-loop Adam with OpenPCDet's decoupled decay, float64."""
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads):
        lr, b1 = schedule.lr(t), schedule.momentum(t)
        p = p * (1 - wd * lr)
        m = b1 * m + (1 - b1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - b1 ** (t + 1))
        v_hat = v / (1 - beta2 ** (t + 1))
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_one_step_formula():
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.3, -0.1, 0.0], dtype=torch.float64)
    param = torch.nn.Parameter(p0.clone())
    optimizer = build_optimizer([param], OPT, total_steps=100)
    param.grad = g.clone()
    optimizer.step()
    lr = 0.006 / 100
    # first Adam step: m_hat = g, v_hat = g^2 -> update lr * g / (|g| + eps)
    expected = p0 * (1 - 0.05 * lr) - lr * g / (g.abs() + 1e-8)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-15)
    assert optimizer.iteration == 1 and optimizer.param_groups[0]["betas"][0] == pytest.approx(0.95)


def test_many_steps_against_reference_and_bn_decayed():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()
    frozen = torch.nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    optimizer = AdamOneCycle(params + [frozen], total_steps=20, lr=0.01, weight_decay=0.1, moms=(0.95, 0.85),
                             div_factor=10, pct_start=0.4)
    grads = [[torch.randn_like(p) for p in params] for _ in range(20)]
    for step in range(20):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        optimizer.step()
    for index, p in enumerate(params):
        expected = _reference_run(start[index], [grads[s][index] for s in range(20)], optimizer.schedule, 0.1)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(frozen.detach(), torch.ones(2, dtype=torch.float64))  # requires_grad=False: untouched
    # BN weight (init 1) decayed too: differs from an undecayed Adam run
    bn_weight = model[1].weight
    undecayed = _reference_run(start[2], [grads[s][2] for s in range(20)], optimizer.schedule, 0.0)
    assert not torch.allclose(bn_weight.detach(), undecayed, rtol=0, atol=1e-9)


def test_param_without_grad_is_still_decayed():
    param = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = AdamOneCycle([param], total_steps=10, lr=0.1, weight_decay=0.5, div_factor=1, pct_start=0.0)
    optimizer.step()  # no grad: Adam skips it, the decoupled decay still applies (OpenPCDet behaviour)
    torch.testing.assert_close(param.detach(), torch.full((2,), 1 - 0.5 * 0.1, dtype=torch.float64))


def test_state_dict_resume_continues_the_curve():
    torch.manual_seed(1)
    data = [torch.randn(8, 3) for _ in range(12)]

    def make():
        torch.manual_seed(2)
        model = torch.nn.Linear(3, 1)
        return model, build_optimizer(model.parameters(), OPT, total_steps=12)

    def train(model, optimizer, batches):
        for x in batches:
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()

    model_a, opt_a = make()
    train(model_a, opt_a, data)
    model_b, opt_b = make()
    train(model_b, opt_b, data[:5])
    saved_model, saved_opt = model_b.state_dict(), opt_b.state_dict()
    assert saved_opt["one_cycle"]["iteration"] == 5
    model_c, opt_c = make()
    model_c.load_state_dict(saved_model)
    opt_c.load_state_dict(saved_opt)
    assert opt_c.iteration == 5 and opt_c.param_groups[0]["lr"] == pytest.approx(opt_c.schedule.lr(5))
    train(model_c, opt_c, data[5:])
    for a, c in zip(model_a.parameters(), model_c.parameters()):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    other = build_optimizer(torch.nn.Linear(3, 1).parameters(), {**OPT, "LR": 0.01}, total_steps=12)
    with pytest.raises(ValueError, match="lr_max: saved 0.006, now 0.01"):
        other.load_state_dict(saved_opt)
    with pytest.raises(ValueError, match="one_cycle"):
        other.load_state_dict(torch.optim.Adam(torch.nn.Linear(3, 1).parameters()).state_dict())


def test_set_iteration_and_grad_scaler_skip():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = AdamOneCycle([param], total_steps=10, lr=1.0, weight_decay=0.0, div_factor=10, pct_start=0.5)
    optimizer.set_iteration(5)
    assert optimizer.lr == pytest.approx(1.0) and optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
    assert optimizer.momentum == pytest.approx(0.85)
    # GradScaler (disabled on CPU) accepts the optimiser
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    param.grad = torch.ones(1)
    scaler.step(optimizer)
    scaler.update()
    assert optimizer.iteration == 6
