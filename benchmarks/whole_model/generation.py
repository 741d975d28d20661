"""Greedy generation on Llama, batch 1: a prompt, then one token at a time; per stretch of new tokens the
tokens/s, the bytes of the cached keys and values, and the peak memory (None on the CPU)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.harness.budget import SKIPPED
from benchmarks.harness.checks import failure
from benchmarks.harness.memory import MIB, allocator_peak, gib, release_cached, reset_peak
from benchmarks.harness.timing import Timer
from benchmarks.whole_model.budget import Budget
from benchmarks.whole_model.llama import Llama
from benchmarks.whole_model.rows import ConfigSpec
from benchmarks.whole_model.switching import configured, fallbacks_recorded
from hf_efficient_attn.compat import model_cache_keyword


def cache_bytes(cache: object) -> int:
    """Bytes of the key and value tensors a transformers cache holds."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def stretch_ends(new_tokens: int) -> list[int]:
    """Where the stretches end: after 1/8, 1/4, 1/2 and all of the new tokens."""
    return sorted({max(1, new_tokens >> shift) for shift in (3, 2, 1, 0)})


def generate_row(family: Llama, spec: ConfigSpec, args: argparse.Namespace, budget: Budget,
                 fallbacks: dict[str, set[str]]) -> dict[str, Any]:
    """Prefill a prompt (logits of its last token only), then greedy one-token steps."""
    from transformers import DynamicCache

    device = family.device
    row: dict[str, Any] = {"config": spec.name, "prompt": args.gen_prompt, "new_tokens": args.gen_new, "points": []}
    if budget.passed():
        row["status"] = SKIPPED
        return row
    marks = stretch_ends(args.gen_new)
    try:
        model = family.build(args.gen_prompt)
        prompt = family.inputs(model, args.gen_prompt, seed=3)["input_ids"]
        with fallbacks_recorded(fallbacks.setdefault(spec.name, set())), torch.no_grad(), \
                configured(family, model, spec) as target:
            cache = DynamicCache(config=target.config)
            reset_peak(device)
            timer = Timer(device)
            keyword = model_cache_keyword(target)
            out = target(input_ids=prompt, use_cache=True, logits_to_keep=1, **{keyword: cache})
            token = out.logits[:, -1:].argmax(-1)
            row["prefill_ms"] = round(timer.ms(), 1)
            row["after_prefill"] = {"cache_mib": round(cache_bytes(cache) / MIB, 3),
                                    "peak_gib": gib(allocator_peak(device))}
            del out
            done = 0
            reset_peak(device)
            timer.restart()
            for step in range(1, args.gen_new + 1):
                token = target(input_ids=token, use_cache=True, **{keyword: cache}).logits[:, -1:].argmax(-1)
                if step in marks:
                    row["points"].append({
                        "generated": step, "tokens_per_s": round((step - done) / (timer.ms() / 1e3), 1),
                        "cache_mib": round(cache_bytes(cache) / MIB, 3), "peak_gib": gib(allocator_peak(device))})
                    reset_peak(device)
                    done = step
                    timer.restart()
                    if budget.passed() and step < args.gen_new:
                        row["stopped"] = "time budget"
                        break
            del cache
        row["status"] = "ok"
    except Exception as exc:  # report and go on
        row["status"] = failure(exc)
    release_cached(device, collect=row["status"] != "ok")
    return row
