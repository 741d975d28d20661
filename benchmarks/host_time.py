r"""Host time: what our attention path costs the CPU, per call and per model forward, against SDPA.

    python benchmarks/host_time.py --out benchmarks/results/host-time     # on a GPU, about a minute
    python benchmarks/host_time.py --out /tmp/host --device cpu --tiny     # the whole path on tiny models

At short lengths a GPU finishes attention faster than Python can ask for it, and a model runs at the
speed of its host code. Two measurements show how much of that is ours:

  calls    one attention call on a small input (batch 1, 8 heads, 256 tokens, head_dim 64), repeated
           without synchronising: the time per call until it returns (enqueue time) and per call with
           the GPU's work included. Ours is `fused_attention` forward, then forward + backward; the
           peers are torch's `scaled_dot_product_attention` (flash backend on CUDA).
  models   one forward of ViT-B/16 at 224 px (197 tokens) and Whisper-large-v3's encoder (1500
           positions), under no_grad, for HF sdpa and each of our fused variants: median wall time, the
           time until the forward returns, and the extra host time per layer against sdpa.
  profile  where the host time of one forward with `flash` goes: the functions with the most own time
           (cProfile), so the next cut is a measured one.

Writes host_time.json and host_time.md into --out.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.environment import device_name, timestamp, versions  # noqa: E402
from benchmarks.harness.markdown import table, versions_line  # noqa: E402
from benchmarks.harness.store import save_report  # noqa: E402
from benchmarks.harness.timing import synchronize  # noqa: E402
from benchmarks.whole_model import FAMILIES  # noqa: E402
from benchmarks.whole_model.cli import build_parser as whole_model_parser  # noqa: E402
from benchmarks.whole_model.family import Family  # noqa: E402
from benchmarks.whole_model.rows import CONFIGS  # noqa: E402
from benchmarks.whole_model.switching import configured  # noqa: E402
from hf_efficient_attn.kernels import fused_attention, supports  # noqa: E402

MODEL_ROWS = ("hf-sdpa", "flash", "sliding", "sparse")


def per_call(fn, device: torch.device, calls: int) -> dict[str, float]:
    """Microseconds per call: until the calls returned (host) and until the device finished (wall)."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    returned = time.perf_counter()
    synchronize(device)
    finished = time.perf_counter()
    return {"host_us": (returned - start) / calls * 1e6, "wall_us": (finished - start) / calls * 1e6}


def call_rows(device: torch.device, dtype: torch.dtype, tiny: bool) -> list[dict[str, Any]]:
    shape = (1, 2, 32, 32) if tiny else (1, 8, 256, 64)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype)
    scale = shape[-1] ** -0.5
    calls = 20 if tiny else 300

    def ours():
        return fused_attention(q, k, v, scale=scale, causal=True)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    rows = []
    for name, fn in (("ours fused_attention", ours), ("torch sdpa", sdpa)):
        if fn is ours and (reason := supports(q, k, v)):
            rows += [{"call": name, "pass": mode, "status": f"n/a: {reason}"} for mode in ("forward", "forward+backward")]
            continue
        with torch.no_grad():
            rows.append({"call": name, "pass": "forward", **per_call(fn, device, calls)})
        rows.append({"call": name, "pass": "forward+backward",
                     **per_call(lambda fn=fn: fn().backward(grad), device, calls)})
    return rows


