"""The command-line arguments that the recovery scripts in ``examples/`` share, and the run they describe.

A script builds its parser with `recovery_parser` (giving its task's defaults), adds the arguments
only its task has, and hands the parsed arguments to `run_from_args`, which calls `run_recovery`.
Variant options are read as ``hf-efficient-attn eval`` reads them (`eval.cli.variant_configs`):
``--variant-option KEY=VALUE``, values parsed as JSON where they parse, unknown options refused. A
script's default options and ``--window`` apply only to variants that have that option, so
``--variant lowrank`` works without clearing the sliding window's defaults.

``--evaluate-as VARIANT[,KEY=VALUE...]`` (repeatable; ``unpatched`` for the model's own attention)
scores the original and the fine-tuned weights under more attention configurations; values are read
the same way, and the script's default options (not ``--window``) apply where the variant has them.
``--seeds 0 1 2`` runs the recovery once per seed (`seeds.run_seeds`) instead of once with ``--seed``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
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
    parser.add_argument("--evaluate-as", action="append", default=[], metavar="VARIANT[,KEY=VALUE...]",
                        help="also score the original and the fine-tuned weights with this attention, repeatable: 'unpatched' "
                             "(the model's own attention) or a variant and its options, e.g. sliding,window=1024,sink_tokens=4")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="(default 0)")
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="N",
                       help="run once per seed, e.g. --seeds 0 1 2: each seed's report in <output-dir>/seed-N, the mean, "
                            "standard deviation and range of every score in <output-dir>/recovery-seeds.json and .md")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run_from_args(args: argparse.Namespace, *, seq_len: int | None = None, augment: bool = False,
                  eval_options: dict[str, Any] | None = None):
    """Run `run_recovery` as ``args`` (from `recovery_parser`) describe; return its `RecoveryReport`
    (with ``--seeds``: `seeds.run_seeds`, and its `SeedsReport`).

    ``seq_len`` and ``augment`` are the task's training-data options (see `recovery.task_setup`);
    ``eval_options`` its metric options beyond ``--max-eval-samples`` (see `evaluators`).
    """
    from ..eval.cli import variant_configs
    from .recovery import run_recovery
    from .seeds import run_seeds

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
    recovery = dict(
        train_data=args.train_data, eval_data=args.eval_data, seq_len=seq_len, augment=augment,
        eval_options={"max_samples": args.max_eval_samples, **(eval_options or {})}, control=args.control,
        evaluate_as=evaluate_as_entries(args.evaluate_as, args.default_options), out_dir=args.output_dir,
    )
    if args.seeds:
        return run_seeds(_model_source(args.model), patch.variant, patch.options, config, args.seeds, **recovery)
    return run_recovery(_model_source(args.model), patch.variant, patch.options, config, **recovery)


def evaluate_as_entries(texts: Sequence[str], default_options: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``--evaluate-as`` values as `run_recovery`'s ``evaluate_as``: ``"sliding,window=1024,sink_tokens=4"``
    becomes ``("sliding", {"window": 1024, "sink_tokens": 4})``, with ``default_options`` (``KEY=VALUE``)
    added where the variant has them and the value does not give them. A comma starts an option only
    before ``KEY=``, so ``layers=[0,1]`` stays one value; values are JSON where they parse, else text.
    """
    from ..eval.cli import option_value
    from ..variants import VARIANTS
    from .config import TrainError

    example = "e.g. --evaluate-as unpatched or --evaluate-as sliding,window=1024,sink_tokens=4"
    entries = []
    for text in texts:
        name, *pairs = (part.strip() for part in re.split(r",(?=\s*[A-Za-z_]\w*=)", text))
        if "," in name:
            raise TrainError(f"--evaluate-as {text!r}: {name.partition(',')[2]!r} is not KEY=VALUE; options follow the "
                             f"variant as ,KEY=VALUE, {example}.")
        if not name or "=" in name:
            raise TrainError(f"--evaluate-as {text!r} must start with a variant name or 'unpatched', {example}.")
        options: dict[str, Any] = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in options:
                raise TrainError(f"--evaluate-as {text!r} gives {key!r} twice; give each option once.")
            options[key] = option_value(value)
        if name in VARIANTS:
            accepted = _accepted_options(name)
            for pair in default_options:
                key, _, value = pair.partition("=")
                if key in accepted:
                    options.setdefault(key, option_value(value))
        entries.append((name, options))
    return entries


def _accepted_options(variant: str) -> set[str]:
    """The `patch_model` keywords ``variant`` takes (empty for an unknown variant, which `variant_configs` refuses)."""
    from ..variants import VARIANTS
    from .evaluate_as import option_names

    return option_names(variant) if variant in VARIANTS else set()


def _model_source(model: str) -> str:
    """An asset's folder for an asset name, anything else as given."""
    from ..assets import ASSETS, asset_path

    return str(asset_path(model)) if model in ASSETS else model
