"""Benchmark the fused Triton attention against torch SDPA backends and FlexAttention.

    python benchmarks/kernel_speed.py --out results/        # writes kernels.json and kernels.md there

Implementations: ours (Triton), ours-cudnn (our cuDNN-frontend backend, where the ``cudnn`` extra is
installed), torch SDPA's cuDNN / FlashAttention-2 / memory-efficient backends, FlexAttention,
FlashAttention-4 (the ``fa4`` package, CuTe DSL, where installed).
Patterns: causal full, causal sliding window 1024 and 4096 (window=(W, None)); N = 1k, 4k, 16k, 64k;
head_dim 64 and 128; bf16; 16 heads; batch = 16k tokens / N (at least 1). Plus block-sparse at ~10%
density (64x64 blocks) against our exact kernel at 16k.
FLOPs: forward = 4 * B * H * visible_pairs * D; forward+backward = 3.5 x forward (backward = 2.5x).
Times are medians of triton.testing.do_bench (CUDA events) after warm-up. Every configuration of ours
is checked against a reference on a short input first. n/a: the peer cannot express the pattern.

On a fresh machine most of the time goes to compiling: our kernels are compiled (and autotuned at a
small size) in parallel child processes first, but each FlexAttention shape is a new torch.compile.
A full table needs roughly 15-20 minutes; --budget-s stops timing new entries (marked
"skipped (time budget)") once it is spent, and rows are written to the JSON/Markdown as they finish.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.store import merge_entries  # noqa: E402

PATTERNS = {"causal": None, "win1024": 1024, "win4096": 4096}
TOKENS = 16384
HEADS = 16
SPARSE_BLOCK = 64


def visible_pairs(n: int, window: int | None) -> int:
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def batch_for(n: int) -> int:
    return max(1, TOKENS // n)


# ---------------------------------------------------------------------------------------------- peers


def ours_fn(window):
    from hf_efficient_attn.kernels import fused_attention

    def f(q, k, v):
        return fused_attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=True,
                               window=(window, None) if window else (None, None))

    return f


def cudnn_frontend_fn(window):
    """Our cuDNN backend (`backends.cudnn_sdpa`, the ``cudnn`` extra) on the same pattern; None where it
    is not installed or usable here."""
    from hf_efficient_attn.backends import cudnn_sdpa

    if not cudnn_sdpa.available():
        return None

    def f(q, k, v):
        return cudnn_sdpa.attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=True, window_left=window,
                                    window_right=None)

    return f


def fa4_fn(window):
    """FlashAttention-4 (CuTe DSL, the ``fa4`` package) on the same pattern, its inputs as [B, N, H, D]
    views of ours (no copy: it needs only the head dimension contiguous); None where it is not installed.
    Its window counts the keys before the query: ours of W keys is (W - 1, 0)."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:  # noqa: BLE001 - not installed, or the CuTe DSL cannot load here
        return None

    def f(q, k, v):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=q.shape[-1] ** -0.5,
                              causal=True, window_size=(window - 1, 0) if window else (None, None))
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

    return f


def sdpa_fn(backend, window, n):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    b = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
    if window is None:
        def f(q, k, v):
            with sdpa_kernel([b]):
                return sdpa(q, k, v, is_causal=True)
        return f
    if backend != "efficient" or n > 16384:
        return None
    i = torch.arange(n, device="cuda")
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)

    def f(q, k, v):
        with sdpa_kernel([b]):
            return sdpa(q, k, v, attn_mask=mask)
    return f


_FLEX = {}
_LAYOUT = {}
_WIN = torch.zeros((), dtype=torch.int64)


def _window_mask_mod(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & (q_idx - kv_idx < _WIN)


def _flex_compiled():
    if "fn" not in _FLEX:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _block_classes(any_b: torch.Tensor, all_b: torch.Tensor):
    """Dense [H, nQB, nKB] partial/full block flags -> BlockMask tensors (num, indices)."""
    def pack(m):
        num = m.sum(-1, dtype=torch.int32)
        idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num[None].contiguous(), idx[None].contiguous()
    partial = any_b & ~all_b
    return pack(partial), pack(all_b)


def flex_window_mask(n, window, block=128):
    """BlockMask for causal (window=None) or causal sliding window, built at block level (no N x N)."""
    from torch.nn.attention.flex_attention import BlockMask

    w = n if window is None else window
    _WIN.fill_(w)  # one module-level mask_mod for every window: fewer recompiles

    nb = (n + block - 1) // block
    qb = torch.arange(nb, device="cuda")
    p0, p1 = qb * block, torch.clamp(qb * block + block, max=n) - 1
    n0, n1 = p0, p1
    d_lo = n0[None, :] - p1[:, None]
    d_hi = n1[None, :] - p0[:, None]
    any_b = (d_lo <= 0) & (d_hi > -w)
    all_b = (d_hi <= 0) & (d_lo > -w)
    (pn, pi), (fn, fi) = _block_classes(any_b[None], all_b[None])
    return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=block, mask_mod=_window_mask_mod,
                                    seq_lengths=(n, n))


