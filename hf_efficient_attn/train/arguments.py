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
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from .config import MIXED_PRECISION, RECIPES, TrainConfig, training_folder

CONFIG_FLAG_ALIASES = {"learning_rate": ("--lr",), "gradient_accumulation_steps": ("--grad-accum",),
                       "distill_weight": ("--distill",)}
"""Short spellings kept beside a `TrainConfig` field's own flag."""
RUN_FIELDS = ("output_dir", "seed")
"""`TrainConfig` fields the recovery arguments set otherwise: the run's folder follows ``--output-dir``
(``<output-dir>/training``; with ``--seeds``, each seed's ``<output-dir>/training/seed-<n>``), the seed
comes with ``--seed`` / ``--seeds``."""


def recovery_parser(description: str, *, model: str, variant: str, window: int | None, steps: int, learning_rate: float,
                    batch_size: int, options: tuple[str, ...] = (),
                    parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The shared arguments, with a task's defaults: ``model`` is an asset name, ``options`` default
    ``KEY=VALUE``s. Every `TrainConfig` field is a flag of its own name (``--lora-dropout``,
    ``--train-norms/--no-train-norms``, ...); fills ``parser`` when given (a subcommand's)."""
    parser = parser or argparse.ArgumentParser(description=description,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=model, help=f"checkpoint folder, Hub name or asset name (default: the {model} asset)")
    parser.add_argument("--variant", default=variant, help=f"attention variant to patch in (default {variant})")
    parser.add_argument("--window", type=int, default=window, help=f"window of variants that have one (default {window})")
    parser.add_argument("--variant-option", "--variant-options", dest="variant_option", nargs="+", action="extend",
                        default=[], metavar="KEY=VALUE",
                        help=f"other variant options, repeatable (default, where the variant has the option: {' '.join(options) or 'none'})")
    parser.set_defaults(default_options=list(options))
    add_config_arguments(parser, steps=steps, learning_rate=learning_rate, batch_size=batch_size)
    parser.add_argument("--train-data", help="training data (default: the task's training asset; layouts: hf_efficient_attn.train.data)")
    parser.add_argument("--eval-data", help="evaluation data (default: the task's held-out evaluation data)")
    parser.add_argument("--max-eval-samples", type=int, help="score only the first N documents, clips or images (default: all)")
    parser.add_argument("--output-dir", default="recovery",
                        help="report, and the training run (checkpoints, trackers' files) in <output-dir>/training (default ./recovery)")
    parser.add_argument("--control", action="store_true", help="also fine-tune the unpatched model (the honest comparison)")
    parser.add_argument("--evaluate-as", action="append", default=[], metavar="VARIANT[,KEY=VALUE...]",
                        help="also score the original and the fine-tuned weights with this attention, repeatable: 'unpatched' "
                             "(the model's own attention) or a variant and its options, e.g. sliding,window=1024,sink_tokens=4")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="seeds the data order, dropout and initialisation (default 0)")
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="N",
                       help="run once per seed, e.g. --seeds 0 1 2: each seed's report in <output-dir>/seed-N, the mean, "
                            "standard deviation and range of every score in <output-dir>/recovery-seeds.json and .md")
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """One flag per `TrainConfig` field (but `RUN_FIELDS`), named after it, its help from the field's
    documentation; ``defaults`` replace the dataclass's defaults. ``--lora-alpha`` defaults to twice
    ``--lora-rank``; ``--mixed-precision`` to the launcher's setting."""
    documented = field_documentation(TrainConfig)
    group = parser.add_argument_group("training (hf_efficient_attn.train.TrainConfig)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in RUN_FIELDS:
            continue
        default = defaults.get(field.name, field.default if field.default is not dataclasses.MISSING else None)
        names = (f"--{field.name.replace('_', '-')}", *CONFIG_FLAG_ALIASES.get(field.name, ()))
        text = documented.get(field.name, "").replace("%", "%%")
        if field.name == "lora_alpha":
            group.add_argument(*names, dest=field.name, type=int, default=None,
                               help=f"{text} (default: twice --lora-rank)")
        elif field.type == "bool":
            group.add_argument(*names, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{text} (default: {'on' if default else 'off'})")
        elif field.name == "report_to":
            group.add_argument(*names, dest=field.name, nargs="*", default=list(default), metavar="TRACKER",
                               help=f"{text} (default: none)")
        elif field.name in ("recipe", "mixed_precision"):
            choices = [choice for choice in (RECIPES if field.name == "recipe" else MIXED_PRECISION) if choice]
            shown = "the launcher's" if default is None else default
            group.add_argument(*names, dest=field.name, choices=choices, default=default, help=f"{text} (default: {shown})")
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
            group.add_argument(*names, dest=field.name, type=kind, default=default, help=f"{text} (default: {default})")


def field_documentation(cls: type) -> dict[str, str]:
    """The text of each attribute in a dataclass's ``Attributes:`` docstring section, on one line."""
    section = (cls.__doc__ or "").partition("Attributes:")[2]
    texts: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        entry = re.match(r"\s{8}(\w+): (.*)", line)
        if entry:
            name = entry.group(1)
            texts[name] = entry.group(2).strip()
        elif name and line.strip():
            texts[name] += " " + line.strip()
    return {key: re.sub(r"``?([^`]+)``?", r"\1", text) for key, text in texts.items()}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` the parsed arguments describe. Its run folder is ``<output-dir>/training`` (a
    single run's checkpoints; with ``--seeds``, `seeds.run_seeds` gives each seed ``training/seed-<n>``),
    so ``--save-every`` and ``--resume``, which need one, are valid with or without ``--seeds``."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)
              if field.name not in RUN_FIELDS}
    if values["lora_alpha"] is None:
        values["lora_alpha"] = 2 * values["lora_rank"]
    values["report_to"] = tuple(values["report_to"])
    return TrainConfig(**values, seed=args.seed, output_dir=training_folder(args.output_dir))


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
    config = config_from_args(args)
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
