r"""Eager decoding over lengths met for the first time against lengths met before, with SDPA's cuDNN backend
and without it: what cuDNN's graph per shape costs a decoding step, and what our rule
(`dispatch.leaves_cudnn_out`) does about it. One process, one run.

    python benchmarks/new_lengths.py --out benchmarks/results/new-lengths-h200     # CUDA
    python benchmarks/new_lengths.py --out /tmp/new-lengths --tiny                  # CPU smoke check

Llama-3.2-1B shapes (random weights, bf16) decode ``--steps`` tokens greedily after a prompt, in this
order, each row on a prompt of its own length (so no row meets another's shapes) except where it says
"again":

* ``unpatched, new lengths``: transformers' SDPA path as it is (cuDNN first, on Hopper);
* ``unpatched, same lengths again``: the previous row's prompt once more, every shape met before;
* ``unpatched, cuDNN off, new lengths``: SDPA limited to FlashAttention and its memory-efficient kernel;
* ``flash, new lengths`` and ``flash, same lengths again``: our exact variant, whose rule leaves cuDNN
  out for these steps.

A cell is the median and the fastest of the step times (the device drained after each step, the
prompt not counted). Writes new_lengths.json and new_lengths.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.store import save_report  # noqa: E402
from hf_efficient_attn import patch_model, unpatch_model  # noqa: E402
from hf_efficient_attn.compat import model_cache_keyword, output_cache  # noqa: E402

ROWS = (
    ("unpatched, new lengths", None, False, False),
    ("unpatched, same lengths again", None, True, False),
    ("unpatched, cuDNN off, new lengths", None, False, True),
    ("flash, new lengths", "flash", False, False),
    ("flash, same lengths again", "flash", True, False),
)
"""(row, our variant or None, the previous row's prompt again, SDPA without cuDNN)."""


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    """Random weights of Llama-3.2-1B's shapes, or a tiny Llama for the smoke check."""
    torch.manual_seed(0)
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256) if tiny else
             dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0))
    config = transformers.LlamaConfig(**shape, max_position_embeddings=131072, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def step_times(model: torch.nn.Module, prompt: int, steps: int, device: torch.device, cudnn_off: bool) -> list[float]:
    """Milliseconds of each greedy decoding step after a prompt of ``prompt`` tokens."""
    ids = torch.randint(1, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(prompt))
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    times = []
    with torch.no_grad():
        out = model(ids.to(device), use_cache=True)
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        keyword = model_cache_keyword(model)
        for _ in range(steps):
            synchronize(device)
            start = time.perf_counter()
            if cudnn_off:
                with sdpa_kernel(backends):
                    out = model(token, use_cache=True, **{keyword: cache})
            else:
                out = model(token, use_cache=True, **{keyword: cache})
            token = out.logits[:, -1:].argmax(-1)
            synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    model = build(args.tiny, device, dtype)
    prompt, stride = args.prompt, args.steps + 2
    results = {"env": {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()})",
                       "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype),
                       "cudnn": torch.backends.cudnn.version(), "command": args.command},
               "prompt": args.prompt, "steps": args.steps, "rows": []}
    for name, variant, again, cudnn_off in ROWS:
        if not again:
            prompt += stride  # past every length an earlier row reached
        if variant is not None:
            patch_model(model, variant)
        try:
            times = step_times(model, prompt, args.steps, device, cudnn_off)
        finally:
            if variant is not None:
                unpatch_model(model)
        row = {"row": name, "prompt": prompt, "median_ms": statistics.median(times), "min_ms": min(times)}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    return results


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [f"# Eager decoding over new and seen lengths: {env['device']}", "",
             f"torch {env['torch']}, transformers {env['transformers']}, cuDNN {env['cudnn']}, {env['dtype']}; "
             f"`{env['command']}`. {results['steps']} greedy steps after a prompt of about {results['prompt']} "
             "tokens, ms per step.", "", "| row | prompt | median | fastest |", "|---|---:|---:|---:|"]
    lines += [f"| {row['row']} | {row['prompt']} | {row['median_ms']:.2f} | {row['min_ms']:.2f} |"
              for row in results["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for new_lengths.json and new_lengths.md")
    parser.add_argument("--prompt", type=int, default=3000, help="tokens before the first row's prompt")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU (a smoke check)")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/new_lengths.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run(args)
    save_report(args.out, "new_lengths", results, markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