def forward_times(model: torch.nn.Module, inputs: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median ms of one forward: until it returned (host) and until the device finished (wall)."""
    host, wall = [], []
    with torch.no_grad():
        model(**inputs)  # warm-up: compiling, autotuning, layouts
        synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            returned = time.perf_counter()
            synchronize(device)
            host.append(returned - start)
            wall.append(time.perf_counter() - start)
    return {"host_ms": statistics.median(host) * 1e3, "wall_ms": statistics.median(wall) * 1e3}


def families(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[tuple[Family, int]]:
    """ViT and Whisper's encoder as the whole-model benchmark builds them, each with its input size."""
    shapes = whole_model_parser().parse_args(["--out", str(args.out)] + (["--tiny"] if args.tiny else []))
    vit = FAMILIES["vit"](shapes, device, dtype)
    whisper = FAMILIES["whisper"](shapes, device, dtype)
    return [(vit, 16 if args.tiny else 224), (whisper, 16 if args.tiny else 1500)]


def layers_of(model: torch.nn.Module) -> int:
    config = model.config
    return getattr(config, "encoder_layers", None) or config.num_hidden_layers


def model_rows(args, device, dtype) -> tuple[list[dict[str, Any]], str]:
    rows, profile_text = [], ""
    for family, length in families(args, device, dtype):
        model = family.build(length)
        inputs = family.inputs(model, length)
        layers = layers_of(model)
        baseline = None
        for name in MODEL_ROWS:
            with configured(family, model, CONFIGS[name]) as target:
                times = forward_times(target, inputs, device, args.repeats)
                if name == "flash" and not profile_text:
                    profile_text = profile_forward(target, inputs, device, family.title)
            baseline = baseline or times
            extra = (times["host_ms"] - baseline["host_ms"]) / layers * 1e3
            rows.append({"model": family.title, "tokens": family.tokens(length), "layers": layers, "config": name,
                         **times, "extra_host_us_per_layer": extra})
            print(rows[-1], flush=True)
        family.release()
    return rows, profile_text


def profile_forward(model, inputs, device, title: str, top: int = 15) -> str:
    """The functions with the most own time, then ours and Triton's by cumulative time: the second view
    shows how a call's host time splits between our glue and Triton's launch machinery."""
    profiler = cProfile.Profile()
    with torch.no_grad():
        profiler.enable()
        for _ in range(5):
            model(**inputs)
        profiler.disable()
    synchronize(device)
    views = []
    for order, restriction, heading in (("tottime", (), "own time"),
                                        ("cumulative", ("hf_efficient_attn|triton",), "cumulative, ours and Triton's")):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(*restriction, top)
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        views.append(f"{title}, `flash`, 5 forwards (cProfile, {heading}):\n\n```\n" + "\n".join(lines[start:]) + "\n```\n")
    return "\n".join(views)


def markdown(results: dict) -> str:
    env = results["env"]
    calls = [[r["call"], r["pass"], f"{r['host_us']:.0f}", f"{r['wall_us']:.0f}"] if "status" not in r
             else [r["call"], r["pass"], r["status"], ""] for r in results["calls"]]
    models = [[r["model"], r["tokens"], r["config"], f"{r['host_ms']:.2f}", f"{r['wall_ms']:.2f}",
               f"{r['extra_host_us_per_layer']:.0f}"] for r in results["models"]]
    out = [f"# Host time: {env['device_name']}", "", f"{versions_line(env)}, {env['dtype']}, {env['date']}.", "",
           "## One attention call", "",
           *table(["call", "pass", "returned after (µs)", "finished after (µs)"], calls, align="llrr"),
           "", "## One model forward (no_grad)", "",
           *table(["model", "tokens", "config", "returned after (ms)", "finished after (ms)",
                   "extra host time per layer vs sdpa (µs)"], models, align="lrlrrr")]
    return "\n".join(out + ["", "## Where the host time goes", "", results["profile"]]) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for host_time.json and host_time.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and inputs: a quick run of the whole path")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per model row (default 20; tiny 3)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.tiny else 20)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    env = {"device_name": device_name(device), **versions("torch", "transformers"), "dtype": str(dtype).split(".")[-1],
           "date": timestamp(), **versions("triton")}
    models, profile = model_rows(args, device, dtype)
    results = {"env": env, "calls": call_rows(device, dtype, args.tiny), "models": models, "profile": profile}
    save_report(args.out, "host_time", results, markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
