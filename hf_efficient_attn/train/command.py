"""The ``hf-efficient-attn recover {causal-lm,whisper,vit}`` command: patch a model, fine-tune it
briefly, and see how much of its quality comes back (`recovery.run_recovery`).

    hf-efficient-attn recover causal-lm --variant sliding --window 256 --steps 200 --eval-every 25
    accelerate launch -m hf_efficient_attn.cli recover whisper --mixed-precision bf16 --control
    hf-efficient-attn recover vit --recipe full --steps 50

Each task has its defaults (a model asset, the variant and its options, steps, learning rate, batch
size) and its own data and scoring options; the shared options, every `TrainConfig` field among them,
come from `arguments.recovery_parser`. Building the parser imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .arguments import recovery_parser, run_from_args


@dataclass(frozen=True)
class RecoveryTask:
    """A task's defaults, its extra arguments, and how its parsed arguments become `run_from_args`' options."""

    summary: str
    model: str
    window: int
    steps: int
    learning_rate: float
    batch_size: int
    options: tuple[str, ...]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run_options: Callable[[argparse.Namespace], dict[str, Any]]


def _causal_lm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-len", type=int, help="tokens per training sample (default: min(1024, model context))")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="score the first N held-out tokens (default 65536)")
    parser.add_argument("--eval-length", type=int,
                        help="tokens per scored window of the strided perplexity (default: min(1024, model context))")


def _causal_lm_options(args: argparse.Namespace) -> dict[str, Any]:
    scoring = {"max_tokens": args.eval_tokens} | ({"max_length": args.eval_length} if args.eval_length else {})
    return {"seq_len": args.seq_len, "eval_options": scoring}


def _whisper_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int,
                        help="cap on the tokens generated per clip while scoring (default: Whisper's own limit); "
                             "bounds the time a heavily degraded model spends on long hallucinations")


def _whisper_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"eval_options": {"generate_kwargs": {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None}}


def _vit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--augment", action="store_true",
                        help="move each training image at random (shift up to 10%% of its side, rotate up to 10 degrees)")


def _vit_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"augment": args.augment}


TASKS: dict[str, RecoveryTask] = {
    "causal-lm": RecoveryTask(
        "a causal LM (default: the SmolLM2-135M asset, trained on seven eighths of the text-en documents, "
        "scored by strided perplexity on the held-out eighth)",
        "smollm2-135m", 256, 200, 2e-4, 4, (), _causal_lm_arguments, _causal_lm_options),
    "whisper": RecoveryTask(
        "Whisper's encoder (default: the whisper-tiny asset, trained on speech-en-train, scored by WER on "
        "speech-en, whose sentences it never hears in training)",
        "whisper-tiny", 64, 200, 1e-4, 16, ("targets=encoder",), _whisper_arguments, _whisper_options),
    "vit": RecoveryTask(
        "a ViT with local 2-D attention (default: the vit-mnist asset, fine-tuned on its 4000 training digits, "
        "scored by accuracy on the 1000 held-out test digits of images-mnist)",
        "vit-mnist", 3, 200, 1e-3, 64, ("neighbourhood=2d",), _vit_arguments, _vit_options),
}


def add_recover_command(commands: argparse._SubParsersAction) -> None:
    """Register ``recover`` and its tasks on the top-level command's subparsers."""
    command = commands.add_parser("recover", help="fine-tune a patched model and measure what it recovers",
                                  description=__doc__.split("\n\n")[0])
    tasks = command.add_subparsers(dest="task", required=True, metavar="{" + ",".join(TASKS) + "}")
    for name, task in TASKS.items():
        parser = tasks.add_parser(name, help=f"recover {task.summary}", description=f"Recover {task.summary}.")
        recovery_parser("", model=task.model, variant="sliding", window=task.window, steps=task.steps,
                        learning_rate=task.learning_rate, batch_size=task.batch_size, options=task.options, parser=parser)
        task.add_arguments(parser)


def run_recover_command(args: argparse.Namespace) -> int:
    """Run the parsed ``recover`` command; the report is written under ``--output-dir``."""
    run_from_args(args, **TASKS[args.task].run_options(args))
    return 0


def recover(task: str, argv: Sequence[str] | None = None) -> int:
    """``hf-efficient-attn recover <task> <argv...>`` from Python (the examples' entry point)."""
    parser = argparse.ArgumentParser(prog="hf-efficient-attn")
    add_recover_command(parser.add_subparsers(dest="command", required=True))
    return run_recover_command(parser.parse_args(["recover", task, *(argv or [])]))
