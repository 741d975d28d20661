r"""Whole-model benchmark: transformers' attention backends against this library's variants.

    python benchmarks/end_to_end.py --out benchmarks/results/e2e       # the README table (one H100, < 8 min)
    python benchmarks/end_to_end.py --out /tmp/e2e --device cpu --tiny   # the whole path on tiny models

Writes end_to_end.json, end_to_end.md and PNG plots (time and peak memory against length, log-log, per
model; the generation curves) into --out. The JSON and Markdown are rewritten after every measurement,
so a run that is stopped keeps what it measured; without matplotlib the plots are left out (and it says so).

Models (bf16 on CUDA, fp32 on the CPU, where bf16 matmuls are ~100x slower without native support; see
--dtype. Random weights built directly on the device, no download; weights drawn with std
sqrt(3 / hidden) so attention is peaked as in trained models, see `init_std`):
  llama    Llama-3.2-1B shapes: hidden 2048, 16 layers, 32 query / 8 key-value heads of 64, MLP 8192,
           vocab 128256 (tied). --llama-path loads a local checkpoint with real weights instead.
  whisper  Whisper-large-v3's encoder (1280 wide, 32 layers, 20 heads of 64) built with
           max_source_positions = each length (1500 is the model's own); the input is 2 x length mel frames.
  vit      ViT-B/16 (768 wide, 12 layers, 12 heads of 64) at 512..4096 px: 1 + (size/16)^2 tokens.

Configurations (rows):
  hf-sdpa          transformers, attn_implementation="sdpa": the baseline.
  hf-flex          transformers, attn_implementation="flex_attention" (compiled by transformers; compiling
                   happens in untimed warm-up runs).
  hf-sdpa-sliding  Llama only: the same weights as MistralForCausalLM with config.sliding_window = --window,
                   under sdpa (transformers builds a dense N x N mask for it).
  flash, sliding, sparse, lowrank, nystrom, performer, linear: patch_model(model, variant, **options) with
                   the options of `variant_options` (sliding: --window on Llama, --encoder-window on the
                   encoders, 1-D; lowrank and nystrom run on the encoders only). sliding-2d (ViT, the 2-D
                   neighbourhood on its own kernel) runs only when named in --variants (the saved tables
                   predate that kernel; benchmarks/neighbourhood.py times it per call), as do lsh (one hash
                   round, chunks of 64) and axial (ViT only).

Measured per configuration and length:
  prefill   one forward under no_grad. Llama: the base model (model.model), without the LM head, whose
            N x vocab logits would dominate at long lengths.
  train     forward + backward (no optimizer step), loss on the last 512 positions (Llama: LM head and
            cross-entropy on those only), gradient checkpointing on (--no-checkpointing turns it off);
            lengths up to --train-max-tokens.
  peak      torch.cuda.max_memory_allocated during the run, weights included (reset before each run;
            on the CPU: growth of the resident set, coarse).
  generate  Llama, greedy, batch 1: a --gen-prompt token prompt (logits of its last token only), then
            --gen-new tokens one at a time, with transformers' DynamicCache(config=model.config) (a
            sliding-window cache for hf-sdpa-sliding; this library swaps in its bounded cache for sliding).
            Tokens/s, cache bytes (the cached key/value tensors) and peak memory over each stretch.
Times: the median of up to --repeats runs after one untimed warm-up run (compiling, autotuning), each run
timed with CUDA events after the device is drained; runs of a second or more are timed once. An out-of-memory run is
recorded as OOM (and longer lengths of that row are not tried); rows expected to take longer than
--max-run-s a run (extrapolated from shorter lengths) are skipped and say so.

Checks, before anything is timed: each configuration's output on a short input is compared with an fp32
run of its reference: hf-sdpa at --check-tokens (below every window, so sliding is exact there); on
Llama also sliding against hf-sdpa-sliding beyond the window, and for generation teacher-forced decode
steps after a prompt longer than the window. Exact configurations must be no further from the fp32
output than TOLERANCE x the reference's own distance from it in the run's dtype (+ 1e-3); one that fails is not timed
(--time-failed times it anyway). Approximate ones report their difference. Calls that fell back from the
fused kernels to the reference path are reported.

Budget: the default run is planned for about 7 minutes on a fresh H100 (an estimate, not yet measured):
~1.5 min (at most --warm-timeout) compiling kernels (Triton and FlexAttention, in parallel child processes
that fill the on-disk caches before the main run), ~40 s of checks, then in priority order Llama prefill
(~70 s), generation (~60 s), Llama training (~55 s), Whisper and ViT prefill (~40 s), their training
(~40 s). --time-budget (default 400 s from the start) stops starting new measurements: what was not run
says "skipped (time budget)", a row's first length is only started with FIRST_RUN_S left (compiling),
and the generation loop stops at its next point, so the run ends within about 8 minutes, outputs written.

Partial runs: one GPU call is limited to 10 minutes, so a full table takes several runs, each merged with
the results of the ones before:
    python benchmarks/end_to_end.py --out /tmp/e2e --models llama --modes train \
        --merge benchmarks/results/h100-archive-2026-12/end_to_end-h100.json
--modes (default prefill,train,generate) picks the measurements; they run in the priority order above,
whatever the order given (--skip-train and --skip-generation take one out). The checks always run: they
decide what is timed. --merge PATH takes an earlier end_to_end.json; an entry is the same measurement in
both runs when these agree: rows model, config, mode and tokens; generation config and prompt; checks
model, config, reference, mode and tokens. The earlier entries this run did not have are kept, each with
"run": the date of its run; so are those that tell more than this run's: a measurement where this run
failed or skipped, a failure (OOM) where it skipped. A redone check always replaces. The JSON, Markdown and
plots are written from the merged results after every measurement; in the Markdown, kept entries carry
a mark (†, ‡, ...) explained under the header, which lists the runs merged. Merging is refused when the
earlier run differs in device, dtype, --tiny, --no-checkpointing, --window, --encoder-window or
--llama-path: its numbers would not compare.

The pieces live in benchmarks/whole_model/ (the models, the checks, each measurement, the report) on the
shared benchmarks/harness/; this file runs them in order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.compiling import allow_recompiles  # noqa: E402
from benchmarks.harness.environment import command_line, device_name, timestamp, versions  # noqa: E402
from benchmarks.whole_model import FAMILIES  # noqa: E402
from benchmarks.whole_model.budget import Budget  # noqa: E402
from benchmarks.whole_model.checks import decode_checks, prefill_checks  # noqa: E402
from benchmarks.whole_model.cli import DTYPES, chosen_generation_rows, chosen_rows, parse  # noqa: E402
from benchmarks.whole_model.family import Family  # noqa: E402
from benchmarks.whole_model.generation import generate_row  # noqa: E402
from benchmarks.whole_model.merging import load_previous, merge_previous  # noqa: E402
from benchmarks.whole_model.plots import write_plots  # noqa: E402
from benchmarks.whole_model.prefill_train import measure_row  # noqa: E402
from benchmarks.whole_model.report import cell, write_outputs  # noqa: E402
from benchmarks.whole_model.rows import BASELINE, CONFIGS, DECODE_REFERENCE, ConfigSpec, variant_options  # noqa: E402
from benchmarks.whole_model.warmup import warm_all, warm_child, warm_specs  # noqa: E402

STARTED = time.time()
"""The time budget counts from here (after importing torch and this library, ~10 s on a fresh machine)."""


def environment(args: argparse.Namespace, device: torch.device, argv: list[str]) -> dict[str, Any]:
    """The env header of the results; device_name and dtype must match for --merge."""
    return {"device_name": device_name(device), "device": str(device),
            **versions("torch", "transformers", "cuda", "python", "triton"), "dtype": args.dtype,
            "date": timestamp(), "command": command_line("end_to_end.py", argv)}


def describe_rows(family: Family, specs: list[ConfigSpec]) -> dict[str, dict[str, Any]]:
    """What results["configs"] records of each row on ``family``."""
    return {spec.name: {"summary": spec.summary, "exact": spec.exact,
                        "options": variant_options(spec.name, family) if spec.variant else {}} for spec in specs}


def describe_family(family: Family) -> dict[str, Any]:
    """What results["families"] records of ``family``: its title, size and inputs."""
    return {"title": family.title, "length_flag": family.length_flag,
            "params": sum(p.numel() for p in family.build(family.lengths[0]).parameters()),
            "inputs": {family.tokens(n): family.describe(n) for n in family.lengths}}


def phases(families: list[Family], modes: list[str]) -> list[tuple[Family, str]]:
    """The measurements in priority order: all of Llama (the issue's targets), then the encoders' prefill,
    then their training."""
    by_name = {family.name: family for family in families}
    order = [(by_name["llama"], mode) for mode in ("prefill", "generate", "train")
             if mode in modes and "llama" in by_name]
    return order + [(f, mode) for mode in ("prefill", "train") if mode in modes for f in families if f.name != "llama"]


def main(argv: list[str] | None = None) -> dict:
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv, __doc__)
    if args.warm_child:
        warm_child(args, args.warm_child)
        return {}
    device = torch.device(args.device)
    budget = Budget(args.time_budget, args.max_run_s, start=STARTED if argv_given is None else time.time())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = chosen_rows(args, device)
    if "hf-flex" in names:
        allow_recompiles()
    gen_names = chosen_generation_rows(args)
    families = []
    for name in args.models.split(","):
        if name not in FAMILIES:
            raise SystemExit(f"--models: unknown {name!r}; choose among {', '.join(FAMILIES)}")
        families.append(FAMILIES[name](args, device, DTYPES[args.dtype]))

    env = environment(args, device, argv)
    print(env, flush=True)
    results: dict[str, Any] = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "warm_child"},
                               "families": {}, "configs": {}, "checks": [], "rows": [], "generation": [],
                               "fallbacks": {}}
    previous = load_previous(args.merge, results) if args.merge else None
    fallbacks: dict[str, set[str]] = {}
    written = results

    def save(plots: bool = False) -> None:
        """Write this run's results, merged with --merge's when given."""
        nonlocal written
        results["fallbacks"] = {name: sorted(reasons) for name, reasons in fallbacks.items()}
        results["elapsed_s"] = round(budget.elapsed(), 1)
        written = merge_previous(results, previous) if previous else results
        write_outputs(written, out_dir, write_plots if plots else None)

    if device.type == "cuda" and not args.no_warm:
        specs = warm_specs(families, names)
        print(f"compiling kernels in {len(specs)} child processes", flush=True)
        warm_all(Path(__file__).resolve(), specs, argv, args.warm_timeout)
        print(f"warm-up done at {budget.elapsed():.0f}s", flush=True)

    failed: set[tuple[str, str, bool]] = set()
    rows_of: dict[str, list[ConfigSpec]] = {}

    def activate(family: Family) -> Family:
        for other in families:
            if other is not family:
                other.release()  # only this family's weights count in its peaks
        return family

    def timing_phase(family: Family, mode: str) -> None:
        lengths = [n for n in family.lengths if mode == "prefill" or family.tokens(n) <= args.train_max_tokens]
        for length in lengths:
            print(f"[{family.name} {mode} {family.describe(length)}] {budget.elapsed():.0f}s", flush=True)
            for spec in rows_of[family.name]:
                if (family.name, spec.name, False) in failed:
                    row = {"family": family.name, "config": spec.name, "mode": mode, "length": length,
                           "tokens": family.tokens(length), "status": "check failed"}
                else:
                    row = measure_row(family, spec, mode, length, args, budget, fallbacks)
                results["rows"].append(row)
                print(f"  {spec.name:16s} {cell(row)}", flush=True)
                save()

    def generation_phase(family: Family) -> None:
        print(f"[llama generate: {args.gen_prompt} prompt + {args.gen_new} new] {budget.elapsed():.0f}s", flush=True)
        for name in gen_names:
            if ("llama", name, True) in failed or ("llama", name, False) in failed:
                row = {"config": name, "prompt": args.gen_prompt, "new_tokens": args.gen_new,
                       "status": "check failed", "points": []}
            else:
                row = generate_row(family, CONFIGS[name], args, budget, fallbacks)
            results["generation"].append(row)
            print(f"  {name:16s} {row['status']} prefill {row.get('prefill_ms')} ms, "
                  + ", ".join(f"{p['generated']}: {p['tokens_per_s']} tok/s {p['cache_mib']} MiB" for p in row["points"]),
                  flush=True)
            save()

    try:
        for family in families:
            activate(family)
            specs = rows_of[family.name] = [CONFIGS[n] for n in names if family.name in CONFIGS[n].families]
            results["configs"][family.name] = describe_rows(family, specs)
            print(f"[{family.name}] checks at {budget.elapsed():.0f}s", flush=True)
            baseline = [] if BASELINE in {spec.name for spec in specs} else [CONFIGS[BASELINE]]
            checks = prefill_checks(family, baseline + specs, fallbacks)
            if family.name == "llama" and "generate" in args.modes:
                checks += decode_checks(family, [n for n in gen_names if n in DECODE_REFERENCE], fallbacks)
            results["checks"] += checks
            if not args.time_failed:
                failed |= {(family.name, c["config"], c["mode"] == "decode") for c in checks
                           if c["status"] not in ("ok", "approximate")}
            results["families"][family.name] = describe_family(family)
            save()
        for family, mode in phases(families, args.modes):
            activate(family)
            if mode == "generate":
                generation_phase(family)
            else:
                timing_phase(family, mode)
    finally:
        save(plots=True)
    print((out_dir / "end_to_end.md").read_text())
    return written


if __name__ == "__main__":
    main()
