r"""Benchmark the fused 2-D neighbourhood kernel against dense SDPA, masked SDPA and FlexAttention.

    python benchmarks/neighbourhood.py --out benchmarks/results/neighbourhood-h200   # on a GPU
    python benchmarks/neighbourhood.py --out /tmp/nbhd --tiny                         # CPU smoke check (interpreter)

ViT-B/16 attention shapes: 12 heads of 64, batch 8, one CLS token before the patch grid; grids 64x64 (1024 px,
4097 tokens) and 128x128 (2048 px, 16385 tokens); windows 5 and 9 (reach 4 and 8: cells within 4 or 8 rows
and columns see each other; the CLS sees and is seen by all). bf16. Columns, forward and forward+backward:

  sdpa dense   torch's scaled_dot_product_attention with no mask: the FLOP baseline;
  sdpa mask    the same under the dense boolean [N, N] mask of the pattern;
  flex         FlexAttention with a mask_mod of the pattern and its block mask, compiled;
  ours         `kernels.neighbourhood_attention`.

Times are medians of triton.testing.do_bench (CUDA events, after warm-up). ``pairs`` is the exact count of
visible (query, key) pairs, ``share`` = pairs / N^2, ``share ms`` = share x dense SDPA's time (the time a
kernel as efficient per visible pair as dense SDPA would take) and ``ours / share`` our time over that (the
target is <= 2.0). ``err`` is the largest absolute error of our output against float32 math on a slice of
the queries; before timing, the gradients are checked the same way on a small grid. Writes
neighbourhood.json and neighbourhood.md into --out; rows are written as they finish.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--tiny" in sys.argv:  # the kernels run in Triton's interpreter on the CPU: set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.attention_calls import timed_call  # noqa: E402
from benchmarks.harness.budget import Deadline  # noqa: E402
from benchmarks.harness.checks import gradient_errors, max_abs_error  # noqa: E402
from benchmarks.harness.environment import command_line, device_name, timestamp, versions  # noqa: E402
from benchmarks.harness.markdown import table, versions_line  # noqa: E402
from benchmarks.harness.store import write_json  # noqa: E402
from benchmarks.kernel_peers import compiled_flex_attention  # noqa: E402


class Pattern:
    """``prefix`` tokens, then a ``rows`` x ``cols`` grid; cells within ``reach`` see each other, keys < ``leading``
    are seen by all, queries < ``global_queries`` see all (`kernels.neighbourhood_attention`'s terms)."""

    def __init__(self, rows: int, cols: int, window: int, prefix: int):
        self.rows, self.cols, self.window, self.prefix = rows, cols, window, prefix
        self.reach = window - 1
        self.leading = self.global_queries = prefix
        self.n = prefix + rows * cols

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.cols}"

    def near(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """Whether query ``q_idx`` and key ``kv_idx`` (broadcasting index tensors) are cells within reach."""
        qc, kc = q_idx - self.prefix, kv_idx - self.prefix
        return ((qc >= 0) & (kc >= 0) & ((qc // self.cols - kc // self.cols).abs() <= self.reach)
                & ((qc % self.cols - kc % self.cols).abs() <= self.reach))

    def allowed(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """Whether query ``q_idx`` sees key ``kv_idx``: also FlexAttention's mask_mod."""
        return self.near(q_idx, kv_idx) | (kv_idx < self.leading) | (q_idx < self.global_queries)

    def dense_mask(self, device, queries: torch.Tensor | None = None) -> torch.Tensor:
        """bool [len(queries), N] (all queries by default), built in int32 index arithmetic."""
        keys = torch.arange(self.n, device=device, dtype=torch.int32)
        queries = keys if queries is None else queries.to(device=device, dtype=torch.int32)
        return self.allowed(queries[:, None], keys[None, :])

    def pairs(self) -> int:
        """The exact number of visible pairs, counted per query row (no N x N mask)."""
        rows, cols, reach = self.rows, self.cols, self.reach
        r = torch.arange(rows, dtype=torch.int64)
        c = torch.arange(cols, dtype=torch.int64)
        per_row = (r + reach).clamp(max=rows - 1) - (r - reach).clamp(min=0) + 1
        per_col = (c + reach).clamp(max=cols - 1) - (c - reach).clamp(min=0) + 1
        near = (per_row[:, None] * per_col[None, :]).reshape(-1)  # neighbours of each cell, itself included
        cells = torch.arange(self.prefix, self.n)
        leading_cells = torch.arange(self.prefix, self.leading)
        near = near - self.near(cells[:, None], leading_cells[None, :]).sum(-1)  # already counted as leading
        grid_rows = cells >= self.global_queries
        return (self.global_queries * self.n + (self.n - self.global_queries) * self.leading
                + int(near[grid_rows].sum()))


# ---------------------------------------------------------------------------------------------- peers


def sdpa_dense_fn():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def f(q, k, v):
        return sdpa(q, k, v, scale=q.shape[-1] ** -0.5)

    return f


def sdpa_mask_fn(pattern: Pattern, device):
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    mask = pattern.dense_mask(device)

    def f(q, k, v):
        return sdpa(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)

    return f


def flex_fn(pattern: Pattern, device, compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.allowed(q_idx, kv_idx)

    block_mask = create_block_mask(mask_mod, None, None, pattern.n, pattern.n, device=str(device))
    flex = compiled_flex_attention() if compiled else flex_attention

    def f(q, k, v):
        return flex(q, k, v, block_mask=block_mask, scale=q.shape[-1] ** -0.5)

    return f


def ours_fn(pattern: Pattern):
    from hf_efficient_attn.kernels import neighbourhood_attention

    def f(q, k, v):
        return neighbourhood_attention(q, k, v, scale=q.shape[-1] ** -0.5, grid=(pattern.rows, pattern.cols),
                                       reach=pattern.reach, prefix_tokens=pattern.prefix,
                                       leading_keys=pattern.leading, global_queries=pattern.global_queries)

    return f


# ---------------------------------------------------------------------------------------------- timing, checks


def reference(q, k, v, mask):
    """float32 attention of the given query rows (q [B, H, M, D]) against all keys under ``mask`` [M, N]."""
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v.float()


def output_error(pattern: Pattern, out, q, k, v, rows: int) -> float:
    """Max |ours - float32 math| over batch row 0 and ``rows`` queries: the first ones (CLS, top edge) and as
    many from the middle of the grid."""
    half = max(1, rows // 2)
    middle = pattern.prefix + (pattern.rows // 2) * pattern.cols
    picked = torch.cat([torch.arange(half), torch.arange(middle, min(middle + half, pattern.n))]).to(q.device)
    ref = reference(q[:1, :, picked], k[:1], v[:1], pattern.dense_mask(q.device, picked))
    return max_abs_error(out[:1, :, picked], ref)


def gradient_error(pattern: Pattern, device, dtype, heads: int, dim: int, rows: int) -> dict[str, float]:
    """Max |ours - float32 math| of out, dq, dk, dv on a ``rows`` x ``rows`` grid with the pattern's reach."""
    small = Pattern(rows, rows, pattern.window, pattern.prefix)
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(1, heads, small.n, dim, device=device, dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))
    mask = small.dense_mask(device)
    return gradient_errors(ours_fn(small), lambda q, k, v: reference(q, k, v, mask), (q, k, v))


# ---------------------------------------------------------------------------------------------- main

IMPLS = ("sdpa dense", "sdpa mask", "flex", "ours")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for neighbourhood.json and neighbourhood.md")
    ap.add_argument("--grids", default=None, help="rows x cols, comma-separated (default 64x64,128x128)")
    ap.add_argument("--windows", default=None, help="windows (reach + 1), comma-separated (default 5,9)")
    ap.add_argument("--batch", type=int, default=None, help="default 8")
    ap.add_argument("--heads", type=int, default=None, help="default 12")
    ap.add_argument("--head-dim", type=int, default=None, help="default 64")
    ap.add_argument("--prefix", type=int, default=1, help="tokens before the grid (ViT's CLS)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench's measuring time per entry")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per entry on the CPU")
    ap.add_argument("--budget-s", type=float, default=1500, help="stop timing new entries after this long")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-mask", action="store_true", help="leave out SDPA under the dense mask")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke check under the interpreter: a 4x5 grid, batch 1, 2 heads of 32, window 2")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    device = torch.device("cpu" if tiny else "cuda")
    dtype = getattr(torch, args.dtype if not tiny else "float32")
    grids = [tuple(int(x) for x in g.split("x")) for g in (args.grids or ("4x5" if tiny else "64x64,128x128")).split(",")]
    windows = [int(w) for w in (args.windows or ("2" if tiny else "5,9")).split(",")]
    batch = args.batch or (1 if tiny else 8)
    heads = args.heads or (2 if tiny else 12)
    dim = args.head_dim or (32 if tiny else 64)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.budget_s)
    env = {"device": device_name(device), **versions("torch", "triton", "cuda", "python"), "date": timestamp(),
           "dtype": str(dtype), "batch": batch, "heads": heads, "head_dim": dim, "prefix": args.prefix, "tiny": tiny,
           "command": command_line("neighbourhood.py", sys.argv[1:] if argv is None else argv)}
    print(env, flush=True)
    try:
        from torch.nn.attention import flex_attention  # noqa: F401

        has_flex = not args.no_flex
    except ImportError:
        has_flex = False
    results = {"env": env, "checks": {}, "rows": []}
    for window in windows:
        pattern = Pattern(8 if tiny else 24, 8 if tiny else 24, window, args.prefix)
        errors = gradient_error(pattern, device, dtype, heads, dim, pattern.rows)
        results["checks"][f"window {window}"] = errors
        print(f"check window {window} on a {pattern.name} grid: max abs error vs float32 math "
              + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), flush=True)
    for rows, cols in grids:
        for window in windows:
            pattern = Pattern(rows, cols, window, args.prefix)
            print(f"[{pattern.name} N={pattern.n} window={window} B={batch}] {deadline.elapsed():.0f}s", flush=True)
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(batch, heads, pattern.n, dim, device=device, dtype=dtype, generator=g)
                       .requires_grad_() for _ in range(3))
            with torch.no_grad():
                err = output_error(pattern, ours_fn(pattern)(q, k, v), q, k, v, rows=8 if tiny else 256)
            peers = {"sdpa dense": sdpa_dense_fn(), "sdpa mask": None, "flex": None, "ours": ours_fn(pattern)}
            for name, make in (("sdpa mask", lambda p=pattern: sdpa_mask_fn(p, device)),
                               ("flex", lambda p=pattern: flex_fn(p, device, compiled=not tiny))):
                if (name == "sdpa mask" and args.no_mask) or (name == "flex" and not has_flex):
                    continue
                try:
                    peers[name] = make()
                except Exception as exc:  # noqa: BLE001 - the peer cannot be set up here: reported as n/a
                    print(f"  {name} not available: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            pairs = pattern.pairs()
            share = pairs / pattern.n**2
            for mode, backward in (("fwd", False), ("fwd+bwd", True)):
                cells = {name: timed_call(fn, q, k, v, backward, deadline, args.rep_ms, args.repeats)
                         for name, fn in peers.items()}
                row = {"grid": pattern.name, "n": pattern.n, "window": window, "reach": pattern.reach,
                       "batch": batch, "pass": mode, "pairs": pairs, "share": round(share, 6), "err": err, **cells}
                dense, ours = cells["sdpa dense"], cells["ours"]
                if isinstance(dense, dict):
                    row["share_ms"] = round(share * dense["ms"], 4)
                    if isinstance(ours, dict):
                        row["ours_over_share"] = round(ours["ms"] / row["share_ms"], 3)
                results["rows"].append(row)
                print("  " + mode + ": " + ", ".join(f"{name} {fmt(cells[name])}" for name in IMPLS)
                      + f", ours / share {row.get('ours_over_share', 'n/a')}", flush=True)
                write(results, out_dir)
            del q, k, v
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results["elapsed_s"] = round(deadline.elapsed(), 1)
    write(results, out_dir)
    print((out_dir / "neighbourhood.md").read_text())
    return results


def fmt(cell) -> str:
    """A timing cell: milliseconds, or why there is none (an error cut short; the JSON has more)."""
    if isinstance(cell, dict):
        return f"{cell['ms']:.3f}"
    return cell if len(cell) <= 48 else cell[:45] + "..."


def write(results: dict, out_dir: Path) -> None:
    write_json(out_dir / "neighbourhood.json", results)
    env = results["env"]
    rows = [[r["grid"], r["n"], r["window"], r["pass"], r["pairs"], f"{r['share']:.4f}", *(fmt(r[name]) for name in IMPLS),
             r.get("share_ms", "n/a"), r.get("ours_over_share", "n/a"), f"{r['err']:.1e}"] for r in results["rows"]]
    lines = [f"# 2-D neighbourhood attention: {env['device']}", "",
             f"{versions_line(env, ('torch', 'triton', 'cuda'))}, {env['date']}. {env['dtype']}, "
             f"batch {env['batch']}, {env['heads']} heads of {env['head_dim']}, {env['prefix']} token(s) before the "
             "grid. Median ms. share = visible pairs / N^2; share ms = share x dense SDPA's time; target: ours / "
             "share <= 2.0. err: max abs error of ours vs float32 math on a slice of the queries.", "",
             "Gradient checks (max abs error vs float32 math on a small grid): "
             + "; ".join(f"{name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
                         for name, errors in results["checks"].items()), "",
             *table(["grid", "N", "window", "pass", "visible pairs", "share", *IMPLS, "share ms", "ours / share", "err"],
                    rows, align="lrrlrrrrrrrrr")]
    (out_dir / "neighbourhood.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main()
