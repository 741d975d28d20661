"""The ``hf-efficient-attn`` command: ``demo``, ``eval``, ``fetch-assets`` and ``recover``.

Each command's module declares its arguments with the standard library only, and its run function
imports what the command needs (torch, transformers, datasets), so ``--help`` and mistyped arguments
are answered at once. A command is one entry of `COMMANDS`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from .assets.cli import add_fetch_assets_command, run_fetch_assets_command
from .demo_cli import add_demo_command, run_demo_command
from .eval.cli import add_eval_command, run_eval_command
from .train.command import add_recover_command, run_recover_command

AddCommand = Callable[[argparse._SubParsersAction], None]
RunCommand = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[AddCommand, RunCommand]] = {
    "demo": (add_demo_command, run_demo_command),
    "eval": (add_eval_command, run_eval_command),
    "fetch-assets": (add_fetch_assets_command, run_fetch_assets_command),
    "recover": (add_recover_command, run_recover_command),
}
"""Each subcommand: the function that adds its parser (under this name) and the one that runs it and
returns the exit status."""

DESCRIPTION = (
    "Efficient attention for Hugging Face models: compare every variant on one model (demo), evaluate "
    "variants against the unpatched model on real data (eval), build the models and data they use "
    "by default (fetch-assets), fine-tune a patched model and measure what it recovers (recover). See "
    "'hf-efficient-attn COMMAND --help'."
)


def plain_text(text: str) -> str:
    """``text`` without the backquotes of docstring markup (````literal````, ```name```), for a terminal."""
    return re.sub(r"`{1,2}([^`]+)`{1,2}", r"\1", text)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: every command of `COMMANDS`, with its help in plain text."""
    parser = argparse.ArgumentParser(prog="hf-efficient-attn", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(commands)
    for command in commands.choices.values():  # descriptions are module docstrings
        if command.description:
            command.description = plain_text(command.description)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the command, and return its exit status."""
    args = build_parser().parse_args(argv)
    _, run = COMMANDS[args.command]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