def flex_layout_mask(layout, n, lb=SPARSE_BLOCK, block=128):
    from torch.nn.attention.flex_attention import BlockMask

    lay = layout.bool()
    _LAYOUT["t"] = lay

    def mask_mod(b, h, q_idx, kv_idx):
        return lay[h, q_idx // lb, kv_idx // lb]

    r = block // lb
    h, nqb, nkb = lay.shape
    g = lay.reshape(h, nqb // r, r, nkb // r, r)
    any_b = g.any(4).any(2)
    all_b = g.all(4).all(2)
    (pn, pi), (fn, fi) = _block_classes(any_b, all_b)
    return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(n, n))


def flex_fn(block_mask):
    flex = _flex_compiled()

    def f(q, k, v):
        return flex(q, k, v, block_mask=block_mask)
    return f


# ---------------------------------------------------------------------------------------------- timing


def make_inputs(b, h, n, d, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(3)]


def bench(fn, q, k, v, backward: bool, rep_ms: int):
    from triton.testing import do_bench

    if backward:
        do = torch.randn_like(q)

        def run():
            fn(q, k, v).backward(do)
        return do_bench(run, warmup=max(25, rep_ms // 4), rep=rep_ms, grad_to_none=[q, k, v],
                        return_mode="median")
    return do_bench(lambda: fn(q, k, v), warmup=max(25, rep_ms // 4), rep=rep_ms, return_mode="median")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def check_ours(window, d, n):
    """Our output and grads vs SDPA math in fp32 with an explicit mask, on a short input."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v = make_inputs(1, 4, n, d, seed=1)
    out = ours_fn(window)(q, k, v)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    i = torch.arange(n, device="cuda")
    mask = i[None, :] <= i[:, None]
    if window:
        mask &= (i[:, None] - i[None, :]) < window
    with sdpa_kernel([SDPBackend.MATH]):
        ref = sdpa(qf, kf, vf, attn_mask=mask)
    ref_grads = torch.autograd.grad(ref, (qf, kf, vf), do.float())
    errs = [rel(out, ref)] + [rel(a, b) for a, b in zip(grads, ref_grads, strict=True)]
    return max(errs)


def run_one(name, fn, q, k, v, flops_fwd, rep_ms, deadline):
    row = {}
    for mode, back, mult in (("fwd", False, 1.0), ("fwd+bwd", True, 3.5)):
        if fn is None:
            row[mode] = "n/a"
            continue
        if time.time() > deadline:
            row[mode] = "skipped (time budget)"
            continue
        try:
            ms = bench(fn, q, k, v, back, rep_ms)
            row[mode] = {"ms": round(ms, 4), "tflops": round(flops_fwd * mult / ms / 1e9, 1)}
        except torch.cuda.OutOfMemoryError:
            row[mode] = "OOM"
        except Exception as exc:  # report and go on
            row[mode] = f"error: {type(exc).__name__}: {str(exc)[:160]}"
        finally:
            for t in (q, k, v):
                t.grad = None
            torch.cuda.empty_cache()
    print(f"  {name:18s} {fmt(row['fwd']):>22s} {fmt(row['fwd+bwd']):>22s}", flush=True)
    return row


def fmt(cell):
    if isinstance(cell, dict):
        return f"{cell['ms']:.3f} ms {cell['tflops']:.0f} TF/s"
    return str(cell)


def random_layout(h, n, density, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    nb = n // SPARSE_BLOCK
    lay = torch.rand(h, nb, nb, device="cuda", generator=g) < density
    return lay


# ---------------------------------------------------------------------------------------------- warm-up


def warm_worker(spec: str) -> str:
    """Compile (and autotune at a small size) one family of our kernels in a child process, so the
    on-disk Triton cache is filled in parallel."""
    code = (
        "import sys, torch; sys.path.insert(0, {root!r})\n"
        "from hf_efficient_attn.kernels import fused_attention\n"
        "kind, d = {kind!r}, {d}\n"
        "q, k, v = [torch.randn(1, 16, 2048, d, device='cuda', dtype=torch.bfloat16, requires_grad=True)"
        " for _ in range(3)]\n"
        "kw = dict(causal=True)\n"
        "if kind == 'win': kw['window'] = (1024, None)\n"
        "if kind == 'sparse':\n"
        "    kw = dict(causal=False, block_layout=torch.rand(16, 32, 32, device='cuda') < 0.1)\n"
        "if kind == 'full': kw = dict(causal=False)\n"
        "o = fused_attention(q, k, v, scale=0.1, **kw); o.sum().backward(); torch.cuda.synchronize()\n"
    ).format(root=str(ROOT), kind=spec.split(":")[0], d=int(spec.split(":")[1]))
    t = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400)
    return f"{spec}: rc={r.returncode} {time.time() - t:.0f}s {r.stderr[-300:] if r.returncode else ''}"


# ---------------------------------------------------------------------------------------------- main


def main():
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
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    global _WIN
    _WIN = torch.zeros((), dtype=torch.int64, device="cuda")
    start = time.time()
    deadline = start + args.budget_s
    import triton

    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(env, flush=True)
    dims = [int(x) for x in args.dims.split(",")]
    ns = [int(x) for x in args.ns.split(",")]
    patterns = args.patterns.split(",")

    if not args.no_warm:
        specs = [f"{kind}:{d}" for d in dims for kind in ("causal", "win", "sparse", "full")]
        with cf.ThreadPoolExecutor(len(specs)) as pool:
            for msg in pool.map(warm_worker, specs):
                print("warm", msg, flush=True)
        print(f"warm-up done in {time.time() - start:.0f}s", flush=True)
        if args.warm_only:
            return

    results = {"env": env, "checks": {}, "rows": [], "sparse": []}
    for section in args.sections.split(","):
        if section == "rows":
            run_rows(results, args, dims, ns, patterns, deadline, start, out_dir)
        elif section == "sparse":
            run_sparse(results, args, dims, deadline, out_dir)
        else:
            raise SystemExit(f"--sections: unknown section {section!r}; use rows and/or sparse")
    if args.merge:
        merge_previous(results, Path(args.merge))
    results["elapsed_s"] = round(time.time() - start, 1)
    write(results, out_dir)
    print((out_dir / "kernels.md").read_text())



def run_rows(results, args, dims, ns, patterns, deadline, start, out_dir):
    """Check our kernel per pattern, then time every implementation per (D, N, pattern)."""
    for d in dims:
        for pat in patterns:
            w = PATTERNS[pat]
            n_check = 2048 if w != 4096 else 5120  # multiples of 16: no extra specialisation
            err = check_ours(w, d, n_check)
            results["checks"][f"{pat}/d{d}"] = err
            print(f"check {pat} d={d} N={n_check}: max rel err (out, dq, dk, dv) vs fp32 math = {err:.2e}",
                  flush=True)
            assert err < 3e-2, f"our kernel disagrees with the reference: {pat} d={d} err={err}"

    for d in dims:
        for n in ns:
            b = batch_for(n)
            q, k, v = make_inputs(b, HEADS, n, d)
            for pat in patterns:
                w = PATTERNS[pat]
                flops = 4.0 * b * HEADS * visible_pairs(n, w) * d
                print(f"[{pat} N={n} B={b} D={d}] {time.time() - start:.0f}s", flush=True)
                peers = {"ours": ours_fn(w), "ours-cudnn": cudnn_frontend_fn(w), "fa4": fa4_fn(w)}
                for be in ("cudnn", "flash2", "efficient"):
                    peers[f"sdpa-{be}"] = sdpa_fn(be, w, n)
                if not args.no_flex:
                    try:
                        peers["flex"] = flex_fn(flex_window_mask(n, w))
                    except Exception as exc:
                        print("flex mask failed:", exc)
                        peers["flex"] = None
                for name, fn in peers.items():
                    row = run_one(name, fn, q, k, v, flops, args.rep_ms, deadline)
                    results["rows"].append({"pattern": pat, "n": n, "batch": b, "d": d, "impl": name, **row})
                write(results, out_dir)
            del q, k, v
            torch.cuda.empty_cache()



def run_sparse(results, args, dims, deadline, out_dir):
    """Block-sparse ~10% at 16k: our layout kernel against our exact kernels and FlexAttention."""
    # block-sparse ~10% at 16k
    from hf_efficient_attn.kernels import fused_attention

    n = 16384
    for d in dims:
        if time.time() > deadline:
            break
        q, k, v = make_inputs(1, HEADS, n, d)
        lay = random_layout(HEADS, n, 0.10, seed=d)
        density = lay.float().mean().item()
        pairs_sparse = lay.sum().item() * SPARSE_BLOCK * SPARSE_BLOCK / HEADS
        pairs_full = n * n
        out_s = fused_attention(q[:, :, :4096], k[:, :, :4096], v[:, :, :4096], scale=d**-0.5, causal=False,
                                block_layout=lay[:, :64, :64], layout_block_size=SPARSE_BLOCK)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        qs, ks, vs = (t[:, :, :4096].detach().float() for t in (q, k, v))
        dense = lay[:, :64, :64].repeat_interleave(SPARSE_BLOCK, 1).repeat_interleave(SPARSE_BLOCK, 2)
        with sdpa_kernel([SDPBackend.MATH]):
            ref = sdpa(qs, ks, vs, attn_mask=dense[None])
        ref = torch.nan_to_num(ref)
        err = rel(out_s, ref)
        print(f"block-sparse check d={d}: rel err {err:.2e}", flush=True)
        results["checks"][f"sparse/d{d}"] = err
        cases = {
            "ours exact (full)": (lambda q, k, v: fused_attention(q, k, v, scale=q.shape[-1] ** -0.5,
                                                                  causal=False),
                                  pairs_full),
            "ours exact (causal)": (lambda q, k, v: fused_attention(q, k, v, scale=q.shape[-1] ** -0.5,
                                                                    causal=True),
                                    n * (n + 1) // 2),
            "ours block-sparse": (lambda q, k, v, lay=lay: fused_attention(q, k, v, scale=q.shape[-1] ** -0.5,
                                                                           causal=False, block_layout=lay,
                                                                  layout_block_size=SPARSE_BLOCK),
                                  pairs_sparse),
        }
        if not args.no_flex:
            try:
                cases["flex block-sparse"] = (flex_fn(flex_layout_mask(lay, n)), pairs_sparse)
            except Exception as exc:
                print("flex layout mask failed:", exc)
        print(f"[block-sparse N={n} D={d} density={density:.3f}]", flush=True)
        for name, (fn, pairs) in cases.items():
            row = run_one(name, fn, q, k, v, 4.0 * HEADS * pairs * d, args.rep_ms, deadline)
            results["sparse"].append({"n": n, "d": d, "density": round(density, 4), "impl": name, **row})
        write(results, out_dir)
        del q, k, v
        torch.cuda.empty_cache()


def _skipped(row) -> bool:
    return str(row.get("fwd", "")).startswith("skipped")


def _rank(row) -> int:
    """2: forward and forward+backward measured (or n/a, OOM, error); 1: the forward only, the time budget
    ran out before the backward; 0: skipped. An earlier complete entry replaces a partial one, so that
    both figures of a row come from one run."""
    if _skipped(row):
        return 0
    return 1 if str(row.get("fwd+bwd", "")).startswith("skipped") else 2


def merge_previous(results, previous_path: Path):
    """Keep the entries of an earlier run that this run did not measure (absent, or skipped for the time
    budget), marked with that run's date; the earlier run's own skipped entries are dropped."""
    previous = json.loads(previous_path.read_text())
    date = previous["env"]["date"]
    for section, key in (("rows", ("pattern", "n", "d", "impl")), ("sparse", ("n", "d", "impl"))):
        earlier = [r for r in previous.get(section, []) if not _skipped(r)]
        results[section] = merge_entries(results[section], earlier, key, date, _rank)
    for name, err in previous.get("checks", {}).items():
        results["checks"].setdefault(name, err)


def write(results, out_dir: Path):
    (out_dir / "kernels.json").write_text(json.dumps(results, indent=1))
    env = results["env"]
    lines = [f"# Attention kernels: {env['gpu']}", "",
             f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, {env['date']}. bf16, "
             f"{HEADS} heads, batch = {TOKENS} tokens / N. Median ms (TFLOP/s); fwd+bwd FLOPs = 3.5 x fwd.",
             "", "Checks (max relative error of out, dq, dk, dv vs fp32 math on a short input): "
             + ", ".join(f"{k} {v:.1e}" for k, v in results["checks"].items()), "",
             "| pattern | N | B | D | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]

    def cells(c):
        return (f"{c['ms']:.3f}", f"{c['tflops']:.0f}") if isinstance(c, dict) else (c, "")

    def earlier(r):  # an entry kept from an earlier run (--merge); peers of one row always share a run
        return f" (run of {r['run']})" if "run" in r else ""

    order = {"causal": 0, "win1024": 1, "win4096": 2}
    for r in sorted(results["rows"], key=lambda r: (r["d"], order.get(r["pattern"], 9), r["n"])):
        f, fb = cells(r["fwd"]), cells(r["fwd+bwd"])
        lines.append(f"| {r['pattern']} | {r['n']} | {r['batch']} | {r['d']} | {r['impl']}{earlier(r)} | {f[0]} | {f[1]} | "
                     f"{fb[0]} | {fb[1]} |")
    if results["sparse"]:
        lines += ["", "Block-sparse (64x64 blocks, random per head), N=16384, B=1:", "",
                  "| D | density | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in results["sparse"]:
            f, fb = cells(r["fwd"]), cells(r["fwd+bwd"])
            lines.append(f"| {r['d']} | {r['density']} | {r['impl']}{earlier(r)} | {f[0]} | {f[1]} | {fb[0]} | {fb[1]} |")
    (out_dir / "kernels.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main()
