"""Benchmark the fused Triton attention against torch SDPA backends and FlexAttention.

    python benchmarks/kernel_speed.py --out results/        # writes kernels.json and kernels.md there

Implementations: ours (Triton), ours-cudnn (our cuDNN-frontend backend, where the ``cudnn`` extra is
installed), torch SDPA's cuDNN / FlashAttention-2 / memory-efficient backends, FlexAttention,
FlashAttention-4 (the ``fa4`` package, CuTe DSL, where installed).
Patterns: causal full, causal sliding window 1024 and 4096 (window=(W, None)), and window 1024 with 4
sink tokens every query also sees (StreamingLLM's prefill); N = 1k, 4k, 16k, 64k;
head_dim 64 and 128; bf16; 16 heads; batch = 16k tokens / N (at least 1). Plus block-sparse at ~10%
density (64x64 blocks) against our exact kernel at 16k.
FLOPs: forward = 4 * B * H * visible_pairs * D; forward+backward = 3.5 x forward (backward = 2.5x).
Times are medians of triton.testing.do_bench (CUDA events) after warm-up. Every configuration of ours
is checked against a reference on a short input first. n/a: the peer cannot express the pattern, or it
cannot run here (an optional backend not installed: the table's header says which, and why).

On a fresh machine most of the time goes to compiling: our kernels are compiled (and autotuned at a
small size) in parallel child processes first, but each FlexAttention shape is a new torch.compile.
A full table needs roughly 15-20 minutes; --budget-s stops timing new entries (marked
"skipped (time budget)") once it is spent, and rows are written to the JSON/Markdown as they finish.
"""


from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.attention_calls import Attention, timed_call  # noqa: E402
from benchmarks.harness.budget import Deadline  # noqa: E402
from benchmarks.harness.checks import gradient_errors, relative_error  # noqa: E402
from benchmarks.harness.compiling import warm_in_children  # noqa: E402
from benchmarks.harness.environment import device_name, timestamp, versions  # noqa: E402
from benchmarks.harness.markdown import table, versions_line  # noqa: E402
from benchmarks.harness.store import merge_entries, write_json  # noqa: E402
from benchmarks.kernel_peers import (  # noqa: E402
    cudnn_frontend_fn,
    fa4_fn,
    fa4_layout_fn,
    flex_fn,
    flex_layout_mask,
    flex_window_mask,
    ours_fn,
    sdpa_dense_fn,
    sdpa_fn,
)

PATTERNS = {"causal": (None, 0), "win1024": (1024, 0), "win4096": (4096, 0), "win1024+sinks4": (1024, 4)}
"""Each pattern's window (None: causal over every key) and sink tokens."""
TOKENS = 16384
HEADS = 16
SPARSE_BLOCK = 64
PASSES = (("fwd", False, 1.0), ("fwd+bwd", True, 3.5))
"""Each entry's two cells: the pass, whether it runs the backward, and its FLOPs over the forward's."""


def visible_pairs(n: int, window: int | None, sinks: int = 0) -> int:
    """Query-key pairs a causal call of ``n`` tokens computes under ``window`` and ``sinks``: the window's,
    plus each query's sink keys that lie before its window."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    in_window = window * (window + 1) // 2 + (n - window) * window
    before_window = range(1, n - window + 1)  # keys 0 .. p - window of the queries p >= window
    return in_window + sum(min(sinks, keys) for keys in before_window)


def batch_for(n: int) -> int:
    return max(1, TOKENS // n)


def make_inputs(b: int, h: int, n: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(3)]


def random_layout(h: int, n: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    nb = n // SPARSE_BLOCK
    return torch.rand(h, nb, nb, device="cuda", generator=g) < density


def ours_blocks_fn(causal: bool, layout: torch.Tensor | None = None) -> Attention:
    """Our kernel, dense (causal or not) or over a layout of `SPARSE_BLOCK`-token blocks."""
    from hf_efficient_attn.kernels import fused_attention

    blocks = {} if layout is None else {"block_layout": layout, "layout_block_size": SPARSE_BLOCK}
    return lambda q, k, v: fused_attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=causal, **blocks)


def sdpa_math(mask: torch.Tensor) -> Attention:
    """Float32 math under ``mask``: the reference of the checks."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def f(q, k, v):
        with sdpa_kernel([SDPBackend.MATH]):
            return sdpa(q, k, v, attn_mask=mask)
    return f


