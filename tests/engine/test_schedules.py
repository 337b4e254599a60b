"""LrSchedule: every schedule's lr sequence equals its formula."""

from __future__ import annotations

import math

import pytest
import torch

from tunefleet.spec import resolve_defaults
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.schedules import LrSchedule, build_schedule


def lrs(schedule: LrSchedule, lr0: float) -> list[float]:
    return [lr0 * schedule.multiplier(t) for t in range(1, schedule.total_steps + 1)]


def test_linear_is_the_seed_formula():
    lr0, T = 0.1, 10
    got = lrs(LrSchedule("linear", T), lr0)
    assert got == pytest.approx([lr0 - (t - 1) * lr0 / T for t in range(1, T + 1)], abs=1e-15)


def test_linear_with_warmup_ramps_then_applies_the_formula_to_the_rest():
    lr0, T, W = 0.1, 12, 4
    got = lrs(LrSchedule("linear", T, warmup_steps=W), lr0)
    warm = [lr0 * (t - 1) / W for t in range(1, W + 1)]
    decay = [lr0 - (s - 1) * lr0 / (T - W) for s in range(1, T - W + 1)]
    assert got == pytest.approx(warm + decay, abs=1e-15)
    assert got[0] == 0.0  # transformers' first warmup step


def test_constant_with_warmup():
    assert lrs(LrSchedule("constant", 5, warmup_steps=2), 1.0) == [0.0, 0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("warmup", "total"),
    [(0, 1), (0, 10), (1, 10), (3, 10), (8, 375), (10, 10), (4, 7), (15, 10), (3, 1)],
)
@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_schedules_are_transformers_step_for_step(name, warmup, total):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    lr0 = 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    if name == "linear":
        hf = get_linear_schedule_with_warmup(opt, warmup, total)
    elif name == "cosine":
        hf = get_cosine_schedule_with_warmup(opt, warmup, total)
    else:
        hf = get_constant_schedule_with_warmup(opt, warmup)
    want = []
    for _ in range(total):
        want.append(opt.param_groups[0]["lr"])  # the lr this optimizer step uses
        opt.step()
        hf.step()
    got = lrs(LrSchedule(name, total, warmup_steps=warmup), lr0)
    assert got == pytest.approx(want, abs=1e-15)
    if name == "linear" and warmup == 0:  # the method's lr_t = lr0 - (t-1)*lr0/T, exactly
        assert got == pytest.approx(
            [lr0 - (t - 1) * lr0 / total for t in range(1, total + 1)], abs=1e-15
        )


def test_cosine_decays_to_min_lr_with_warmup():
    lr0, T, W, min_lr = 0.2, 11, 1, 0.02
    schedule = LrSchedule("cosine", T, warmup_steps=W, min_ratio=min_lr / lr0)
    got = lrs(schedule, lr0)
    want = [0.0] + [
        min_lr + (lr0 - min_lr) * 0.5 * (1 + math.cos(math.pi * (t - W - 1) / (T - W)))
        for t in range(W + 1, T + 1)
    ]
    assert got == pytest.approx(want, abs=1e-15)
    assert min(got[W:]) >= min_lr  # after the warmup


def test_step_multiplies_by_gamma_every_step_size_steps():
    got = lrs(LrSchedule("step", 7, step_size=3, gamma=0.5), 1.0)
    assert got == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_step_alone_drops_twice_over_the_run_not_every_step():
    """`schedule: {name: step}` with no step_size: a third of the steps after warmup, so
    the lr is lr0, then gamma x lr0, then gamma² x lr0 (not gamma^t: 1e-10 x lr0 by step
    11 with a step_size of 1)."""
    resolved = resolve_defaults(spec_pb2.JobSpec(schedule=spec_pb2.ScheduleSpec(name="step")))
    assert not resolved.schedule.HasField("step_size")
    schedule = build_schedule(resolved.schedule, base_lr=1.0, total_steps=9)
    assert lrs(schedule, 1.0) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    warm = spec_pb2.ScheduleSpec(name="step", warmup_steps=2)
    got = lrs(build_schedule(warm, base_lr=1.0, total_steps=8), 1.0)
    assert got == pytest.approx([0, 0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])  # ceil(6 / 3) = 2


def test_build_schedule_from_spec_warmup_ratio_and_min_lr():
    spec = spec_pb2.ScheduleSpec(name="cosine", warmup_ratio=0.25, min_lr=0.01)
    schedule = build_schedule(spec, base_lr=0.1, total_steps=10)
    assert schedule.warmup_steps == 3  # ceil(2.5), as transformers rounds warmup_ratio
    assert schedule.min_ratio == pytest.approx(0.1)


def test_lambda_lr_scales_every_group_in_proportion():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], lr=0.1)
    schedule = LrSchedule("linear", 5, warmup_steps=1)
    scheduler = schedule.lambda_lr(opt)
    seen = []
    for _ in range(5):
        seen.append([g["lr"] for g in opt.param_groups])  # lr used by this optimizer step
        opt.step()
        scheduler.step()
    for t, (lr_a, lr_b) in enumerate(seen, start=1):
        assert lr_a == pytest.approx(0.1 * schedule.multiplier(t))
        assert lr_b == pytest.approx(0.01 * schedule.multiplier(t))


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        LrSchedule("exponential", 3)
