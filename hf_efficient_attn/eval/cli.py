"""`hf-efficient-attn eval`: a model unpatched and patched with variant configurations, on the same data.

    hf-efficient-attn eval --model PATH --data PATH --variant sliding --window 128,256,512
    hf-efficient-attn eval --model PATH --data PATH --variant full --variant sparse \\
        --variant-option sparse.block_size=64 sparse.local_blocks=2

Each ``--variant`` adds configurations: one per ``--window`` value for variants with a ``window``
option, else one. ``--variant-option KEY=VALUE`` applies to every variant that has option ``KEY``
(``layers`` and ``targets`` apply to all); ``VARIANT.KEY=VALUE`` to that variant only. Values are read
as JSON where they parse (``4``, ``true``, ``[0, 1]``), else as strings.

The command says what it evaluates (model, data, and the windows, documents, clips or images of one
run) and, for the baseline and each configuration in turn, names it before it runs and prints its
result when it is done; the baseline's time gives an estimate of the rest. Without ``--data`` on the
CPU, text is scored over the start of the default data, which takes minutes where all of it takes
hours (`defaults.cpu_limits`), and the command says how much; ``--full`` scores all of it,
``--max-tokens`` or ``--max-samples`` another part. The report (JSON, Markdown, PNG) goes to
``--out``; the exit status is 2 for unusable input, 1 if a configuration failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compare import ComparisonRow

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
    command.add_argument("--variant-option", "--variant-options", dest="variant_options", nargs="+", action="extend",
                         default=[], metavar="[VARIANT.]KEY=VALUE",
                         help="variant options, e.g. sink_tokens=4 sparse.block_size=64 targets=encoder (repeatable)")
    command.add_argument("--max-samples", type=int, help="evaluate only the first N samples (documents, clips, images)")
    command.add_argument("--full", action="store_true", help="without --data on the CPU: score all of the default data "
                         "(hours for text) rather than the part that takes minutes")
    command.add_argument("--split", default="test", help="split of a DatasetDict folder or Hub dataset (default test)")
    command.add_argument("--mode", choices=["strided", "document", "streaming"], default="strided",
                         help="text: strided windows over the joined text, each document in one forward, or the "
                         "joined text streamed chunk by chunk through the KV cache")
    command.add_argument("--chunk-size", type=int, default=256, help="text, streaming: tokens per forward (default 256)")
    command.add_argument("--positions", choices=["cache", "text"], default="cache",
                         help="text, streaming: rotary positions of variants with a bounded cache in every layer: "
                         "index in the cache (StreamingLLM, default) or in the text")
    command.add_argument("--max-tokens", type=int, help="text, strided and streaming: score only the first N tokens "
                         "of the joined text")
    command.add_argument("--stretch", type=int, default=4096,
                         help="text, streaming: tokens per stretch of the perplexity against position (default 4096)")
    command.add_argument("--max-length", type=int, help="text: tokens per window or document (default min(1024, model context))")
    command.add_argument("--stride", type=int, help="text, strided: tokens between window starts (default max-length // 2)")
    command.add_argument("--min-tokens", type=int, help="text, document: score only documents of at least N tokens "
                         "(with N = --max-length, every document fills the context: the long-document measure)")
    command.add_argument("--batch-size", type=int, default=8, help="speech and vision: samples per batch (default 8)")
    command.add_argument("--max-new-tokens", type=int, help="speech: most tokens generated per transcript")
    command.add_argument("--language", help="speech: language of the audio for Whisper, e.g. en (default: detected)")
    command.add_argument("--no-normalize", action="store_true", help="speech: make the raw WER (transcripts as given, case and punctuation included) the headline "
                         "instead of the WER after Whisper's English normalizer; both are reported")
    command.add_argument("--device", default=None,
                         help="where the model runs: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    command.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="float32",
                         help="dtype of the weights and activations (default float32)")
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
    """The `VariantConfig` list that ``--variant``, ``--window`` and ``--variant-option`` describe."""
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
            raise EvalInputError(f"--variant-option {pair!r} is not KEY=VALUE or VARIANT.KEY=VALUE.")
        targets = [scope] if scope else [name for name in names if key in accepted[name]]
        if scope and scope not in names:
            raise EvalInputError(f"--variant-option {pair!r} names variant {scope!r}, which no --variant gives ({', '.join(names) or 'none'}).")
        if not targets or (scope and key not in accepted[scope]):
            raise EvalInputError(f"--variant-option {pair!r}: no chosen variant has an option {key!r}; see each variant's options class.")
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


EVAL_PACKAGES = ("datasets", "evaluate", "jiwer", "soundfile", "PIL", "matplotlib")
"""What the ``eval`` extra installs, by import name."""


def missing_packages(names: tuple[str, ...]) -> list[str]:
    """The import names among ``names`` that are not installed (found without importing them)."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``eval`` with parsed arguments: print what runs and each result as it comes, then the table and
    report paths; return the exit status."""
    import dataclasses

    missing = missing_packages(EVAL_PACKAGES)
    if missing:
        print(f"hf-efficient-attn eval: needs {', '.join(missing)}; install them with: "
              "pip install 'hf-efficient-attn[eval]'", file=sys.stderr)
        return 2

    import torch
    import transformers

    from ..devices import DeviceUnavailableError, resolve_device
    from .compare import compare_variants
    from .data import load_eval_data
    from .defaults import cpu_limits, default_source
    from .errors import EvalInputError
    from .models import load_eval_model
    from .perplexity import check_lengths
    from .report import comparison_markdown, write_report
    from .tasks import EvalSettings, evaluator_for

    generate_kwargs = {key: value for key, value in (("max_new_tokens", args.max_new_tokens), ("language", args.language)) if value}
    try:
        device = resolve_device(args.device)
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
        if args.max_tokens is not None and args.mode == "document":
            raise EvalInputError("--max-tokens cuts the joined text of --mode strided or streaming; with --mode document, "
                                 "limit the documents with --max-samples.")
        if args.full and args.data:
            raise EvalInputError("--full asks for all of the default data; data given with --data is scored whole "
                                 "unless --max-samples or --max-tokens say otherwise. Leave out --full or --data.")
        if args.max_length is not None:  # before the model and data load, which can take minutes
            check_lengths(args.max_length, args.stride)
        configs = variant_configs(args.variant, args.window, args.variant_options)
        if args.model is None and args.task == "auto":
            raise EvalInputError("--task auto takes the task from --model; give --model PATH, or --task text|speech|vision to use that task's default model.")
        data = load_eval_data(args.data, split=args.split, max_samples=args.max_samples) if args.data else None
        model_source = args.model or default_source(args.task, "model")
        print(f"loading {model_source} on {device} in {args.dtype}", flush=True)
        loaded = load_eval_model(model_source, task=args.task, device=device, dtype=getattr(torch, args.dtype))
        if data is None:
            limits = {} if args.full or device.type != "cpu" else cpu_limits(loaded.task, args.mode)
            limits = {key: value for key, value in limits.items() if getattr(args, key) is None}
            data = load_eval_data(default_source(loaded.task, "data"), split=args.split,
                                  max_samples=limits.get("max_samples", args.max_samples))
            settings = dataclasses.replace(settings, max_tokens=limits.get("max_tokens", settings.max_tokens))
            if limits:
                print(_cpu_note(limits), flush=True)
        evaluation = evaluator_for(loaded, data, settings)
        print(f"{Path(loaded.source).name} ({loaded.task}) on {data.source}: {evaluation.description}, for the "
              f"baseline and {len(configs)} configuration{'s' * (len(configs) != 1)}", flush=True)
        context = {
            "model": loaded.source, "task": loaded.task, "data": data.source, "samples": len(data.dataset),
            "device": str(device), "dtype": args.dtype, "torch": torch.__version__, "transformers": transformers.__version__,
        }
        progress = _Progress(Path(loaded.source).name, len(configs))
        comparison = compare_variants(
            loaded.model, evaluation.evaluate, configs, warm_up=evaluation.warm_up, context=context, seed=args.seed,
            on_start=progress.start, on_row=progress.row,
        )
    except (EvalInputError, DeviceUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_report(comparison, args.out)
    print()
    print(comparison_markdown(comparison))
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 1 if any(row.error for row in comparison.rows) else 0


def _cpu_note(limits: dict[str, int]) -> str:
    """What the CPU default leaves out of the default data, and how to score all of it."""
    part = f"its first {limits['max_tokens']:,} tokens" if "max_tokens" in limits else f"its first {limits['max_samples']} documents"
    flag = "--max-tokens" if "max_tokens" in limits else "--max-samples"
    return (f"on the CPU without --data, eval scores part of the default data, {part}, which takes minutes per "
            f"configuration where all of it takes hours; --full scores all of it, {flag} N another part")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


class _Progress:
    """Prints each model version's name before it runs and its result when it is done (`compare_variants`)."""

    def __init__(self, model_name: str, configurations: int) -> None:
        self.model_name = model_name
        self.total = configurations + 1

    def start(self, position: int, label: str) -> None:
        unpatched = " (unpatched)" if position == 0 else ""
        print(f"[{position + 1}/{self.total}] {label}{unpatched} on {self.model_name}", flush=True)

    def row(self, metric: str, row: ComparisonRow) -> None:
        if row.error is not None:
            print(f"    failed: {row.error}", flush=True)
            return
        delta = "" if row.variant is None else f" ({row.delta:+.4f} vs baseline)"
        line = f"    {metric} {row.value:.4f}{delta} in {_duration(row.seconds)}, peak {row.peak_bytes / 2**20:.0f} MiB"
        left = self.total - 1
        if row.variant is None and left:
            line += f"; {left} configuration{'s' * (left != 1)} to go, about {_duration(left * row.seconds)} at this pace"
        print(line, flush=True)