def check_ours(window: int | None, sinks: int, d: int, n: int) -> float:
    """Our output and grads vs SDPA math in fp32 with an explicit mask, on a short input: the largest
    relative error of out, dq, dk, dv."""
    i = torch.arange(n, device="cuda")
    mask = i[None, :] <= i[:, None]
    if window:
        mask &= ((i[:, None] - i[None, :]) < window) | (i[None, :] < sinks)
    errors = gradient_errors(ours_fn(window, sinks), sdpa_math(mask), make_inputs(1, 4, n, d, seed=1),
                             relative_error)
    return max(errors.values())


def run_one(name: str, fn: Attention | None, q, k, v, flops_fwd: float, rep_ms: int, deadline: Deadline) -> dict:
    """Both cells of one implementation on one input: median ms and TFLOP/s, or why not."""
    row = {}
    for mode, backward, mult in PASSES:
        cell = timed_call(fn, q, k, v, backward, deadline, rep_ms)
        row[mode] = {**cell, "tflops": round(flops_fwd * mult / cell["ms"] / 1e9, 1)} if isinstance(cell, dict) else cell
    print(f"  {name:18s} {fmt(row['fwd']):>22s} {fmt(row['fwd+bwd']):>22s}", flush=True)
    return row


def fmt(cell) -> str:
    if isinstance(cell, dict):
        return f"{cell['ms']:.3f} ms {cell['tflops']:.0f} TF/s"
    return str(cell)


def warm_commands(dims: list[int]) -> dict[str, list[str]]:
    """A child process per kind of our kernels and head_dim: compiled (and autotuned at a small size) once,
    so that the on-disk Triton cache is filled in parallel."""
    code = (
        "import sys, torch; sys.path.insert(0, {root!r})\n"
        "from hf_efficient_attn.kernels import fused_attention\n"
        "kind, d = {kind!r}, {d}\n"
        "q, k, v = [torch.randn(1, 16, 2048, d, device='cuda', dtype=torch.bfloat16, requires_grad=True)"
        " for _ in range(3)]\n"
        "kw = dict(causal=True)\n"
        "if kind == 'win': kw['window'] = (1024, None)\n"
        "if kind == 'sinks': kw.update(window=(1024, None), sink_tokens=4)\n"
        "if kind == 'sparse':\n"
        "    kw = dict(causal=False, block_layout=torch.rand(16, 32, 32, device='cuda') < 0.1)\n"
        "if kind == 'full': kw = dict(causal=False)\n"
        "o = fused_attention(q, k, v, scale=0.1, **kw); o.sum().backward(); torch.cuda.synchronize()\n"
    )
    return {f"{kind}:{d}": [sys.executable, "-c", code.format(root=str(ROOT), kind=kind, d=d)]
            for d in dims for kind in ("causal", "win", "sinks", "sparse", "full")}


# ---------------------------------------------------------------------------------------------- sections


def run_rows(results, args, dims, ns, patterns, deadline: Deadline, out_dir: Path) -> None:
    """Check our kernel per pattern, then time every implementation per (D, N, pattern)."""
    for d in dims:
        for pat in patterns:
            w, sinks = PATTERNS[pat]
            n_check = 2048 if w != 4096 else 5120  # multiples of 16: no extra specialisation
            err = check_ours(w, sinks, d, n_check)
            results["checks"][f"{pat}/d{d}"] = err
            print(f"check {pat} d={d} N={n_check}: max rel err (out, dq, dk, dv) vs fp32 math = {err:.2e}",
                  flush=True)
            assert err < 3e-2, f"our kernel disagrees with the reference: {pat} d={d} err={err}"

    for d in dims:
        for n in ns:
            b = batch_for(n)
            q, k, v = make_inputs(b, HEADS, n, d)
            for pat in patterns:
                w, sinks = PATTERNS[pat]
                flops = 4.0 * b * HEADS * visible_pairs(n, w, sinks) * d
                print(f"[{pat} N={n} B={b} D={d}] {deadline.elapsed():.0f}s", flush=True)
                peers = {"ours": ours_fn(w, sinks), "ours-cudnn": cudnn_frontend_fn(w, sinks), "fa4": fa4_fn(w, sinks)}
                for be in ("cudnn", "flash2", "efficient"):
                    peers[f"sdpa-{be}"] = sdpa_fn(be, w, n, sinks)
                if not args.no_flex:
                    try:
                        peers["flex"] = flex_fn(flex_window_mask(n, w, sinks=sinks))
                    except Exception as exc:
                        print("flex mask failed:", exc)
                        peers["flex"] = None
                for name, fn in peers.items():
                    row = run_one(name, fn, q, k, v, flops, args.rep_ms, deadline)
                    results["rows"].append({"pattern": pat, "n": n, "batch": b, "d": d, "impl": name, **row})
                write(results, out_dir)
            del q, k, v
            torch.cuda.empty_cache()


