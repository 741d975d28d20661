"""Which kernel torch's SDPA runs at the sizes models are run at, against the ones it could run, and what a
new shape costs on each: what decides whether ``backend="auto"`` may send calls to cuDNN.

    python benchmarks/sdpa_backends.py --out benchmarks/results/sdpa-backends-h200   # on a GPU
    python benchmarks/sdpa_backends.py --out /tmp/sdpa --tiny                         # CPU smoke check

Section "shapes": attention calls of ViT-B/16 at 224 px (batch 64), Whisper-large-v3's encoder (1500
frames, batch 4) and Llama-3.2-1B prefill (2k, 4k, 8k; 32 query heads over 8 key/value heads) plus a
head_dim-128 prefill at 8k, bf16; and ViT's call under a 2-D window of 5 as SDPA's bool mask (does a fused
SDPA backend take that mask at dense speed?). Columns, forward and forward+backward (median ms of
triton.testing.do_bench):

  default      `F.scaled_dot_product_attention` as transformers calls it (the kernel torch picks is named);
  sdpa-cudnn   the same under ``sdpa_kernel([CUDNN_ATTENTION])``;
  sdpa-flash   the same under ``sdpa_kernel([FLASH_ATTENTION])`` (FlashAttention-2);
  ours-cudnn   our cuDNN backend (`backends.cudnn_sdpa`, the ``cudnn`` extra) where installed;
  ours         our Triton kernels (`kernels.fused_attention`).

Section "layout": Whisper-large-v3's encoder call under `native.py`'s block layout (the `sparse` column
there: 10 of its 12 block rows whole), inference, forward median ms and max abs error against float32
math under the layout's mask: the route the rule picks now (``auto``), the whole-rows split
(`layout_routes.plan_whole_rows`: SDPA without a mask over the whole rows, one masked call over the others),
one SDPA call under the layout's mask over every row, and dense SDPA without a mask (not exact: the
floor the split aims at); on a GPU also our kernel on a layout of every block and without a layout
(both not exact: the same work through its block-layout path and through its dense path). It decides
whether the split may run where the kernels do, and what the block-layout path costs beyond its work.

Section "new shapes": prompts of ``--lengths`` distinct lengths, causal at Llama-1B's heads, each length
seen once, and each column on lengths of its own (offset by two per column, so that no column meets a
shape another one has built: the SDPA columns share cuDNN's graph cache): per column the median of (first
call at a length - the same call once warm), which is what a request of a length not seen before pays
(cuDNN builds a graph per shape, Triton specialises per compile-time bucket), and the median warm time. Writes sdpa_backends.json and sdpa_backends.md into
--out.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.attention_calls import attention_pass  # noqa: E402
from benchmarks.harness.budget import SKIPPED, Deadline  # noqa: E402
from benchmarks.harness.checks import failure, max_abs_error  # noqa: E402
from benchmarks.harness.environment import command_line, device_name, timestamp, versions  # noqa: E402
from benchmarks.harness.markdown import table, versions_line  # noqa: E402
from benchmarks.harness.store import write_json  # noqa: E402
from benchmarks.harness.timing import call_ms, run_ms  # noqa: E402

COLUMNS = ("default", "sdpa-cudnn", "sdpa-flash", "ours-cudnn", "ours")


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    kv_heads: int
    tokens: int
    head_dim: int
    causal: bool
    grid_window: int = 0
    """A 2-D window over ViT's 14x14 patch grid (CLS seeing and seen by all) as SDPA's bool mask; 0: none."""

    def mask(self, device: torch.device) -> torch.Tensor | None:
        if not self.grid_window:
            return None
        cell = (torch.arange(self.tokens, device=device) - 1).clamp(min=0)
        rows, cols = cell // 14, cell % 14
        near = ((rows[:, None] - rows[None, :]).abs() < self.grid_window) & (
            (cols[:, None] - cols[None, :]).abs() < self.grid_window)
        cls = torch.arange(self.tokens, device=device) == 0
        return near | cls[:, None] | cls[None, :]


SHAPES = (
    Shape("ViT-B/16 224 px, batch 64", 64, 12, 12, 197, 64, False),
    Shape("ViT-B/16 224 px, 2-D window 5 as a mask", 64, 12, 12, 197, 64, False, grid_window=5),
    Shape("Whisper-large-v3 encoder, batch 4", 4, 20, 20, 1500, 64, False),
    Shape("Llama-1B prefill 2k", 1, 32, 8, 2048, 64, True),
    Shape("Llama-1B prefill 4k", 1, 32, 8, 4096, 64, True),
    Shape("Llama-1B prefill 8k", 1, 32, 8, 8192, 64, True),
    Shape("prefill 8k, head_dim 128", 1, 32, 8, 8192, 128, True),
)
TINY_SHAPES = (Shape("tiny bidirectional", 2, 4, 4, 40, 16, False), Shape("tiny 2-D window", 2, 4, 4, 197, 16, False, 3),
               Shape("tiny causal", 1, 4, 2, 48, 16, True))


def column_fn(column: str, shape: Shape, device: torch.device):
    """``(q, k, v) -> out`` for one column, or None where it cannot run here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    grouped = shape.heads != shape.kv_heads
    if column in ("default", "sdpa-cudnn", "sdpa-flash"):
        if column != "default" and device.type != "cuda":
            return None
        chosen = {"sdpa-cudnn": [SDPBackend.CUDNN_ATTENTION], "sdpa-flash": [SDPBackend.FLASH_ATTENTION]}.get(column)
        mask = shape.mask(device)

        def sdpa(q, k, v):
            if chosen is None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=shape.causal,
                                                      enable_gqa=grouped)
            with sdpa_kernel(chosen):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=shape.causal,
                                                      enable_gqa=grouped)

        return sdpa
    if device.type != "cuda" or shape.grid_window:  # ours on the 2-D window: benchmarks/neighbourhood.py
        return None
    if column == "ours-cudnn":
        from hf_efficient_attn.backends import cudnn_sdpa

        if not cudnn_sdpa.available():
            return None
        return lambda q, k, v: cudnn_sdpa.attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=shape.causal)
    from hf_efficient_attn.kernels import fused_attention

    return lambda q, k, v: fused_attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=shape.causal)


