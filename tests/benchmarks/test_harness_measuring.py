"""benchmarks/harness: timing, peak memory, checks and the time budget on the CPU (the GPU paths run in
the GPU benchmarks)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import attention_calls, budget, checks, memory, timing  # noqa: E402

CPU = torch.device("cpu")


def test_cpu_timing_falls_back_to_the_wall_clock():
    assert timing.run_ms(lambda: time.sleep(0.02), CPU) >= 20
    timer = timing.Timer(CPU)
    time.sleep(0.01)
    first = timer.ms()
    assert first >= 10 and timer.ms() >= first
    timer.restart()
    assert timer.ms() < first


def test_a_warm_call_on_the_cpu_is_the_median_of_the_timed_calls():
    delays = iter([0.05, 0.001, 0.03, 0.001])  # the first call is not timed
    assert 1 <= timing.call_ms(lambda: time.sleep(next(delays)), CPU, repeats=3) < 30


def test_a_backward_pass_is_timed_with_its_gradients_cleared():
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))
    work = attention_calls.attention_pass(F.scaled_dot_product_attention, q, k, v, backward=True)
    assert timing.call_ms(work, CPU, repeats=2, grad_to_none=(q, k, v)) > 0
    once = q.grad.clone()  # one call's gradient after the last call, not the sum of three
    q.grad = None
    work()
    assert torch.equal(q.grad, once)


def test_an_attention_cell_is_a_time_or_why_there_is_none():
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))
    running = budget.Deadline(60)
    cell = attention_calls.timed_call(F.scaled_dot_product_attention, q, k, v, True, running, repeats=2)
    assert cell["ms"] > 0 and q.grad is None  # the gradients are freed after the cell
    assert attention_calls.timed_call(None, q, k, v, False, running) == "n/a"
    spent = budget.Deadline(0)
    assert attention_calls.timed_call(F.scaled_dot_product_attention, q, k, v, False, spent) == budget.SKIPPED

    def refuses(q, k, v):
        raise ValueError("head_dim 4 is not supported")

    assert attention_calls.timed_call(refuses, q, k, v, False, running) == (
        "error: ValueError: head_dim 4 is not supported")


def test_peak_memory_on_the_cpu():
    assert memory.allocator_peak(CPU) is None  # no allocator counter: no figure rather than a wrong one
    assert memory.gib(None) is None and memory.gib(3 * memory.GIB // 2) == 1.5
    with memory.peak_during(CPU) as peak:
        block = torch.ones(64 * memory.MIB)  # 256 MiB, written
        time.sleep(0.05)
        del block
    assert peak.bytes >= 128 * memory.MIB  # the resident set grew by most of it


def test_checks_pass_an_exact_result_and_fail_a_wrong_one():
    reference32 = torch.randn(64, dtype=torch.float64).float()
    reference = reference32.bfloat16()
    assert checks.against_float32(reference.clone(), reference32, reference, exact=True)["status"] == "ok"
    wrong = reference + 0.5
    verdict = checks.against_float32(wrong, reference32, reference, exact=True)
    assert verdict["status"] == "FAIL" and verdict["rel_err_vs_fp32"] > verdict["tolerance"]
    assert checks.against_float32(wrong, reference32, reference, exact=False)["status"] == "approximate"
    assert checks.relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(4 / 3)
    assert checks.max_abs_error(torch.tensor([1.0, -2.0]), torch.tensor([1.5, 1.0])) == 3.0


def test_gradient_errors_of_sdpa_against_float32_math():
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def math(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v

    errors = checks.gradient_errors(F.scaled_dot_product_attention, math, (q, k, v))
    assert set(errors) == {"out", "dq", "dk", "dv"} and all(0 < e < 0.1 for e in errors.values())


def test_failures_as_cells():
    assert checks.failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")) == "OOM"
    assert checks.failure(RuntimeError("bad\n  shape " + "x" * 300)) == "error: RuntimeError: bad shape " + "x" * 150


def test_a_spent_budget_has_passed():
    assert budget.Deadline(0).passed() and not budget.Deadline(60).passed()
    assert budget.Deadline(60, start=time.time() - 50).left() == pytest.approx(10, abs=1)
