"""`hf-efficient-attn eval`: a model unpatched and patched with variant configurations, on the same data.

    hf-efficient-attn eval --model PATH --data PATH --variant sliding --window 128,256,512
    hf-efficient-attn eval --model PATH --data PATH --variant full --variant sparse \\
        --variant-options sparse.block_size=64 sparse.local_blocks=2

Each ``--variant`` adds configurations: one per ``--window`` value for variants with a ``window``
option, else one. ``--variant-options KEY=VALUE`` applies to every variant that has option ``KEY``
(``layers`` and ``targets`` apply to all); ``VARIANT.KEY=VALUE`` to that variant only. Values are read
as JSON where they parse (``4``, ``true``, ``[0, 1]``), else as strings. The report (JSON, Markdown,
PNG) goes to ``--out``; the exit status is 2 for unusable input, 1 if a configuration failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PATCH_ARGUMENTS = ("layers", "targets")
"""Keyword arguments of `patch_model` that every variant takes besides its own options."""


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to the command line's subparsers."""
    command = commands.add_parser(
        "eval",
        help="evaluate a model unpatched and patched (perplexity, WER/CER or accuracy); write JSON, Markdown and a plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--model", help="checkpoint folder or Hub name (default: the task's default model asset)")
    command.add_argument("--data", help="data file, folder or Hub dataset name (default: the task's default data asset); "
                         "layouts: see hf_efficient_attn.eval.data")
    command.add_argument("--task", choices=["auto", "text", "speech", "vision"], default="auto",
                         help="what to evaluate; auto: from the model (default)")
    command.add_argument("--variant", action="append", default=[], help="a variant to compare (repeatable)")
    command.add_argument("--window", help="comma-separated windows for variants with a window option, e.g. 128,256,512")
    command.add_argument("--variant-options", nargs="+", action="extend", default=[], metavar="[VARIANT.]KEY=VALUE",
                         help="variant options, e.g. sink_tokens=4 sparse.block_size=64 targets=encoder")
    command.add_argument("--max-samples", type=int, help="evaluate only the first N samples (documents, clips, images)")
    command.add_argument("--split", default="test", help="split of a DatasetDict folder or Hub dataset (default test)")
    command.add_argument("--mode", choices=["strided", "document", "streaming"], default="strided",
                         help="text: strided windows over the joined text, each document in one forward, or the "
                         "joined text streamed chunk by chunk through the KV cache")
    command.add_argument("--chunk-size", type=int, default=256, help="text, streaming: tokens per forward (default 256)")
    command.add_argument("--positions", choices=["cache", "text"], default="cache",
                         help="text, streaming: rotary positions of variants with a bounded cache in every layer: "
                         "index in the cache (StreamingLLM, default) or in the text")
    command.add_argument("--max-tokens", type=int, help="text, streaming: score only the first N tokens of the stream")
    command.add_argument("--stretch", type=int, default=4096,
                         help="text, streaming: tokens per stretch of the perplexity against position (default 4096)")
    command.add_argument("--max-length", type=int, help="text: tokens per window or document (default min(1024, model context))")
    command.add_argument("--stride", type=int, help="text, strided: tokens between window starts (default max-length // 2)")
    command.add_argument("--min-tokens", type=int, help="text, document: score only documents of at least N tokens "
                         "(with N = --max-length, every document fills the context: the long-document measure)")
    command.add_argument("--batch-size", type=int, default=8, help="speech and vision: samples per batch (default 8)")
    command.add_argument("--max-new-tokens", type=int, help="speech: most tokens generated per transcript")
    command.add_argument("--language", help="speech: language of the audio for Whisper, e.g. en (default: detected)")
    command.add_argument("--no-normalize", action="store_true", help="speech: compare transcripts with case and punctuation")
    command.add_argument("--device", default=None, help="cuda if available, else cpu")
    command.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="float32")
    command.add_argument("--seed", type=int, default=0, help="seed for variants with random state (default 0)")
    command.add_argument("--out", default="eval-results", help="folder for the report (default eval-results)")
    command.add_argument("--no-progress", action="store_true", help="hide progress bars")


