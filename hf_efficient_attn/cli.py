"""The `hf-efficient-attn` command: ``demo``, ``eval`` and ``fetch-assets``."""

from __future__ import annotations

import argparse
import sys

from .assets.cli import add_fetch_assets_command, run_fetch_assets_command
from .demo import add_demo_command, run_demo_command
from .eval.cli import add_eval_command, run_eval_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-efficient-attn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_command(commands)
    add_eval_command(commands)
    add_fetch_assets_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"demo": run_demo_command, "eval": run_eval_command, "fetch-assets": run_fetch_assets_command}[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
