r"""FlashAttention-4 per call at Llama-1B prefill shapes: where `library_routes.picks_fa4` takes it.

    python benchmarks/fa4_calls.py --out benchmarks/results/fa4-calls     # Hopper, the fa4 and cudnn extras

One attention call of Llama-3.2-1B's shapes (32 query heads over 8 key/value heads, head size 64, bf16,
batch 1), forward and forward + backward, median of ``triton.testing.do_bench``:

  causal   1k to 16k tokens: FlashAttention-4 (our backend's op) against SDPA's cuDNN and FlashAttention-2
           backends; the calls `picks_fa4` takes from SDPA from `FA4_EXACT_MIN_QUERIES` on.
  window   1024 at 4k and 16k: FlashAttention-4 against our cuDNN backend and the Triton kernels; from
           `FA4_WINDOW_MIN_QUERIES` on.

Writes fa4_calls.json and fa4_calls.md into --out.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.environment import device_name, timestamp, versions  # noqa: E402
from benchmarks.harness.markdown import table, versions_line  # noqa: E402
from benchmarks.harness.store import save_report  # noqa: E402
from hf_efficient_attn.backends import cudnn_sdpa, fa4  # noqa: E402
from hf_efficient_attn.kernels import fused_attention  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 64


def microseconds(call, grad: torch.Tensor | None) -> float:
    """Median time of ``call`` (and the backward of its output with ``grad``), in microseconds."""
    import triton

    def run():
        out = call()
        if grad is not None:
            out.backward(grad)

    with torch.enable_grad() if grad is not None else torch.no_grad():
        return triton.testing.do_bench(run, warmup=10, rep=60) * 1e3


def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(1, HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, KV_HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    return q, k, v


def sdpa_on(backend):
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    def call(q, k, v):
        with sdpa_kernel([backend]):
            return scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return call


def measure(lengths: list[int], window_lengths: list[int], window: int) -> list[dict]:
    from torch.nn.attention import SDPBackend

    scale = HEAD_DIM ** -0.5
    causal = {"fa4": lambda q, k, v: fa4.attention(q, k, v, scale=scale, causal=True),
              "sdpa-cudnn": sdpa_on(SDPBackend.CUDNN_ATTENTION), "sdpa-flash2": sdpa_on(SDPBackend.FLASH_ATTENTION)}
    windowed = {"fa4": lambda q, k, v: fa4.attention(q, k, v, scale=scale, causal=True, window_left=window),
                "cudnn": lambda q, k, v: cudnn_sdpa.attention(q, k, v, scale=scale, causal=True, window_left=window),
                "triton": lambda q, k, v: fused_attention(q, k, v, scale=scale, causal=True, window=(window, None))}
    rows = []
    for pattern, impls, ns in (("causal", causal, lengths), (f"window {window}", windowed, window_lengths)):
        for n in ns:
            q, k, v = inputs(n)
            grad = torch.randn_like(q)
            for name, impl in impls.items():
                call = functools.partial(impl, q, k, v)
                row = {"pattern": pattern, "N": n, "impl": name, "fwd_us": round(microseconds(call, None), 1),
                       "fwd_bwd_us": round(microseconds(call, grad), 1)}
                rows.append(row)
                print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for fa4_calls.json and fa4_calls.md")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--window-lengths", default="4096,16384")
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args(argv)
    for backend in (fa4, cudnn_sdpa):
        if backend.unavailable_reason() is not None:
            raise SystemExit(backend.unavailable_reason())
    env = {"gpu": device_name(torch.device("cuda")), **versions("torch", "triton", "cuda"), "date": timestamp()}
    rows = measure([int(n) for n in args.lengths.split(",")], [int(n) for n in args.window_lengths.split(",")],
                   args.window)
    cells = [(row["pattern"], row["N"], row["impl"], row["fwd_us"], row["fwd_bwd_us"]) for row in rows]
    text = "\n".join([
        f"# FlashAttention-4 per call: {env['gpu']}", "", versions_line(env, ("torch", "triton", "cuda")), "",
        f"Llama-1B shapes: {HEADS} heads over {KV_HEADS}, head size {HEAD_DIM}, bf16, batch 1; median microseconds.",
        "", *table(["pattern", "N", "impl", "forward (us)", "forward + backward (us)"], cells, "lrlrr"), ""])
    results = {"env": env, "rows": rows}
    save_report(Path(args.out), "fa4_calls", results, text)
    print(text)
    return results


if __name__ == "__main__":
    main()
