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
* ``recomputation``: the unpatched model's strided perplexity over the same tokens, in windows of the
  first ``--windows`` value every quarter window (each token given 3/4 to all of a window of context,
  recomputed): StreamingLLM's "sliding window with re-computation" baseline.

The table gives perplexity over the whole stream and per ``--stretch`` tokens, the cache held (tokens),
tokens/s and the device's peak memory; the target line compares every stretch of ``sliding`` with 4
sinks against the recomputation (within 10%). Writes streaming.json, streaming.md and streaming.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def row(name: str, result: StreamingResult, stretch: int, positions: str) -> dict[str, Any]:
    peak = result.peak_bytes
    return {
        "row": name, "positions": positions, "tokens": result.tokens, "perplexity": result.perplexity,
        "stretches": result.stretch_perplexities(stretch), "tokens_per_s": result.tokens_per_second,
        "held_tokens": max(result.held_tokens) if result.held_tokens else None,
        "peak_gib": None if peak is None else round(peak / 2**30, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    model_dir, data_dir = args.model, args.data
    if model_dir is None or data_dir is None:
        from hf_efficient_attn.assets import asset_path

        model_dir = model_dir or asset_path("smollm2-135m")
        data_dir = data_dir or asset_path("text-en")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    texts = [path.read_text() for path in sorted(Path(data_dir).glob("*.txt"))]
    ids = torch.tensor(tokenizer("\n\n".join(texts))["input_ids"][: args.tokens])
    progress = not args.no_progress
    print(f"{ids.numel()} tokens of {data_dir}; {model_dir} on {device} in {args.dtype}", flush=True)
    rows: list[dict[str, Any]] = []

    def stream(name: str, tokens: torch.Tensor, positions: str) -> None:
        result = streaming_perplexity(model, tokens, args.chunk_size, positions, progress)
        rows.append(row(name, result, args.stretch, positions))
        print(json.dumps(rows[-1]), flush=True)

    stream("unpatched", ids[: args.baseline_tokens], "text")
    for window in args.windows:
        for sinks in args.sinks:
            patch_model(model, "sliding", window=window, sink_tokens=sinks)
            stream(f"sliding {window}, {sinks} sinks", ids, "cache")
            if window == args.windows[0] and sinks == args.text_positions_sinks:
                stream(f"sliding {window}, {sinks} sinks", ids, "text")
            unpatch_model(model)
    start = time.perf_counter()
    nll = recomputed_token_nll(model, ids.to(device), args.windows[0], progress)
    recomputed = StreamingResult(token_nll=nll, chunk_size=args.windows[0], seconds=time.perf_counter() - start)
    rows.append(row(f"recomputation {args.windows[0]}", recomputed, args.stretch, "text"))
    print(json.dumps(rows[-1]), flush=True)
    return {"env": environment(device, args.dtype), "command": "python benchmarks/streaming.py " + " ".join(sys.argv[1:]),
            "stretch": args.stretch, "rows": rows, "targets": targets(rows, args.windows[0])}


def environment(device: torch.device, dtype: str) -> dict[str, str]:
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__, "dtype": dtype}


def targets(rows: list[dict[str, Any]], window: int) -> list[str]:
    """Every stretch of ``sliding`` with 4 sinks (cache positions) within 10% of the recomputation's."""
    by_name = {(entry["row"], entry["positions"]): entry for entry in rows}
    reference = by_name.get((f"recomputation {window}", "text"))
    lines = []
    for (name, positions), entry in by_name.items():
        if positions != "cache" or not name.endswith(f", {TARGET_SINKS} sinks") or reference is None:
            continue
        ratios = [ours / theirs for ours, theirs in zip(entry["stretches"], reference["stretches"], strict=False)]
        worst = max(ratios)
        verdict = "PASS" if worst <= TARGET_RATIO else "MISS"
        lines.append(f"{verdict} {name}: every stretch within {worst:.3f}x the recomputation's perplexity "
                     f"(target <= {TARGET_RATIO:.2f}x)")
    return lines


def markdown(results: dict[str, Any]) -> str:
    env = results["env"]
    stretch = results["stretch"]
    count = max(len(entry["stretches"]) for entry in results["rows"])
    header = ["row", "positions", "tokens", "perplexity", "cache held", "tokens/s", "peak GiB"]
    header += [f"{k * stretch // 1024}k-{(k + 1) * stretch // 1024}k" for k in range(count)]
    lines = [f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}, {env['dtype']}; "
             f"`{results['command']}`", "", "Perplexity (lower is better) over the stream and per stretch of "
             f"{stretch} tokens.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in results["rows"]:
        cells = [entry["row"], entry["positions"], str(entry["tokens"]), f"{entry['perplexity']:.2f}",
                 "" if entry["held_tokens"] is None else str(entry["held_tokens"]), f"{entry['tokens_per_s']:.0f}",
                 "" if entry["peak_gib"] is None else f"{entry['peak_gib']:.2f}"]
        cells += [f"{value:.2f}" for value in entry["stretches"]] + [""] * (count - len(entry["stretches"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets:", ""] + [f"- {line}" for line in results["targets"]]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    stretch = results["stretch"]
    for entry in results["rows"]:
        ends = [min((k + 1) * stretch, entry["tokens"]) for k in range(len(entry["stretches"]))]
        style = {"color": "black", "linewidth": 2} if entry["row"].startswith("unpatched") else {}
        if entry["row"].startswith("recomputation"):
            style = {"color": "grey", "linestyle": "--"}
        axes.plot(ends, entry["stretches"], marker="o", markersize=2, label=f"{entry['row']} ({entry['positions']})",
                  **style)
    axes.axvline(8192, color="red", alpha=0.3, linestyle=":")
    axes.set_xlabel("position in the stream (tokens); red: the model's trained context")
    axes.set_ylabel(f"perplexity per {stretch} tokens")
    axes.set_yscale("log")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=120)


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
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.manual_seed(0)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "streaming.md").write_text(text)
    plot(results, args.out / "streaming.png")
    print(text)
    return results


if __name__ == "__main__":
    main()