def inputs(shape: Shape, device: torch.device, dtype: torch.dtype, tokens: int | None = None, grad: bool = False):
    n = tokens or shape.tokens
    generator = torch.Generator(device=device).manual_seed(n)
    sizes = ((shape.batch, shape.heads, n, shape.head_dim), *[(shape.batch, shape.kv_heads, n, shape.head_dim)] * 2)
    return [torch.randn(size, device=device, dtype=dtype, generator=generator).requires_grad_(grad) for size in sizes]


def timed_ms(fn, device: torch.device, backward: bool, q, k, v, rep_ms: int) -> float:
    """Median ms of a warm call (`harness.timing.call_ms`)."""
    return call_ms(attention_pass(fn, q, k, v, backward), device, rep_ms, grad_to_none=(q, k, v) if backward else ())


def default_kernel(shape: Shape, device: torch.device, dtype: torch.dtype) -> str:
    """The GPU kernel that takes the most time in one default SDPA call (what torch picked)."""
    if device.type != "cuda":
        return "n/a (CPU)"
    from torch.profiler import ProfilerActivity, profile

    q, k, v = inputs(shape, device, dtype)
    fn = column_fn("default", shape, device)
    fn(q, k, v)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(q, k, v)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return max(events, key=lambda e: e.self_device_time_total).key[:80] if events else "none"


def error_against_float32(fn, shape: Shape, device: torch.device, dtype: torch.dtype) -> float:
    small = Shape(shape.name, 1, shape.heads, shape.kv_heads, min(shape.tokens, 256), shape.head_dim, shape.causal,
                  shape.grid_window)
    q, k, v = inputs(small, device, dtype)
    groups = shape.heads // shape.kv_heads
    mask = small.mask(device)
    expected = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(groups, 1),
                                              v.float().repeat_interleave(groups, 1), is_causal=shape.causal,
                                              attn_mask=None if mask is None else mask[: small.tokens, : small.tokens])
    return max_abs_error(fn(q, k, v), expected)


