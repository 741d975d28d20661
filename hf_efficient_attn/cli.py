"""The `hf-efficient-attn` command."""

from __future__ import annotations

import argparse
import sys

import torch

from .assets.cli import add_fetch_assets_command, run_fetch_assets_command
from .eval.cli import add_eval_command, run_eval_command

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-efficient-attn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run every variant on one model and compare with the unpatched model")
    demo.add_argument("--model", default=None, help="local checkpoint folder (default: a small random-weight Llama)")
    demo.add_argument("--length", type=int, default=1024, help="tokens per sequence (default 1024)")
    demo.add_argument("--batch", type=int, default=2, help="sequences per batch (default 2)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    add_eval_command(commands)
    add_fetch_assets_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        return run_eval_command(args)
    if args.command == "fetch-assets":
        return run_fetch_assets_command(args)
    if args.command == "demo":
        from .demo import format_table, load_model, run_demo

        if args.length < 1 or args.batch < 1:
            print("error: --length and --batch must be positive", file=sys.stderr)
            return 2
        device = torch.device(args.device)
        model = load_model(args.model, device, DTYPES[args.dtype])
        print(f"model: {args.model or 'default small Llama (random weights)'}, device: {device}, dtype: {args.dtype}, "
              f"batch {args.batch} × {args.length} tokens")
        print(format_table(run_demo(model, args.length, args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
