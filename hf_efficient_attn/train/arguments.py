"""The command-line arguments that the recovery scripts in ``examples/`` share, and the run they describe.

A script builds its parser with `recovery_parser` (giving its task's defaults), adds the arguments
only its task has, and hands the parsed arguments to `run_from_args`, which calls `run_recovery`.
Variant options are read as ``hf-efficient-attn eval`` reads them (`eval.cli.variant_configs`):
``--variant-option KEY=VALUE``, values parsed as JSON where they parse, unknown options refused. A
script's default options and ``--window`` apply only to variants that have that option, so
``--variant lowrank`` works without clearing the sliding window's defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from .config import RECIPES, TrainConfig


def recovery_parser(description: str, *, model: str, variant: str, window: int | None, steps: int, learning_rate: float,
                    batch_size: int, options: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The shared arguments, with a script's defaults: ``model`` is an asset name, ``options`` default ``KEY=VALUE``s."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=model, help=f"checkpoint folder, Hub name or asset name (default: the {model} asset)")
    parser.add_argument("--variant", default=variant, help=f"attention variant to patch in (default {variant})")
    parser.add_argument("--window", type=int, default=window, help=f"window of variants that have one (default {window})")
    parser.add_argument("--variant-option", action="append", default=[], metavar="KEY=VALUE",
                        help=f"other variant options, repeatable (default, where the variant has the option: {' '.join(options) or 'none'})")
    parser.set_defaults(default_options=list(options))
    parser.add_argument("--recipe", choices=RECIPES, default="lora",
                        help="lora; transfer: attention transfer, then LoRA (low-rank / linear variants); full (default lora)")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    parser.add_argument("--lr", type=float, default=learning_rate, help=f"peak learning rate (default {learning_rate})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"samples per device and micro-batch (default {batch_size})")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--data-workers", type=int, default=0,
                        help="DataLoader processes preparing samples while the model trains (default 0: in the training process)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no", help="(default no)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the LoRA adapters (default 16)")
    parser.add_argument("--lora-mlp", action="store_true", help="also put LoRA on the MLP projections (default: attention only)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps before the cosine decay (default 0)")
    parser.add_argument("--distill", type=float, default=0.0, metavar="WEIGHT",
                        help="weight of distillation from the unpatched model, 0..1 (default 0: the labels alone)")
    parser.add_argument("--transfer-steps", type=int, default=100, help="transfer recipe: attention-transfer steps (default 100)")
    parser.add_argument("--eval-every", type=int, default=0, help="score the model every N steps (default 0: before and after)")
    parser.add_argument("--train-data", help="training data (default: the task's training asset; layouts: hf_efficient_attn.train.data)")
    parser.add_argument("--eval-data", help="evaluation data (default: the task's held-out evaluation data)")
    parser.add_argument("--max-eval-samples", type=int, help="score only the first N documents, clips or images (default: all)")
    parser.add_argument("--output-dir", default="recovery", help="report and checkpoints (default ./recovery)")
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default 0: at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    parser.add_argument("--control", action="store_true", help="also fine-tune the unpatched model (the honest comparison)")
    parser.add_argument("--seed", type=int, default=0, help="(default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run_from_args(args: argparse.Namespace, *, seq_len: int | None = None, augment: bool = False,
                  eval_options: dict[str, Any] | None = None):
    """Run `run_recovery` as ``args`` (from `recovery_parser`) describe; return its `RecoveryReport`.

    ``seq_len`` and ``augment`` are the task's training-data options (see `recovery.task_setup`);
    ``eval_options`` its metric options beyond ``--max-eval-samples`` (see `evaluators`).
    """
    from ..eval.cli import variant_configs
    from .recovery import run_recovery

    accepted = _accepted_options(args.variant)
    given = {pair.partition("=")[0] for pair in args.variant_option}
    defaults = [pair for pair in args.default_options if pair.partition("=")[0] in accepted - given]
    window = str(args.window) if args.window is not None and "window" in accepted - given else None
    [patch] = variant_configs([args.variant], window, defaults + args.variant_option)
    config = TrainConfig(
        recipe=args.recipe, steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, data_workers=args.data_workers, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank,
        lora_mlp=args.lora_mlp, warmup_steps=args.warmup_steps, distill_weight=args.distill,
        transfer_steps=args.transfer_steps, eval_every=args.eval_every, save_every=args.save_every, resume=args.resume,
        seed=args.seed, progress=not args.no_progress,
    )
    return run_recovery(
        _model_source(args.model), patch.variant, patch.options, config, train_data=args.train_data, eval_data=args.eval_data,
        seq_len=seq_len, augment=augment, eval_options={"max_samples": args.max_eval_samples, **(eval_options or {})},
        control=args.control, out_dir=args.output_dir,
    )


def _accepted_options(variant: str) -> set[str]:
    """The `patch_model` keywords ``variant`` takes (empty for an unknown variant, which `variant_configs` refuses)."""
    from dataclasses import fields

    from ..eval.cli import PATCH_ARGUMENTS
    from ..variants import VARIANTS

    if variant not in VARIANTS:
        return set()
    return {field.name for field in fields(VARIANTS[variant].options_class)} | set(PATCH_ARGUMENTS)


def _model_source(model: str) -> str:
    """An asset's folder for an asset name, anything else as given."""
    from ..assets import ASSETS, asset_path

    return str(asset_path(model)) if model in ASSETS else model