def option_value(text: str) -> Any:
    """A ``KEY=VALUE`` value: JSON where it parses (numbers, lists, true/false), the text otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def variant_configs(variants: list[str], windows: str | None, option_pairs: list[str]) -> list:
    """The `VariantConfig` list that ``--variant``, ``--window`` and ``--variant-options`` describe."""
    import dataclasses

    from ..variants import VARIANTS
    from .compare import VariantConfig
    from .errors import EvalInputError

    names = list(dict.fromkeys(variants))
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise EvalInputError(f"--variant {unknown[0]!r} is not a variant; choose from {', '.join(sorted(VARIANTS))}.")
    accepted = {name: {f.name for f in dataclasses.fields(VARIANTS[name].options_class)} | set(PATCH_ARGUMENTS) for name in names}
    options: dict[str, dict[str, Any]] = {name: {} for name in names}
    for pair in option_pairs:
        key, separator, value = pair.partition("=")
        scope, _, key = key.rpartition(".")
        if not separator or not key:
            raise EvalInputError(f"--variant-options {pair!r} is not KEY=VALUE or VARIANT.KEY=VALUE.")
        targets = [scope] if scope else [name for name in names if key in accepted[name]]
        if scope and scope not in names:
            raise EvalInputError(f"--variant-options {pair!r} names variant {scope!r}, which no --variant gives ({', '.join(names) or 'none'}).")
        if not targets or (scope and key not in accepted[scope]):
            raise EvalInputError(f"--variant-options {pair!r}: no chosen variant has an option {key!r}; see each variant's options class.")
        for name in targets:
            options[name][key] = option_value(value)
    sizes = _windows(windows)
    windowed = [name for name in names if "window" in accepted[name]]
    if sizes and not windowed:
        raise EvalInputError(f"--window {windows} was given, but none of the variants ({', '.join(names) or 'none'}) has a window option.")
    configs = []
    for name in names:
        if sizes and name in windowed:
            configs += [VariantConfig(name, {**options[name], "window": size}) for size in sizes]
        else:
            configs.append(VariantConfig(name, options[name]))
    return configs


def _windows(text: str | None) -> list[int]:
    from .errors import EvalInputError

    if text is None:
        return []
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise EvalInputError(f"--window {text!r} is not a comma-separated list of integers, e.g. 128,256,512.") from error
    if not sizes or min(sizes) < 1:
        raise EvalInputError(f"--window {text!r} must list positive integers, e.g. 128,256,512.")
    return sizes


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``eval`` with parsed arguments: print the table and report paths; return the exit status."""
    import torch
    import transformers

    from .compare import compare_variants
    from .data import load_eval_data
    from .defaults import default_source
    from .errors import EvalInputError
    from .models import load_eval_model
    from .perplexity import check_lengths
    from .report import comparison_markdown, write_report
    from .tasks import EvalSettings, evaluator_for

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    generate_kwargs = {key: value for key, value in (("max_new_tokens", args.max_new_tokens), ("language", args.language)) if value}
    try:
        settings = EvalSettings(
            max_length=args.max_length,
            stride=args.stride,
            min_tokens=args.min_tokens,
            mode=args.mode,
            chunk_size=args.chunk_size,
            positions=args.positions,
            max_tokens=args.max_tokens,
            stretch=args.stretch,
            batch_size=args.batch_size,
            normalize=not args.no_normalize,
            generate_kwargs=generate_kwargs,
            progress=not args.no_progress,
        )
        if args.mode == "streaming" and (args.max_length is not None or args.stride is not None):
            raise EvalInputError("--max-length and --stride set strided and document windows; --mode streaming reads "
                                 "the whole stream: give --chunk-size (tokens per forward) and --max-tokens instead.")
        if args.min_tokens is not None and args.mode != "document":
            raise EvalInputError("--min-tokens selects documents by length: use it with --mode document.")
        if args.max_length is not None:  # before the model and data load, which can take minutes
            check_lengths(args.max_length, args.stride)
        configs = variant_configs(args.variant, args.window, args.variant_options)
        if args.model is None and args.task == "auto":
            raise EvalInputError("--task auto takes the task from --model; give --model PATH, or --task text|speech|vision to use that task's default model.")
        data = load_eval_data(args.data, split=args.split, max_samples=args.max_samples) if args.data else None
        loaded = load_eval_model(args.model or default_source(args.task, "model"), task=args.task, device=device,
                                 dtype=getattr(torch, args.dtype))
        if data is None:
            data = load_eval_data(default_source(loaded.task, "data"), split=args.split, max_samples=args.max_samples)
        evaluation = evaluator_for(loaded, data, settings)
        context = {
            "model": loaded.source, "task": loaded.task, "data": data.source, "samples": len(data.dataset),
            "device": device, "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__,
        }
        comparison = compare_variants(
            loaded.model, evaluation.evaluate, configs, warm_up=evaluation.warm_up, context=context, seed=args.seed
        )
    except EvalInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_report(comparison, args.out)
    print(comparison_markdown(comparison))
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 1 if any(row.error for row in comparison.rows) else 0
