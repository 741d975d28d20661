r"""Streaming far past the trained context: perplexity against position, memory and speed, one run.

    python benchmarks/streaming.py --out benchmarks/results/streaming-cpu --tokens 65536 --baseline-tokens 16384
    python benchmarks/streaming.py --out DIR --tokens 1000000 --dtype bfloat16      # a GPU

A real model (default: the ``smollm2-135m`` asset, SmolLM2-135M trained to 8192 positions) reads one
long stream (default: the ``text-en`` asset, every document joined) chunk by chunk through its KV cache
(`eval.streaming`), every token scored once. Rows, in one process:

* ``unpatched``: transformers' growing cache and positions in the text, over the first
  ``--baseline-tokens`` (its cost grows with the square of the length); past the trained positions it
  degrades, which is the point of the comparison;
* ``sliding`` at each ``--windows`` with each ``--sinks`` count, keys placed inside the cache
  (StreamingLLM), and once with positions in the text (``--text-positions-sinks``);
* ``recomputation`` at each ``--windows`` value: the unpatched model's strided perplexity over the same
  tokens, in windows of that many tokens every quarter window (each token given 3/4 to all of a window
  of context, recomputed): StreamingLLM's "sliding window with re-computation" baseline.

The table gives perplexity over the whole stream and per ``--stretch`` tokens, the cache held (tokens),
tokens/s (and the slowest stretch's share of the fastest's: flat is 1.00) and the device's peak memory; a
second table gives every row over the first ``--baseline-tokens`` tokens per ``--early-stretch``, where
the unpatched model runs past its trained positions. The target lines compare every stretch of
``sliding`` with 4 sinks against the recomputation at the same window (within 10%).

Each row is saved to streaming.json as soon as it is measured; ``--resume`` keeps the rows an earlier
run with the same settings, device and versions saved in ``--out`` and measures only the rest, so a run
longer than one sitting finishes in several. Writes streaming.json, streaming.md and streaming.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import plots  # noqa: E402
from benchmarks.harness.environment import command_line, device_name, versions  # noqa: E402
from benchmarks.harness.markdown import table  # noqa: E402
from benchmarks.harness.memory import gib  # noqa: E402
from benchmarks.harness.store import write_json  # noqa: E402
from hf_efficient_attn import patch_model, unpatch_model  # noqa: E402
from hf_efficient_attn.eval.perplexity import scoring_windows  # noqa: E402
from hf_efficient_attn.eval.streaming import StreamingResult, streaming_perplexity  # noqa: E402

TARGET_SINKS = 4
TARGET_RATIO = 1.10


def recomputed_token_nll(model: torch.nn.Module, ids: torch.Tensor, window: int, progress: bool) -> torch.Tensor:
    """Per-token NLL of tokens ``1..n-1`` under strided evaluation with windows of ``window`` tokens every
    ``window // 4`` (each scored once, given what its window holds before it)."""
    pieces = []
    for part in scoring_windows(ids.numel(), window, window // 4):
        with torch.no_grad():
            logits = model(input_ids=ids[None, part.begin : part.end], use_cache=False).logits[0]
        start = part.first_target - part.begin
        pieces.append(F.cross_entropy(logits[start - 1 : -1].float(), ids[part.first_target : part.end], reduction="none"))
        if progress:
            print(f"\r  recomputation {part.end}/{ids.numel()}", end="", file=sys.stderr, flush=True)
    return torch.cat(pieces).cpu()


def row(name: str, result: StreamingResult, args: argparse.Namespace, positions: str) -> dict[str, Any]:
    peak = result.peak_bytes
    early = StreamingResult(token_nll=result.token_nll[: args.baseline_tokens - 1], chunk_size=result.chunk_size,
                            seconds=result.seconds)
    return {
        "row": name, "positions": positions, "tokens": result.tokens, "perplexity": result.perplexity,
        "stretches": result.stretch_perplexities(args.stretch), "tokens_per_s": result.tokens_per_second,
        "stretch_tokens_per_s": result.stretch_tokens_per_second(args.stretch),
        "early_stretches": early.stretch_perplexities(args.early_stretch),
        "held_tokens": max(result.held_tokens) if result.held_tokens else None,
        "peak_gib": gib(peak),
    }


class PlannedRow(NamedTuple):
    """A row to measure: its name and positions, the sliding window (None for the unpatched model) and
    sinks (None for the recomputation, which has a window but no sinks)."""

    name: str
    positions: str
    window: int | None = None
    sinks: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.positions


def planned_rows(args: argparse.Namespace) -> list[PlannedRow]:
    """Every row the run measures, in order."""
    rows = [PlannedRow("unpatched", "text")]
    for window in args.windows:
        for sinks in args.sinks:
            rows.append(PlannedRow(f"sliding {window}, {sinks} sinks", "cache", window, sinks))
            if window == args.windows[0] and sinks == args.text_positions_sinks:
                rows.append(PlannedRow(f"sliding {window}, {sinks} sinks", "text", window, sinks))
    return rows + [PlannedRow(f"recomputation {window}", "text", window) for window in args.windows]


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs' rows comparable (besides the device and versions)."""
    return {"model": str(args.model), "data": str(args.data), "tokens": args.tokens,
            "baseline_tokens": args.baseline_tokens, "chunk_size": args.chunk_size, "stretch": args.stretch,
            "early_stretch": args.early_stretch}


def kept_rows(args: argparse.Namespace, env: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """With ``--resume``: the rows an earlier run saved in ``--out`` with the same settings and env."""
    path = args.out / "streaming.json"
    if not args.resume or not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("env") != env or earlier.get("settings") != settings(args):
        print(f"--resume: {path} was measured with other settings or versions; measuring every row", flush=True)
        return {}
    return {(entry["row"], entry["positions"]): entry for entry in earlier["rows"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    if args.model is None or args.data is None:
        from hf_efficient_attn.assets import asset_path

        args.model = args.model or asset_path("smollm2-135m")
        args.data = args.data or asset_path("text-en")
    env = environment(device, args.dtype)
    kept = kept_rows(args, env)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
    texts = [path.read_text() for path in sorted(Path(args.data).glob("*.txt"))]
    ids = torch.tensor(tokenizer("\n\n".join(texts))["input_ids"][: args.tokens])
    progress = not args.no_progress
    print(f"{ids.numel()} tokens of {args.data}; {args.model} on {device} in {args.dtype}; "
          f"{len(kept)} rows kept from an earlier run", flush=True)
    results = {"env": env, "settings": settings(args), "stretch": args.stretch,
               "command": command_line("streaming.py", sys.argv[1:]), "rows": [], "targets": []}

    plan = planned_rows(args)
    results["kept_rows"] = sum(planned.key in kept for planned in plan)

    def record(entry: dict[str, Any]) -> None:
        results["rows"].append(entry)
        results["targets"] = targets(results["rows"], args.windows)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "streaming.json", results)
        print(json.dumps(entry), flush=True)

    for planned in plan:
        name, positions = planned.key
        if planned.key in kept:
            record(kept[planned.key])
        elif planned.window is None:
            result = streaming_perplexity(model, ids[: args.baseline_tokens], args.chunk_size, positions, progress)
            record(row(name, result, args, positions))
        elif planned.sinks is not None:
            patch_model(model, "sliding", window=planned.window, sink_tokens=planned.sinks)
            result = streaming_perplexity(model, ids, args.chunk_size, positions, progress)
            unpatch_model(model)
            record(row(name, result, args, positions))
        else:
            start = time.perf_counter()
            nll = recomputed_token_nll(model, ids.to(device), planned.window, progress)
            recomputed = StreamingResult(token_nll=nll, chunk_size=planned.window, seconds=time.perf_counter() - start)
            record(row(name, recomputed, args, positions))
    return results


def environment(device: torch.device, dtype: str) -> dict[str, object]:
    """What --resume compares: the device, the versions and the dtype."""
    return {"device": device_name(device), **versions("torch", "transformers"), "dtype": dtype}


def targets(rows: list[dict[str, Any]], windows: list[int]) -> list[str]:
    """Every stretch of ``sliding`` with 4 sinks (cache positions) within 10% of the recomputation's at
    the same window."""
    by_name = {(entry["row"], entry["positions"]): entry for entry in rows}
    lines = []
    for window in windows:
        ours = by_name.get((f"sliding {window}, {TARGET_SINKS} sinks", "cache"))
        reference = by_name.get((f"recomputation {window}", "text"))
        if ours is None or reference is None:
            continue
        worst = max(a / b for a, b in zip(ours["stretches"], reference["stretches"], strict=False))
        verdict = "PASS" if worst <= TARGET_RATIO else "MISS"
        lines.append(f"{verdict} sliding {window}, {TARGET_SINKS} sinks: every stretch within {worst:.3f}x the "
                     f"recomputation's perplexity at window {window} (target <= {TARGET_RATIO:.2f}x)")
    return lines


def tokens_label(count: int) -> str:
    """A token count for a column header: 8192 -> 8k, 100000 -> 100k, else the number."""
    for unit in (1024, 1000):
        if count and count % unit == 0:
            return f"{count // unit}k"
    return str(count)


def spread(rates: list[float]) -> str:
    """The slowest stretch's tokens/s as a share of the fastest's (the last, partial stretch left out)."""
    whole = rates[:-1] if len(rates) > 2 else rates
    return f"{min(whole) / max(whole):.2f}" if whole else ""


def markdown(results: dict[str, Any]) -> str:
    env = results["env"]
    stretch = results["stretch"]
    rows = results["rows"]
    count = max(len(entry["stretches"]) for entry in rows)
    header = ["row", "positions", "tokens", "perplexity", "cache held", "tokens/s", "slowest/fastest stretch",
              "peak GiB"]
    header += [f"{tokens_label(k * stretch)}-{tokens_label((k + 1) * stretch)}" for k in range(count)]
    body = []
    for entry in rows:
        cells = [entry["row"], entry["positions"], str(entry["tokens"]), f"{entry['perplexity']:.2f}",
                 "" if entry["held_tokens"] is None else str(entry["held_tokens"]), f"{entry['tokens_per_s']:.0f}",
                 spread(entry.get("stretch_tokens_per_s", [])),
                 "" if entry["peak_gib"] is None else f"{entry['peak_gib']:.2f}"]
        body.append(cells + [f"{value:.2f}" for value in entry["stretches"]] + [""] * (count - len(entry["stretches"])))
    lines = [f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}, {env['dtype']}; "
             f"`{results['command']}`" + (f" ({results['kept_rows']} rows kept from an earlier run with the same "
                                           "settings, `--resume`)" if results.get("kept_rows") else ""),
             "", "Perplexity (lower is better) over the stream and per stretch of "
             f"{stretch} tokens.", "", *table(header, body)]
    early = results["settings"]["early_stretch"]
    first = results["settings"]["baseline_tokens"]
    early_count = max(len(entry["early_stretches"]) for entry in rows)
    early_body = [[entry["row"], entry["positions"], *(f"{value:.2f}" for value in entry["early_stretches"]),
                   *([""] * (early_count - len(entry["early_stretches"])))] for entry in rows]
    lines += ["", f"The first {first} tokens, per stretch of {early} (the model was trained to 8192 positions):", "",
              *table(["row", "positions", *(f"{tokens_label(k * early)}-{tokens_label((k + 1) * early)}"
                                            for k in range(early_count))], early_body, align="ll" + "r" * early_count)]
    lines += ["", "Targets:", ""] + [f"- {line}" for line in results["targets"]]
    return "\n".join(lines) + "\n"


def line_style(label: str) -> dict[str, Any]:
    """The unpatched model bold black, the recomputation grey and dashed, the sliding rows in colour."""
    if label.startswith("unpatched"):
        return {"color": "black", "linewidth": 2, "markersize": 2}
    if label.startswith("recomputation"):
        return {"color": "grey", "linestyle": "--", "markersize": 2}
    return {"markersize": 2}


def plot(results: dict[str, Any], path: Path) -> None:
    """Perplexity per stretch against the position in the stream, a line per row (log scale)."""
    stretch = results["stretch"]
    curves = {f"{entry['row']} ({entry['positions']})":
              [(min((k + 1) * stretch, entry["tokens"]), value) for k, value in enumerate(entry["stretches"])]
              for entry in results["rows"]}
    fig, [[axes]] = plots.figure(size=(8, 5))
    plots.draw(axes, curves, "position in the stream (tokens); red: the model's trained context",
               f"perplexity per {stretch} tokens", log_x=False, style=line_style, legend_size=7)
    axes.axvline(8192, color="red", alpha=0.3, linestyle=":")
    plots.save(fig, path, dpi=120)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="checkpoint folder (default: the smollm2-135m asset)")
    parser.add_argument("--data", help="folder of .txt documents (default: the text-en asset)")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--baseline-tokens", type=int, default=16384)
    parser.add_argument("--windows", type=int, nargs="+", default=[1024])
    parser.add_argument("--sinks", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--text-positions-sinks", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--stretch", type=int, default=8192)
    parser.add_argument("--early-stretch", type=int, default=4096,
                        help="tokens per stretch of the table over the first --baseline-tokens (default 4096)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows an earlier run with the same settings saved in --out")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.manual_seed(0)
    results = run(args)
    text = markdown(results)
    (args.out / "streaming.md").write_text(text)
    plot(results, args.out / "streaming.png")
    print(text)
    return results


if __name__ == "__main__":
    main()
