"""Every variant on one model, against the unpatched model: the work behind ``hf-efficient-attn demo``.

`run_demo` patches the model with each variant in turn, runs the same batch, unpatches it, and records
the largest difference from the unpatched logits, the share of positions whose most likely next token
is unchanged, the perplexity of the batch, the forward time and the peak memory (`DemoRow`), handing
each row to a callback as soon as it is measured. `tiny_model`, `load_checkpoint`, `text_ids` and
`random_ids` provide its model and input; `TABLE_HEADER` and `table_row` format rows as Markdown. The
command (`demo_cli`) chooses among them and prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from .api import list_variants, patch_model, unpatch_model
from .measure import Measurement, best_of

DEMO_OPTIONS: dict[str, dict] = {
    "sliding": {"window": 256, "sink_tokens": 4},
    "sparse": {"block_size": 64, "local_blocks": 3, "global_blocks": 1},
    "lowrank": {"rank": 64},
    "performer": {"num_features": 128},
    "nystrom": {"num_landmarks": 64},
    "lsh": {"bucket_size": 64, "num_hashes": 4},
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
    """The model saved in the folder ``path``, and its tokenizer (None if the folder has none).

    Raises `FileNotFoundError` if ``path`` is not a folder with a ``config.json`` (so that a mistyped path
    is not taken for a Hub name), `ValueError` if its config names no causal language model class of
    this transformers release, and what transformers raises (`OSError`, `ValueError`) for files it
    cannot load.
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        found = "has no config.json" if folder.is_dir() else "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"the model path {str(path)!r} {found}; give a checkpoint folder written by save_pretrained.")
    config = transformers.AutoConfig.from_pretrained(folder)
    architecture = config.architectures[0] if config.architectures else None
    if architecture not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() or not hasattr(transformers, architecture):
        named = f"names architecture {architecture!r}" if architecture else "names no architecture"
        raise ValueError(f"the config.json in {str(path)!r} {named}, not a causal language model of transformers "
                         f"{transformers.__version__} (the demo compares next-token logits); give the folder of one, "
                         "e.g. a LlamaForCausalLM written by save_pretrained.")
    model = getattr(transformers, architecture).from_pretrained(folder)
    tokenizer = None
    # some transformers releases build an empty default tokenizer for a folder without one: look first
    if any((folder / name).exists() for name in TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
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
    """``batch`` rows of ``length`` token ids drawn uniformly from the vocabulary (seeded: the same every run)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def run_demo(
    model: nn.Module, ids: torch.Tensor, repeats: int = 3, on_row: Callable[[DemoRow], None] | None = None
) -> list[DemoRow]:
    """Patch ``model`` with each registered variant in turn and compare its logits on ``ids`` with the original's.

    The model is patched in place and unpatched after each variant, so it ends as it started. Each row
    (the unpatched model's first) goes to ``on_row`` as soon as it is measured, so a caller can show
    it while the other variants run.
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
    rows: list[DemoRow] = []

    def add(row: DemoRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    add(DemoRow(f"unpatched ({model.config._attn_implementation})", {}, 0.0, 1.0, perplexity(baseline), measurement))
    for name in list_variants():
        options = DEMO_OPTIONS.get(name, {})
        try:
            patch_model(model, name, **options)
        except ValueError as refused:
            add(DemoRow(name, options, None, None, None, None, note=str(refused).split(". ")[0]))
            continue
        try:
            logits, measurement = best_of(repeats, lambda: forward(model), device)
        finally:
            unpatch_model(model)
        agreement = (logits.argmax(-1) == top1).float().mean().item()
        add(DemoRow(name, options, (logits - baseline).abs().max().item(), agreement, perplexity(logits), measurement))
        del logits
    return rows


TABLE_HEADER = (
    "| variant | options | max abs logit diff | top-1 agreement | perplexity | forward ms | peak MiB |",
    "|---|---|---:|---:|---:|---:|---:|",
)
"""The two header lines of the Markdown table whose rows `table_row` formats."""


def table_row(row: DemoRow) -> str:
    """``row`` as a line of the Markdown table under `TABLE_HEADER`."""
    options = ", ".join(f"{key}={value}" for key, value in row.options.items()) or "-"
    if row.measurement is None:
        return f"| {row.variant} | {options} | n/a: {row.note} | | | | |"
    return (
        f"| {row.variant} | {options} | {row.max_abs_diff:.2e} | {row.top1_agreement:.1%} | {row.perplexity:.2f} "
        f"| {row.measurement.seconds * 1e3:.0f} | {row.measurement.peak_bytes / 2**20:.0f} |"
    )
