"""Native sizes: patched models against the unpatched one where models are run every day.

Rows (GPU): ViT-B/16 at 224 px (batch 64), the Whisper-large-v3 encoder at 1500 positions (batch 4),
Llama-3.2-1B shapes prefilling 2k and 4k tokens, the same prefilling 32k and 128k tokens (for peak
memory), and greedy decoding after 4k and 32k prompts at batch 1 and 16, eager (growing cache) and
compiled (``cache_implementation="static"``, which transformers compiles itself), and eager decoding over
lengths never seen before in the process, and a 2k prefill the same way ("new lengths": every
generation or forward starts from a prompt length of its own, so SDPA's cuDNN backend meets a new shape
at every call, as it does when a server takes a prompt of a length it has not seen; no exactness check
there, each call having its own input).
Columns: transformers'
``sdpa`` (the baseline), ``flex_attention``, its own sliding window (Llama: the same weights as a Mistral
model with ``sliding_window``), and ours: ``flash``, ``sliding`` and ``sparse``. Random weights of the real
shapes, bfloat16, one process. Forward times are CUDA-event timings taken in interleaved rounds (every
column a few calls per round), so that drifts of clocks and temperature fall on every column alike; a
cell is the fastest of them, as a busy host or a neighbour on a shared machine only ever adds time. A
decoding rate is one over the median time between two steps of a generation; eager rows take the best
of such rates over interleaved rounds, compiled rows the best of generations in a row.

    python benchmarks/native.py --out benchmarks/results/native-h200          # a GPU
    python benchmarks/native.py --cpu --out benchmarks/results/native-cpu     # the CPU: SmolLM2-135M shapes

Each cell is checked: exact columns (``flash``, and ``sliding``/``sparse`` where they cover the input) must
give the baseline's output (forward rows) or tokens (decoding rows). The targets are printed at the end:
every cell of ours within 1.05x of ``sdpa`` in the same mode (1.10x on the CPU), ``sliding`` decoding after
32k at least 1.3x ``sdpa`` and at least transformers' own sliding window, and peak memory of ours at most
``sdpa``'s.
"""


from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, where it is not installed

from benchmarks.native_sizes import measuring  # noqa: E402
from benchmarks.native_sizes.measuring import (  # noqa: E402
    attempt,
    check_forward,
    decode_rate,
    fastest,
    interleaved_decode_rounds,
    interleaved_rounds,
    measure_decode,
    time_forward_round,
)
from benchmarks.native_sizes.models import build, options, prompt_length  # noqa: E402
from benchmarks.native_sizes.report import earlier_cells, environment, markdown, merge, save, targets  # noqa: E402
from benchmarks.native_sizes.rows import COLUMNS, SPARSE, Row, cpu_rows, gpu_rows  # noqa: E402

__all__ = ["SPARSE", "Row", "build", "check_forward", "decode_rate", "fastest", "interleaved_decode_rounds",
           "measure_decode", "measuring", "merge", "options", "prompt_length", "targets", "time_forward_round"]


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if args.cpu else torch.bfloat16
    rows = cpu_rows() if args.cpu else gpu_rows()
    if args.rows:
        rows = [row for row in rows if any(part in row.name for part in args.rows)]
    columns = [c for c in COLUMNS if not args.columns or c in args.columns]
    deadline = time.time() + args.time_budget
    results = {"env": environment(device, dtype), "command": args.command, "rows": []}
    models: dict[str, nn.Module] = {}
    previous = earlier_cells(args.keep, results["env"]) if args.keep else {}
    for row in rows:
        model = models.get(row.family)
        if model is None:
            models.clear()
            torch.cuda.empty_cache() if device.type == "cuda" else None
            model = models[row.family] = build(row.family, args.cpu, dtype, device)
        baseline: dict = {}
        entry = {"row": row.name, "kind": row.kind, "cells": {}}
        for column in columns:
            if column == "hf-sliding" and row.family != "llama":
                continue
            if (row.name, column) in previous:
                entry["cells"][column] = previous[(row.name, column)]
                continue
            if column == "flex_attention" and row.kind == "decode" and not row.compiled:
                entry["cells"][column] = {"status": "not run (recompiles at every step of a growing cache)"}
                continue
            if time.time() > deadline:
                entry["cells"][column] = {"status": "skipped (time budget)"}
                continue
            if row.kind == "decode":
                repeats = max(1, args.rounds) if row.compiled else 1
                cell = attempt(device, measure_decode, row, column, model, device, dtype, baseline, args.decode_steps,
                               repeats)
            else:
                cell = attempt(device, check_forward, row, column, model, device, dtype, baseline)
            entry["cells"][column] = cell
        if row.kind == "forward":
            interleaved_rounds(row, entry["cells"], model, device, dtype, args.rounds)
        if row.kind == "decode" and not row.compiled:
            interleaved_decode_rounds(row, entry["cells"], model, device, dtype, args.rounds, args.decode_steps)
        for column, cell in entry["cells"].items():
            fastest(cell)
            print(f"{row.name:55s} {column:15s} {json.dumps(cell)}", flush=True)
        results["rows"].append(entry)
        save(results, args.out)
    results["targets"] = targets(results, args.cpu)
    save(results, args.out)
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CPU mode: SmolLM2-135M, whisper-tiny and a small ViT")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/native"))
    parser.add_argument("--rows", nargs="*", help="run only rows whose name contains one of these")
    parser.add_argument("--columns", nargs="*", choices=COLUMNS, help="run only these columns")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds: interleaved for the forward and eager decoding rows, timed generations in a row per column for the compiled ones")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds; later cells are skipped")
    parser.add_argument("--merge", type=Path, nargs="+", help="measure nothing: merge these runs' native.json "
                        "(same device and versions, later runs win) into --out")
    parser.add_argument("--keep", type=Path, help="an earlier run's native.json: its cells are kept, not measured "
                        "again (same device and versions; the table marks them)")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/native.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    return args


def main(argv: list[str] | None = None) -> dict:
    warnings.filterwarnings("ignore", module="transformers")
    args = parse(argv)
    if args.merge:
        results = merge(args.merge, args.command)
        save(results, args.out)
    else:
        results = run(args)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
