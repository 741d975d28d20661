r"""The block-layout forward kernel per configuration, against the dense forward and SDPA.

    python benchmarks/layout_configs.py --out benchmarks/results/layout-configs   # on a GPU, about 2 minutes
    python benchmarks/layout_configs.py --out /tmp/layout --tiny                   # the whole path on the CPU

A layout that keeps nearly every block pair (`native.py`'s layout of 128-token blocks, 8 local, 1 global
and 2 random over Whisper's 1500 positions keeps 98.6%) should cost the block-layout kernel about what the
dense kernel costs for all the pairs. This measures how far it is from that, and which configuration of
the block-layout forward (warps, pipeline stages, query x key tile) closes the gap. Per shape, forward
only, no gradient, median ms of a warm call:

  sdpa                      torch SDPA over every pair (its default backend: cuDNN on Hopper); not exact
                            under the layout, the floor to reach
  dense kernel              our forward with no layout (every pair, autotuned)
  layout, every block       our block-layout forward with a layout allowing every block pair (autotuned)
  layout                    our block-layout forward under the layout (autotuned; what `sparse` runs)
  layout wW sS tile MxN     the same with one configuration forced

Every forced configuration's output is checked against float64 attention under the layout (max abs
error, in the table). Writes layout_configs.json and layout_configs.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

if "--tiny" in sys.argv:  # the kernels run in Triton's interpreter on the CPU: set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.checks import failure, max_abs_error  # noqa: E402
from benchmarks.harness.environment import device_name, timestamp, versions  # noqa: E402
from benchmarks.harness.markdown import table, versions_line  # noqa: E402
from benchmarks.harness.store import save_report  # noqa: E402
from benchmarks.harness.timing import call_ms  # noqa: E402
from benchmarks.native_sizes.rows import SPARSE  # noqa: E402

SCALE = 0.125
TINY_LAYOUT = {**SPARSE, "block_size": 16, "local_blocks": 1}
"""`native.py`'s layout made sparse enough for the tiny shapes' six blocks to leave pairs out."""
# name: (query shape, key/value shape, causal, the sparse variant's layout options)
SHAPES = {
    "Whisper encoder 1500, batch 4": ((4, 20, 1500, 64), (4, 20, 1500, 64), False, SPARSE),
    "Llama-1B prefill 2k": ((1, 32, 2048, 64), (1, 8, 2048, 64), True, SPARSE),
}
TINY_SHAPES = {"tiny bidirectional": ((1, 2, 96, 32), (1, 2, 96, 32), False, TINY_LAYOUT),
               "tiny causal": ((1, 2, 96, 32), (1, 1, 96, 32), True, TINY_LAYOUT)}
CONFIGS = [(warps, stages, tile) for warps, stages in ((4, 3), (8, 3), (8, 2), (4, 2))
           for tile in ((128, 64), (128, 128), (64, 64))]
TINY_CONFIGS = [(4, 1, (16, 16)), (4, 1, (32, 16))]


def layout_names(options: dict) -> tuple[str, str]:
    """The layout of the sparse variant with ``options`` and one allowing every block pair, registered
    under their names."""
    from hf_efficient_attn.variants import block_layout as layouts
    from hf_efficient_attn.variants.sparse import SparseOptions

    pattern = SparseOptions(**options).block_layout()
    native = layouts.register_layout(f"bench:{pattern}", lambda blocks, causal: pattern.build(blocks, blocks, causal)[None])
    every = layouts.register_layout("bench:every", lambda blocks, causal: torch.ones(1, blocks, blocks, dtype=torch.bool))
    return native, every


def launch(layout: str | None, causal: bool, blocks: int, block: int):
    from hf_efficient_attn.kernels.ops import DenseLaunch

    return DenseLaunch(scale=SCALE, causal=causal, window=(None, None), sink_tokens=0, global_tokens=0, layout=layout,
                       layout_blocks=blocks, layout_block_size=block, key_padding=None, documents=None)


@contextlib.contextmanager
def forced(warps: int, stages: int, tile: tuple[int, int]) -> Iterator[None]:
    """The block-layout forward with one configuration and query x key tile, instead of its tuned ones."""
    import triton

    from hf_efficient_attn.kernels import flash

    tuned, tiles = flash._fwd_sparse, flash.sparse_tiles
    flash._fwd_sparse = flash._tuned(flash._attn_fwd, [triton.Config({}, num_warps=warps, num_stages=stages)])
    flash.sparse_tiles = lambda layout_block_size: (tile, tiles(layout_block_size)[1])
    try:
        yield
    finally:
        flash._fwd_sparse, flash.sparse_tiles = tuned, tiles


def reference(q, k, v, causal: bool, layout: str, blocks: int, block: int) -> torch.Tensor:
    """float64 attention under the layout (and causality)."""
    from hf_efficient_attn.variants import block_layout as layouts

    n = q.shape[-2]
    allowed = layouts.layout_for(layout, blocks, causal, q.device)[0, :blocks, :blocks]
    index = torch.arange(n, device=q.device) // block
    visible = allowed[index][:, index]
    if causal:
        visible = visible & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    groups = q.shape[1] // k.shape[1]
    k64, v64 = (x.double().repeat_interleave(groups, 1) for x in (k, v))
    return F.scaled_dot_product_attention(q.double(), k64, v64, attn_mask=visible, scale=SCALE)


def measure_shape(shape: tuple, configs: list, device: torch.device, dtype: torch.dtype) -> dict:
    from hf_efficient_attn.variants import block_layout as layouts

    q_shape, kv_shape, causal, options = shape
    block = options["block_size"]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=generator).to(device, dtype) for s in (q_shape, kv_shape, kv_shape))
    blocks = -(-q_shape[2] // block)
    native, every = layout_names(options)
    expected = reference(q, k, v, causal, native, blocks, block)
    gqa = q_shape[1] != kv_shape[1]
    row: dict[str, object] = {
        "sdpa": call_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=SCALE, enable_gqa=gqa),
                        device)}
    for label, layout, layout_blocks in (("dense kernel", None, 0), ("layout, every block", every, blocks),
                                         ("layout", native, blocks)):
        run = launch(layout, causal, layout_blocks, block)
        row[label] = call_ms(lambda run=run: run(q, k, v), device)
    errors = {}
    for warps, stages, tile in configs:
        label = f"layout w{warps} s{stages} tile {tile[0]}x{tile[1]}"
        try:
            with forced(warps, stages, tile):
                run = launch(native, causal, blocks, block)
                errors[label] = max_abs_error(run(q, k, v), expected)
                row[label] = call_ms(lambda run=run: run(q, k, v), device)
        except Exception as error:  # noqa: BLE001 - a configuration this GPU cannot run (shared memory)
            row[label] = failure(error)
    return {"density": layouts.density(native, blocks), "times": row, "errors": errors}


def report(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Block-layout forward per configuration: {env['device']}", "",
             f"{versions_line(env)}, {env['dtype']}, {env['date']}. Median ms of a warm call (max abs error "
             "against float64 under the layout).", ""]
    for name, shape in results["shapes"].items():
        times, errors = shape["times"], shape["errors"]
        lines += [f"## {name}", "", f"The layout keeps {shape['density']:.1%} of the block pairs of a "
                  "bidirectional call.", ""]
        cells = []
        for label, value in times.items():
            shown = f"{value:.3f}" if isinstance(value, float) else value
            cells.append((label, shown + (f" ({errors[label]:.1e})" if label in errors else "")))
        lines += table(("column", "ms"), cells, "lr") + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU (interpreted kernels)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shapes, configs = (TINY_SHAPES, TINY_CONFIGS) if args.tiny else (SHAPES, CONFIGS)
    results = {"environment": {"device": device_name(device), "dtype": str(dtype).removeprefix("torch."),
                               "date": timestamp(), **versions("torch", "transformers", "triton")},
               "shapes": {}}
    for name, shape in shapes.items():
        results["shapes"][name] = measure_shape(shape, configs, device, dtype)
        save_report(args.out, "layout_configs", results, report(results))
        print(report(results).split(f"## {name}")[1], flush=True)


if __name__ == "__main__":
    main()
