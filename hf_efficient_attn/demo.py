"""`hf-efficient-attn demo`: every variant on one model, against the unpatched model.

For each variant the demo patches a copy of the model, runs the same batch, and prints the largest
difference from the unpatched logits, the forward time and the peak memory. The default model is a
small Llama built from a config (random weights, no download); ``--model PATH`` takes any supported
local checkpoint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from .api import list_variants, patch_model
from .measure import Measurement, best_of

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
    variant: str
    options: dict
    max_abs_diff: float | None
    measurement: Measurement | None
    note: str = ""


def default_model() -> nn.Module:
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


def load_model(path: str | None, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if path is None:
        model = default_model()
    else:
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        model_class = getattr(transformers, config.architectures[0])
        model = model_class.from_pretrained(path)
    return model.to(device=device, dtype=dtype).eval()


def run_demo(model: nn.Module, length: int, batch: int, repeats: int = 3) -> list[DemoRow]:
    """Patch a copy of ``model`` with each registered variant and compare its logits with the original's."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator).to(device)

    def forward(candidate: nn.Module):
        with torch.no_grad():
            return candidate(input_ids=ids, use_cache=False).logits.float()

    baseline, baseline_measurement = best_of(repeats, lambda: forward(model), device)
    rows = [DemoRow(f"unpatched ({model.config._attn_implementation})", {}, 0.0, baseline_measurement)]
    for name in list_variants():
        options = DEMO_OPTIONS.get(name, {})
        try:
            patched = patch_model(copy.deepcopy(model), name, **options)
        except ValueError as refused:
            rows.append(DemoRow(name, options, None, None, note=str(refused).split(". ")[0]))
            continue
        logits, measurement = best_of(repeats, lambda candidate=patched: forward(candidate), device)
        rows.append(DemoRow(name, options, (logits - baseline).abs().max().item(), measurement))
        del patched
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """Markdown table of the demo's rows."""
    lines = [
        "| variant | options | max abs diff vs unpatched | forward ms | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        options = ", ".join(f"{key}={value}" for key, value in row.options.items()) or "-"
        if row.measurement is None:
            lines.append(f"| {row.variant} | {options} | n/a: {row.note} | | |")
            continue
        lines.append(
            f"| {row.variant} | {options} | {row.max_abs_diff:.2e} | {row.measurement.seconds * 1e3:.1f} "
            f"| {row.measurement.peak_bytes / 2**20:.1f} |"
        )
    return "\n".join(lines)
