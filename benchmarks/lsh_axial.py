"""Per-call time of `lsh` and `axial` against torch's SDPA, on the CPU or a GPU.

    python benchmarks/lsh_axial.py --out benchmarks/results/lsh-axial-cpu
    python benchmarks/lsh_axial.py --device cuda --dtype bfloat16 --batch 8 --out DIR

`lsh`: one causal attention call of SmolLM2's heads (9 query heads over 3 key/value heads of 64; Llama-1B's 32
over 8 with ``--llama-1b``) at each ``--lengths``, SDPA's causal kernel against `lsh` with chunks of 64, 1 and
4 rounds, without sink tokens and with 4 (its default in causal layers). `axial`: one bidirectional call of
ViT-B's heads (12 of 64) over a square patch grid and CLS at each ``--grids`` side, dense SDPA (what the
unpatched model runs, which is not axial), SDPA under axial's dense mask, `axial` as `dispatch` runs it (on
CUDA the block-layout kernels; the route is printed), `axial` on the chunked engine, and `sliding`'s 2-D
neighbourhood of window 3. Each figure is the best of ``--repeats`` calls after a warm-up (CUDA: the mean of
``--repeats`` calls between events); on CUDA the kernels' output is also compared with the chunked engine's in
float32.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_efficient_attn import dispatch
from hf_efficient_attn.context import AttentionContext
from hf_efficient_attn.variants import (
    AxialAttention,
    AxialOptions,
    LayerInfo,
    LSHAttention,
    LSHOptions,
    Role,
    SlidingOptions,
    SlidingWindowAttention,
)

LSH_COLUMNS = ((1, 0), (1, 4), (4, 0), (4, 4))
"""(rounds, sink tokens) of each timed `lsh` configuration."""


def call_context(length: int, causal: bool, device: torch.device) -> AttentionContext:
    """A plain call: positions ``0..length-1``, no padding."""
    positions = torch.arange(length, device=device)
    return AttentionContext(query_positions=positions, key_positions=positions, key_padding=None, sequence_start=None,
                            query_documents=None, key_documents=None, dense_mask=None, causal=causal, scaling=0.125,
                            dropout=0.0, native_window=None)


def milliseconds(run: Callable[..., object], arguments: tuple, device: torch.device, repeats: int, **keywords) -> float:
    """Time of ``run(*arguments, **keywords)`` after one warm-up call."""
    run(*arguments, **keywords)
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            run(*arguments, **keywords)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run(*arguments, **keywords)
        times.append(time.perf_counter() - began)
    return min(times) * 1e3


def axial_mask(side: int, heads: int, device: torch.device) -> torch.Tensor:
    """Bool ``[1, heads, n, n]``: rows for the first half of the heads, columns for the rest, CLS global."""
    length = 1 + side * side
    cells = (torch.arange(length, device=device) - 1).clamp(min=0)
    row, column = cells // side, cells % side
    prefix = torch.arange(length, device=device) < 1
    global_pairs = prefix[:, None] | prefix[None, :]
    mask = torch.empty(1, heads, length, length, dtype=torch.bool, device=device)
    mask[0, : heads // 2] = (row[:, None] == row[None, :]) | global_pairs
    mask[0, heads // 2 :] = (column[:, None] == column[None, :]) | global_pairs
    return mask


def lsh_rows(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[str]:
    heads, kv_heads = (32, 8) if args.llama_1b else (9, 3)
    rows = [f"### `lsh`, causal, batch {args.batch}, {heads} query heads over {kv_heads}, head size 64, chunks of 64",
            "", "| tokens | SDPA causal (ms) | " + " | ".join(
                f"`lsh` {rounds} round{'s' * (rounds > 1)}, {sinks} sinks (ms)" for rounds, sinks in LSH_COLUMNS) + " |",
            "|---:|---:|" + "---:|" * len(LSH_COLUMNS)]
    generator = torch.Generator(device=device).manual_seed(0)
    for length in args.lengths:
        query = torch.randn(args.batch, heads, length, 64, generator=generator, device=device, dtype=dtype)
        key, value = (torch.randn(args.batch, kv_heads, length, 64, generator=generator, device=device, dtype=dtype)
                      for _ in range(2))
        context = call_context(length, True, device)
        sdpa = milliseconds(F.scaled_dot_product_attention, (query, key, value), device, args.repeats, is_causal=True,
                            enable_gqa=True)
        cells = [f"{sdpa:.2f}"]
        for rounds, sinks in LSH_COLUMNS:
            layer = LayerInfo(Role.CAUSAL, "decoder", 0, heads, kv_heads, 64, max_length=max(args.lengths))
            variant = LSHAttention(LSHOptions(num_hashes=rounds, bucket_size=64, sink_tokens=sinks), layer).to(device)
            cells.append(f"{milliseconds(variant, (query, key, value, context), device, args.repeats):.2f}")
        rows.append(f"| {length} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    return rows


def axial_rows(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[str]:
    rows = [f"### `axial`, batch {args.batch}, 12 heads of 64, a square grid and CLS", "",
            "| grid | tokens | route | dense SDPA, not axial (ms) | SDPA under axial's mask (ms) | `axial` (ms) | "
            "`axial` chunked engine (ms) | `sliding` 2-D window 3 (ms) | max abs diff to the chunked engine |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    generator = torch.Generator(device=device).manual_seed(1)
    for side in args.grids:
        length = 1 + side * side
        layer = LayerInfo(Role.BIDIRECTIONAL, "encoder", 0, 12, 12, 64, sequence_length=length, grid=(side, side),
                          prefix_tokens=1)
        query, key, value = (torch.randn(args.batch, 12, length, 64, generator=generator, device=device, dtype=dtype)
                             for _ in range(3))
        context = call_context(length, False, device)
        fused = AxialAttention(AxialOptions(), layer).to(device)
        chunked = AxialAttention(AxialOptions(backend="reference"), layer).to(device)
        sliding = SlidingWindowAttention(SlidingOptions(window=3, neighbourhood="2d"), layer).to(device)
        route, _ = dispatch.choose(query[:, :6], key[:, :6], value[:, :6], context, "auto",
                                   fused.row_lines.kernel_mask(), "axial", True)
        fused_plan, chunked_plan, sliding_plan = (variant.plan(query, key, value, context)
                                                  for variant in (fused, chunked, sliding))
        exact = chunked_plan(query.float(), key.float(), value.float())
        difference = (fused_plan(query, key, value).float() - exact).abs().max().item()
        mask = axial_mask(side, 12, device)
        inputs = (query, key, value)
        cells = [milliseconds(F.scaled_dot_product_attention, inputs, device, args.repeats, scale=0.125),
                 milliseconds(F.scaled_dot_product_attention, inputs, device, args.repeats, attn_mask=mask, scale=0.125),
                 *(milliseconds(plan, inputs, device, args.repeats) for plan in (fused_plan, chunked_plan, sliding_plan))]
        rows.append(f"| {side} × {side} | {length} | {route} | {' | '.join(f'{cell:.2f}' for cell in cells)} | "
                    f"{difference:.2g} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--grids", type=int, nargs="+", default=[14, 32, 64])
    parser.add_argument("--llama-1b", action="store_true", help="Llama-1B's heads (32 over 8) for lsh")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 is steadier on a shared host")
    parser.add_argument("--out", type=Path, help="folder for lsh_axial.md")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} thread{'s' * (threads != 1)}"
    header = [f"# `lsh` and `axial` per call: {name}, {args.dtype}, torch {torch.__version__}", ""]
    print("\n".join(header), flush=True)
    with torch.no_grad():
        text = header + lsh_rows(args, device, dtype) + [""] + axial_rows(args, device, dtype)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lsh_axial.md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