def run_sparse(results, args, dims, deadline: Deadline, out_dir: Path) -> None:
    """Block-sparse ~10% at 16k: our layout kernel against our exact kernels and FlexAttention."""
    from hf_efficient_attn.kernels import fused_attention

    n = 16384
    for d in dims:
        if deadline.passed():
            break
        q, k, v = make_inputs(1, HEADS, n, d)
        lay = random_layout(HEADS, n, 0.10, seed=d)
        density = lay.float().mean().item()
        pairs_sparse = lay.sum().item() * SPARSE_BLOCK * SPARSE_BLOCK / HEADS
        out_s = fused_attention(q[:, :, :4096], k[:, :, :4096], v[:, :, :4096], scale=d**-0.5, causal=False,
                                block_layout=lay[:, :64, :64], layout_block_size=SPARSE_BLOCK)
        dense = lay[:, :64, :64].repeat_interleave(SPARSE_BLOCK, 1).repeat_interleave(SPARSE_BLOCK, 2)
        ref = sdpa_math(dense[None])(*(t[:, :, :4096].detach().float() for t in (q, k, v)))
        err = relative_error(out_s, torch.nan_to_num(ref))
        print(f"block-sparse check d={d}: rel err {err:.2e}", flush=True)
        results["checks"][f"sparse/d{d}"] = err
        fa4 = fa4_layout_fn(lay, SPARSE_BLOCK)
        if fa4 is not None:
            try:
                fa4_small = fa4_layout_fn(lay[:, :64, :64], SPARSE_BLOCK)
                err = relative_error(fa4_small(*(t[:, :, :4096] for t in (q, k, v))), torch.nan_to_num(ref))
                print(f"fa4 block-sparse check d={d}: rel err {err:.2e}", flush=True)
                results["checks"][f"sparse-fa4/d{d}"] = err
            except Exception as exc:  # noqa: BLE001 - reported in the table as the error it raised
                print("fa4 block-sparse failed:", repr(exc)[:300], flush=True)
        cases = {"ours exact (full)": (ours_blocks_fn(False), n * n),
                 "ours exact (causal)": (ours_blocks_fn(True), n * (n + 1) // 2),
                 "sdpa-cudnn dense (full)": (sdpa_dense_fn("cudnn"), n * n),
                 "ours block-sparse": (ours_blocks_fn(False, lay), pairs_sparse),
                 "fa4 block-sparse": (fa4, pairs_sparse)}
        if not args.no_flex:
            try:
                cases["flex block-sparse"] = (flex_fn(flex_layout_mask(lay, n, SPARSE_BLOCK)), pairs_sparse)
            except Exception as exc:
                print("flex layout mask failed:", exc)
        print(f"[block-sparse N={n} D={d} density={density:.3f}]", flush=True)
        for name, (fn, pairs) in cases.items():
            row = run_one(name, fn, q, k, v, 4.0 * HEADS * pairs * d, args.rep_ms, deadline)
            results["sparse"].append({"n": n, "d": d, "density": round(density, 4), "impl": name, **row})
        write(results, out_dir)
        del q, k, v
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- results


def _skipped(row) -> bool:
    return str(row.get("fwd", "")).startswith("skipped")


def _rank(row) -> int:
    """2: forward and forward+backward measured (or n/a, OOM, error); 1: the forward only, the time budget
    ran out before the backward; 0: skipped. An earlier complete entry replaces a partial one, so that
    both figures of a row come from one run."""
    if _skipped(row):
        return 0
    return 1 if str(row.get("fwd+bwd", "")).startswith("skipped") else 2


def merge_previous(results, previous_path: Path) -> None:
    """Keep the entries of an earlier run that this run did not measure (absent, or skipped for the time
    budget), marked with that run's date; the earlier run's own skipped entries are dropped, and so are its
    ``n/a`` entries: this run states itself what cannot run here, and an implementation it skipped for time
    had been missing from the earlier run, not unable."""
    previous = json.loads(previous_path.read_text())
    date = previous["env"]["date"]
    for section, key in (("rows", ("pattern", "n", "d", "impl")), ("sparse", ("n", "d", "impl"))):
        earlier = [r for r in previous.get(section, []) if not _skipped(r) and r.get("fwd") != "n/a"]
        results[section] = merge_entries(results[section], earlier, key, date, _rank)
    for name, err in previous.get("checks", {}).items():
        results["checks"].setdefault(name, err)


def write(results, out_dir: Path) -> None:
    """kernels.json and kernels.md; an entry kept from an earlier run (--merge) names its run after the impl
    (the peers of one row always share a run)."""
    write_json(out_dir / "kernels.json", results)
    env = results["env"]

    def cells(r):
        return [part for c in (r["fwd"], r["fwd+bwd"])
                for part in ((f"{c['ms']:.3f}", f"{c['tflops']:.0f}") if isinstance(c, dict) else (c, ""))]

    def impl(r):
        return r["impl"] + (f" (run of {r['run']})" if "run" in r else "")

    passes = ["fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s"]
    order = {name: rank for rank, name in enumerate(PATTERNS)}
    rows = sorted(results["rows"], key=lambda r: (r["d"], order.get(r["pattern"], 9), r["n"]))
    lines = [f"# Attention kernels: {env['gpu']}", "",
             f"{versions_line(env, ('torch', 'triton', 'cuda'))}, {env['date']}. bf16, "
             f"{HEADS} heads, batch = {TOKENS} tokens / N. Median ms (TFLOP/s); fwd+bwd FLOPs = 3.5 x fwd.",
             *(["", *(f"- Not measured here (its cells read n/a): {name}: {why}."
                      for name, why in env["cannot_run"].items())] if env.get("cannot_run") else []),
             "", "Checks (max relative error of out, dq, dk, dv vs fp32 math on a short input): "
             + ", ".join(f"{k} {v:.1e}" for k, v in results["checks"].items()), "",
             *table(["pattern", "N", "B", "D", "impl", *passes],
                    [[r["pattern"], r["n"], r["batch"], r["d"], impl(r), *cells(r)] for r in rows], align="lrrrlrrrr")]
    if results["sparse"]:
        lines += ["", "Block-sparse (64x64 blocks, random per head), N=16384, B=1:", "",
                  *table(["D", "density", "impl", *passes],
                         [[r["d"], r["density"], impl(r), *cells(r)] for r in results["sparse"]], align="rrlrrrr")]
    (out_dir / "kernels.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for kernels.json and kernels.md")
    ap.add_argument("--ns", default="16384,65536,4096,1024", help="in priority order")
    ap.add_argument("--dims", default="128,64", help="in priority order (the time budget may cut the tail)")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--budget-s", type=float, default=1500, help="stop timing new entries after this long")
    ap.add_argument("--rep-ms", type=int, default=100)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-warm", action="store_true")
    ap.add_argument("--warm-only", action="store_true", help="only fill the Triton cache, then exit")
    ap.add_argument("--sections", default="rows,sparse", help="what to time, in this order: rows (causal and "
                    "window patterns), sparse (block-sparse at 16k)")
    ap.add_argument("--merge", help="an earlier kernels.json: its entries that this run did not measure are kept, "
                    "each marked with the date of its run")
    ap.add_argument("--from-run", help="measure nothing: take this kernels.json as the run (with --merge, to complete "
                    "a run cut short by its time budget with an earlier one's entries)")
    return ap


def optional_backends_missing() -> dict[str, str]:
    """Why each optional implementation cannot run here (an extra not installed, a library that does not
    load, the wrong GPU), by its name in the table; those that can run are left out."""
    from hf_efficient_attn.backends import cudnn_sdpa, fa4

    reasons = {"ours-cudnn": cudnn_sdpa.unavailable_reason(), "fa4": fa4.unavailable_reason()}
    return {name: why for name, why in reasons.items() if why is not None}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_run:
        results = json.loads(Path(args.from_run).read_text())
        if args.merge:
            merge_previous(results, Path(args.merge))
        write(results, out_dir)
        print((out_dir / "kernels.md").read_text())
        return results
    deadline = Deadline(args.budget_s)
    env = {"gpu": device_name(torch.device("cuda")), **versions("torch", "triton", "cuda", "python"),
           "date": timestamp(), "cannot_run": optional_backends_missing()}
    print(env, flush=True)
    dims = [int(x) for x in args.dims.split(",")]
    ns = [int(x) for x in args.ns.split(",")]
    patterns = args.patterns.split(",")

    if not args.no_warm:
        warm_in_children(warm_commands(dims), timeout_s=400)
        print(f"warm-up done in {deadline.elapsed():.0f}s", flush=True)
        if args.warm_only:
            return {}

    results = {"env": env, "checks": {}, "rows": [], "sparse": []}
    for section in args.sections.split(","):
        if section == "rows":
            run_rows(results, args, dims, ns, patterns, deadline, out_dir)
        elif section == "sparse":
            run_sparse(results, args, dims, deadline, out_dir)
        else:
            raise SystemExit(f"--sections: unknown section {section!r}; use rows and/or sparse")
    if args.merge:
        merge_previous(results, Path(args.merge))
    results["elapsed_s"] = round(deadline.elapsed(), 1)
    write(results, out_dir)
    print((out_dir / "kernels.md").read_text())
    return results


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main()
