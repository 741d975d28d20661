r"""A static cache's decoding step, attention alone: every way of computing the masked call, one run.

    python benchmarks/static_step.py --out benchmarks/results/static-step-h200      # CUDA

A static cache hands each decoding step all of its slots, so the step needs a mask (causality by
position). With grouped-query heads (Llama-1B: 32 query / 8 key-value heads, head_dim 64, bf16) there
are several ways to run it; each is timed as 16 layers (keys and values of their own) captured in one
CUDA graph, as compiled decoding replays it, in us per layer:

* ``repeat + mask``: keys and values repeated per query head, then SDPA under the mask (transformers'
  SDPA path);
* ``gqa + mask``: SDPA under the mask with ``enable_gqa`` (the heads as they are; ours where
  `sdpa_support.fuses_masked_call` says a fused kernel takes it);
* ``folded + mask``: each group's query heads as queries of their key/value head, under the mask;
* ``decode kernel + mask``: our split-key decode kernel with the mask as its key mask;
* ``decode kernel, valid keys`` and ``sdpa, valid keys``: both without a mask over only the written
  slots (what a growing cache does), the floor;
* ``sdpa without cudnn, valid keys``: the same SDPA call with cuDNN switched off
  (`sdpa_support.without_cudnn`), as our eager decoding over a growing cache runs it so that no cuDNN
  graph is built per new length (`dispatch.leaves_cudnn_out`): FlashAttention-2 or the memory-efficient
  kernel.

Writes static_step.json and static_step.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.store import save_report  # noqa: E402
from hf_efficient_attn.kernels import ops  # noqa: E402
from hf_efficient_attn.sdpa_support import without_cudnn  # noqa: E402

LAYERS = 16
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 64
SHAPES = [(1, 4096 + 32), (1, 32768 + 32), (16, 4096 + 32), (16, 32768 + 32)]  # batch, cache slots
UNWRITTEN = 20  # slots ahead of the newest token


def graph_us_per_layer(work: Callable[[], object], replays: int = 20) -> float:
    """Best of five timings of ``replays`` replays of ``work`` captured in a CUDA graph, per layer."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            work()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        work()
    graph.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1000 / replays / LAYERS)
    return best


def ways(batch: int, slots: int) -> dict[str, Callable[[], object]]:
    groups = Q_HEADS // KV_HEADS
    layers = [(torch.randn(batch, KV_HEADS, slots, HEAD_DIM, device="cuda", dtype=torch.bfloat16),
               torch.randn(batch, KV_HEADS, slots, HEAD_DIM, device="cuda", dtype=torch.bfloat16))
              for _ in range(LAYERS)]
    query = torch.randn(batch, Q_HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    written = slots - UNWRITTEN
    newest = torch.tensor([written - 1], device="cuda")
    slot_positions = torch.arange(slots, device="cuda")
    scale = HEAD_DIM ** -0.5

    def mask() -> torch.Tensor:  # made in the step, as the model makes it
        return (slot_positions[None, :] <= newest[:, None])[None, None]

    def repeated(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:, :, None].expand(batch, KV_HEADS, groups, slots, HEAD_DIM).reshape(batch, Q_HEADS, slots,
                                                                                           HEAD_DIM)

    def repeat_mask():
        visible = mask()
        for key, value in layers:
            F.scaled_dot_product_attention(query, repeated(key), repeated(value), attn_mask=visible, scale=scale)

    def gqa_mask():
        visible = mask()
        for key, value in layers:
            F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale, enable_gqa=True)

    def folded_mask():
        visible = mask()
        folded = query.reshape(batch, KV_HEADS, groups, HEAD_DIM)
        for key, value in layers:
            F.scaled_dot_product_attention(folded, key, value, attn_mask=visible, scale=scale)

    def decode_mask():
        key_mask = mask()[:, 0, 0, :].expand(batch, slots)
        for key, value in layers:
            ops.decode_attention(query, key, value, scale=scale, key_padding=key_mask)

    def decode_valid():
        for key, value in layers:
            ops.decode_attention(query, key[:, :, :written], value[:, :, :written], scale=scale)

    def attend_valid(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, key[:, :, :written], value[:, :, :written], scale=scale,
                                              enable_gqa=True)

    attend_valid_without_cudnn = without_cudnn(attend_valid)

    def sdpa_valid():
        for key, value in layers:
            attend_valid(query, key, value)

    def sdpa_valid_without_cudnn():
        for key, value in layers:
            attend_valid_without_cudnn(query, key, value)

    return {"repeat + mask": repeat_mask, "gqa + mask": gqa_mask, "folded + mask": folded_mask,
            "decode kernel + mask": decode_mask, "decode kernel, valid keys": decode_valid,
            "sdpa, valid keys": sdpa_valid, "sdpa without cudnn, valid keys": sdpa_valid_without_cudnn}


def run() -> dict:
    rows = []
    for batch, slots in SHAPES:
        cells = {}
        for name, work in ways(batch, slots).items():
            try:
                cells[name] = round(graph_us_per_layer(work), 2)
            except Exception as error:  # noqa: BLE001 - a way a backend refuses is a result
                cells[name] = f"error: {type(error).__name__}: {str(error)[:100]}"
        rows.append({"batch": batch, "slots": slots, "us_per_layer": cells})
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    import triton

    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cudnn": str(torch.backends.cudnn.version())}
    return {"env": env, "command": "python benchmarks/static_step.py " + " ".join(sys.argv[1:]), "rows": rows}


def markdown(results: dict) -> str:
    env = results["env"]
    names = list(results["rows"][0]["us_per_layer"])
    lines = [f"{env['device']}, torch {env['torch']}, triton {env['triton']}, cuDNN {env['cudnn']}; "
             f"`{results['command']}`", "",
             f"us per layer (lower is better), {Q_HEADS}/{KV_HEADS} heads, head_dim {HEAD_DIM}, bf16, {LAYERS} "
             "layers in one CUDA graph.", "", "| batch | cache slots | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    for row in results["rows"]:
        cells = [str(row["us_per_layer"][name]) for name in names]
        lines.append(f"| {row['batch']} | {row['slots']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/static-step"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark times CUDA graphs; run it on a CUDA device")
    results = run()
    text = markdown(results)
    save_report(args.out, "static_step", results, text)
    print(text)
    return results


if __name__ == "__main__":
    main()
