"""The checks run before anything is timed: each row's output on a short input against an fp32 run of its
reference row (`harness.checks.against_float32`). Rows that fail are not timed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.harness.checks import against_float32, failure
from benchmarks.whole_model.family import Family
from benchmarks.whole_model.llama import Llama
from benchmarks.whole_model.rows import BASELINE, CONFIGS, DECODE_REFERENCE, ConfigSpec
from benchmarks.whole_model.switching import cast_inputs, configured, fallbacks_recorded, parameters_as
from hf_efficient_attn.compat import model_cache_keyword


def prefill_checks(family: Family, specs: list[ConfigSpec], fallbacks: dict[str, set[str]]) -> list[dict]:
    """Every row against fp32 hf-sdpa at the check length; on Llama, sliding against hf-sdpa-sliding beyond it."""
    plans = [(spec, BASELINE, family.check_length) for spec in specs]
    if family.name == "llama" and "sliding" in {spec.name for spec in specs}:
        plans.append((CONFIGS["sliding"], "hf-sdpa-sliding", family.window_check_length))
    results, references = [], {}
    for spec, reference, length in plans:
        model = family.build(length)
        row = {"family": family.name, "config": spec.name, "reference": reference, "mode": "prefill",
               "tokens": family.tokens(length), "exact": spec.exact}
        try:
            inputs = family.inputs(model, length, seed=1)
            if (reference, length) not in references:
                references[(reference, length)] = reference_outputs(family, model, CONFIGS[reference], inputs)
            ref32, ref16 = references[(reference, length)]
            with fallbacks_recorded(fallbacks.setdefault(spec.name, set())), torch.no_grad(), \
                    configured(family, model, spec) as target:
                out = family.output(target, inputs)
            row.update(against_float32(out, ref32, ref16, spec.exact))
        except Exception as exc:  # report and go on
            row["status"] = failure(exc)
        results.append(row)
        print(f"  check {spec.name:16s} vs {reference:16s} @ {row['tokens']:>6}: {format_check(row)}", flush=True)
    return results


def reference_outputs(family: Family, model: nn.Module, spec: ConfigSpec,
                      inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of reference row ``spec`` in fp32 and in the run's dtype."""
    with torch.no_grad(), configured(family, model, spec) as target:
        with parameters_as(target, torch.float32):
            ref32 = family.output(target, cast_inputs(inputs, torch.float32))
        ref16 = family.output(target, inputs)
    return ref32, ref16


def format_check(row: dict[str, Any]) -> str:
    if "rel_err_vs_fp32" not in row:
        return row["status"]
    text = f"rel err vs fp32 {row['rel_err_vs_fp32']:.2e} (reference {row['reference_rel_err_vs_fp32']:.2e})"
    return f"{row['status']}: {text}"


def decode_checks(family: Llama, names: list[str], fallbacks: dict[str, set[str]]) -> list[dict]:
    """Teacher-forced decoding after a prompt longer than the window: our rows against their reference."""
    prompt, steps = family.window + family.window // 64 + 8, 8
    model = family.build(prompt)
    ids = family.inputs(model, prompt + steps, seed=2)["input_ids"]
    results, references = [], {}
    for name in names:
        reference = DECODE_REFERENCE[name]
        spec = CONFIGS[name]
        row = {"family": family.name, "config": name, "reference": reference, "mode": "decode",
               "tokens": prompt + steps, "exact": spec.exact}
        try:
            if reference not in references:
                with torch.no_grad(), configured(family, model, CONFIGS[reference]) as target:
                    with parameters_as(target, torch.float32):
                        ref32 = decode_hidden(target, ids, prompt)
                    references[reference] = (ref32, decode_hidden(target, ids, prompt))
            with fallbacks_recorded(fallbacks.setdefault(name, set())), torch.no_grad(), \
                    configured(family, model, spec) as target:
                out = decode_hidden(target, ids, prompt)
            row.update(against_float32(out, *references[reference], spec.exact))
        except Exception as exc:  # report and go on
            row["status"] = failure(exc)
        results.append(row)
        print(f"  check {name:16s} vs {reference:16s} decode after {prompt}: {format_check(row)}", flush=True)
    return results


def decode_hidden(model: nn.Module, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Last hidden states of one-token steps fed ``ids[prompt:]`` after a cached prompt."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    keyword = model_cache_keyword(model.model)
    model.model(input_ids=ids[:, :prompt], use_cache=True, **{keyword: cache})
    steps = [model.model(input_ids=ids[:, i:i + 1], use_cache=True, **{keyword: cache}).last_hidden_state
             for i in range(prompt, ids.shape[1])]
    return torch.cat(steps, dim=1)
