"""Prefill (one forward under no_grad) and train (forward + backward) of a row at one length, timed."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.harness.checks import failure
from benchmarks.harness.memory import gib, peak_during, release_cached
from benchmarks.harness.timing import run_ms
from benchmarks.whole_model.budget import Budget
from benchmarks.whole_model.family import Family
from benchmarks.whole_model.rows import ConfigSpec
from benchmarks.whole_model.switching import configured, fallbacks_recorded, training

LONG_RUN_MS = 1000.0
"""Runs at least this long are timed once after the warm-up."""


def run_once(work: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """Milliseconds and peak bytes of one run (CUDA: allocator peak, weights included; CPU: resident-set growth)."""
    with peak_during(device) as peak:
        ms = run_ms(work, device)
    return ms, peak.bytes


def timed(work: Callable[[], object], device: torch.device, repeats: int) -> dict[str, Any]:
    """The median of ``repeats`` runs after an untimed one (one run where the warm-up took a second or more)."""
    warm_ms, _ = run_once(work, device)
    runs = [run_once(work, device) for _ in range(1 if warm_ms >= LONG_RUN_MS else repeats)]
    times = sorted(ms for ms, _ in runs)
    return {"status": "ok", "ms": round(times[len(times) // 2], 3), "runs_ms": [round(ms, 3) for ms, _ in runs],
            "warmup_ms": round(warm_ms, 3), "peak_gib": gib(max(peak for _, peak in runs))}


def measure_row(family: Family, spec: ConfigSpec, mode: str, length: int, args: argparse.Namespace,
                budget: Budget, fallbacks: dict[str, set[str]]) -> dict[str, Any]:
    """Row ``spec`` in ``mode`` (prefill or train) at ``length``: timed, or why not (skipped, OOM, an error)."""
    tokens = family.tokens(length)
    row = {"family": family.name, "config": spec.name, "mode": mode, "length": length, "tokens": tokens,
           "input": family.describe(length)}
    key = (family.name, spec.name, mode)
    reason = budget.skip_reason(key, tokens)
    if reason:
        row["status"] = reason
        return row
    try:
        model = family.build(length)
        inputs = family.inputs(model, length)
        with fallbacks_recorded(fallbacks.setdefault(spec.name, set())), configured(family, model, spec) as target:
            if mode == "prefill":
                def work():
                    with torch.no_grad():
                        return family.output(target, inputs)
            else:
                def work():
                    family.loss(target, inputs).backward()
                    target.zero_grad(set_to_none=True)
            with training(target, args.checkpointing) if mode == "train" else contextlib.nullcontext():
                row.update(timed(work, family.device, args.repeats))
        budget.record(key, tokens, row["ms"] / 1e3)
    except Exception as exc:  # OOM or an error: record it, stop this row's longer lengths on OOM
        row["status"] = failure(exc)
        if row["status"] == "OOM":
            budget.stopped[key] = f"OOM at {tokens} tokens"
    release_cached(family.device, collect="ms" not in row)
    return row