def run_shapes(shapes, device, dtype, rep_ms, deadline: Deadline) -> list[dict]:
    rows = []
    for shape in shapes:
        row = {"row": shape.name, "shape": shape.__dict__, "default_kernel": default_kernel(shape, device, dtype)}
        for column in COLUMNS:
            fn = column_fn(column, shape, device)
            if fn is None:
                row[column] = "n/a"
                continue
            if deadline.passed():
                row[column] = SKIPPED
                continue
            try:
                cell = {"error": error_against_float32(fn, shape, device, dtype)}
                for backward in (False, True):
                    q, k, v = inputs(shape, device, dtype, grad=backward)
                    cell["fwd_bwd_ms" if backward else "fwd_ms"] = timed_ms(fn, device, backward, q, k, v, rep_ms)
                row[column] = cell
            except Exception as exc:  # a backend that refuses this call: say so in the table
                row[column] = failure(exc)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def layout_routes(device: torch.device, dtype: torch.dtype, tiny: bool):
    """``{name: (q, k, v) -> out}`` for the Whisper call under `native.py`'s block layout, the float32
    reference of that call, and its inputs (see the module docstring)."""
    from benchmarks.native import SPARSE
    from hf_efficient_attn.context import build_context
    from hf_efficient_attn.layout_routes import plan_whole_rows
    from hf_efficient_attn.masked import plan_one_masked_call
    from hf_efficient_attn.variants import BlockSparseAttention, LayerInfo, Role, SparseOptions

    shape = TINY_SHAPES[0] if tiny else SHAPES[2]
    options = {**SPARSE, "block_size": 8, "local_blocks": 3} if tiny else SPARSE
    variant = BlockSparseAttention(SparseOptions(**options), LayerInfo(Role.BIDIRECTIONAL, "encoder", 0, shape.heads,
                                                                      shape.kv_heads, shape.head_dim)).to(device)
    q, k, v = inputs(shape, device, dtype)
    context = build_context(query=q, key=k, attention_mask=None, causal=False, scaling=shape.head_dim ** -0.5,
                            dropout=0.0, cache_window=None, position_ids=None, native_window=None)
    pattern = variant.kernel_mask(context)
    visible = variant.allowed(context, context.query_positions, context.key_positions)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=visible)
    routes = {
        "auto": variant.plan(q, k, v, context),
        "whole-rows split": plan_whole_rows(
            q, k, context, pattern, lambda q, k, c: plan_one_masked_call(q, k, c, rule=variant)),
        "one masked call": plan_one_masked_call(q, k, context, rule=variant),
        "dense SDPA (not exact)": F.scaled_dot_product_attention,
    }
    if device.type == "cuda":  # our kernel's block-layout path against its dense path, at the same work
        from hf_efficient_attn.kernels import fused_attention

        blocks = -(-shape.tokens // options["block_size"])
        every_block = torch.ones(1, blocks, blocks, dtype=torch.int8, device=device)
        scale = shape.head_dim ** -0.5
        routes["ours, every block (not exact)"] = lambda q, k, v: fused_attention(
            q, k, v, scale=scale, causal=False, block_layout=every_block, layout_block_size=options["block_size"])
        routes["ours, no layout (not exact)"] = lambda q, k, v: fused_attention(q, k, v, scale=scale, causal=False)
    return shape, routes, reference, (q, k, v)


def run_layout(device, dtype, rep_ms, tiny: bool) -> dict:
    shape, routes, reference, (q, k, v) = layout_routes(device, dtype, tiny)
    result = {"row": f"{shape.name} under native.py's sparse layout"}
    with torch.no_grad():
        for name, fn in routes.items():
            result[name] = {"fwd_ms": timed_ms(fn, device, False, q, k, v, rep_ms),
                            "error": float((fn(q, k, v).float() - reference).abs().max())}
            print(name, json.dumps(result[name]), flush=True)
    return result


def run_new_shapes(shape: Shape, lengths: list[int], device, dtype, deadline: Deadline) -> dict:
    result = {"shape": shape.__dict__, "lengths": lengths}
    with torch.no_grad():
        for offset, column in enumerate(COLUMNS):
            fn = column_fn(column, shape, device)
            if fn is None:
                result[column] = "n/a"
                continue
            excess, warm = [], []
            try:
                for n in (length + 2 * offset for length in lengths):
                    if deadline.passed():
                        break
                    q, k, v = inputs(shape, device, dtype, tokens=n)
                    call = functools.partial(fn, q, k, v)
                    first = run_ms(call, device)
                    again = min(run_ms(call, device) for _ in range(3))
                    excess.append(first - again)
                    warm.append(again)
            except Exception as exc:
                result[column] = failure(exc)
                continue
            result[column] = ({"lengths_timed": len(excess), "first_call_excess_ms": statistics.median(excess),
                               "max_excess_ms": max(excess), "warm_ms": statistics.median(warm)}
                              if excess else SKIPPED)
            print(column, json.dumps(result[column]), flush=True)
    return result


def fmt(cell, key: str) -> str:
    return f"{cell[key]:.3f}" if isinstance(cell, dict) else str(cell)


def write(results: dict, out_dir: Path) -> None:
    write_json(out_dir / "sdpa_backends.json", results)
    env = results["env"]
    shapes = [[row["row"], f"`{row['default_kernel']}`",
               *(f"{fmt(row[c], 'fwd_ms')} ({fmt(row[c], 'fwd_bwd_ms')})" if isinstance(row[c], dict) else row[c]
                 for c in COLUMNS)] for row in results["shapes"]]
    lines = [f"# SDPA backends at native sizes: {env['device']}", "",
             f"{versions_line(env, ('torch', 'cuda', 'cudnn'))}, {env['date']}, {env['dtype']}; "
             f"`{env['command']}`. Median ms, forward (forward+backward); err: max abs error of the forward "
             "against float32 math on the first 256 tokens.", "",
             *table(["row", "default kernel", *COLUMNS], shapes, align="ll" + "r" * len(COLUMNS))]
    errors = {f"{row['row']} / {c}": row[c]["error"] for row in results["shapes"] for c in COLUMNS
              if isinstance(row[c], dict)}
    lines += ["", "err: " + "; ".join(f"{name} {value:.1e}" for name, value in errors.items())]
    layout = results["layout"]
    names = [name for name in layout if name != "row"]
    lines += ["", f"Layout: {layout['row']}, inference, forward median ms (max abs error against float32 math "
              "under the layout's mask).", "",
              *table(names, [[f"{layout[n]['fwd_ms']:.3f} ({layout[n]['error']:.1e})" for n in names]],
                     align="r" * len(names))]
    new = results["new_shapes"]
    lines += ["", f"New shapes: {len(new['lengths'])} distinct lengths "
              f"{min(new['lengths'])}-{max(new['lengths'])}, causal, {new['shape']['heads']} heads over "
              f"{new['shape']['kv_heads']}, head_dim {new['shape']['head_dim']}, forward, no grad. Median ms.", "",
              *table(["column", "first call minus warm (median)", "(max)", "warm call"],
                     [[column, fmt(new[column], "first_call_excess_ms"), fmt(new[column], "max_excess_ms"),
                       fmt(new[column], "warm_ms")] for column in COLUMNS], align="lrrr")]
    (out_dir / "sdpa_backends.md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for sdpa_backends.json and sdpa_backends.md")
    parser.add_argument("--lengths", type=int, default=24, help="distinct prompt lengths in the new-shapes section")
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench's measuring time per cell")
    parser.add_argument("--budget-s", type=float, default=480, help="stop timing new cells after this long")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a smoke check)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.budget_s)
    env = {"device": device_name(device), **versions("torch", "cuda", "cudnn"), "date": timestamp(),
           "dtype": str(dtype), "command": command_line("sdpa_backends.py", sys.argv[1:] if argv is None else argv)}
    print(env, flush=True)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    results = {"env": env, "shapes": run_shapes(shapes, device, dtype, args.rep_ms, deadline)}
    results["layout"] = run_layout(device, dtype, args.rep_ms, args.tiny)
    prompt = next(shape for shape in shapes if shape.causal)
    top = 64 if args.tiny else 8192
    step = max(2 * len(COLUMNS), (top - top // 8) // args.lengths)  # wider than the columns' offsets
    lengths = [top // 8 + i * step + 1 for i in range(args.lengths)]  # odd, distinct: none seen before
    results["new_shapes"] = run_new_shapes(prompt, lengths, device, dtype, Deadline(args.budget_s + 120, deadline.start))
    write(results, out_dir)
    print((out_dir / "sdpa_backends.md").read_text())
    return results


if __name__ == "__main__":
    main()
