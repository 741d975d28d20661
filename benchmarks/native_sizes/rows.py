"""The benchmark's rows and columns: what is run, at which sizes, against which configurations."""

from __future__ import annotations

from dataclasses import dataclass

OURS = ("flash", "sliding", "sparse")
COLUMNS = ("sdpa", "flex_attention", "hf-sliding", *OURS)
WINDOW = 4096
"""Sliding window of ours and of transformers' own (Llama rows); encoders use `ENCODER_WINDOW`."""
ENCODER_WINDOW = 512
SPARSE = {"block_size": 128, "local_blocks": 8, "global_blocks": 1, "random_blocks": 2}


@dataclass(frozen=True)
class Row:
    """One row: a family, what is run and its sizes."""

    name: str
    family: str  # "vit", "whisper", "llama"
    kind: str  # "forward", "memory" or "decode"
    batch: int
    tokens: int  # image side for ViT, positions for Whisper, prompt tokens for Llama
    compiled: bool = False
    new_lengths: bool = False  # decoding: every generation from a prompt length not used before (`prompt_length`)


def gpu_rows() -> list[Row]:
    rows = [Row("ViT-B/16 224 px, batch 64", "vit", "forward", 64, 224),
            Row("Whisper-large-v3 encoder 1500, batch 4", "whisper", "forward", 4, 1500),
            Row("Llama-1B prefill 2k", "llama", "forward", 1, 2048),
            Row("Llama-1B prefill 4k", "llama", "forward", 1, 4096),
            Row("Llama-1B prefill 32k (memory)", "llama", "memory", 1, 32768),
            Row("Llama-1B prefill 128k (memory)", "llama", "memory", 1, 131072)]
    for compiled in (False, True):
        for prompt in (4096, 32768):
            for batch in (1, 16):
                mode = "compiled static" if compiled else "eager"
                rows.append(Row(f"Llama-1B decode after {prompt // 1024}k, batch {batch}, {mode}", "llama", "decode",
                                batch, prompt, compiled))
    rows.append(Row("Llama-1B prefill 2k, new lengths", "llama", "forward", 1, 2048, new_lengths=True))
    for batch in (1, 16):
        rows.append(Row(f"Llama-1B decode after 4k, batch {batch}, eager, new lengths", "llama", "decode", batch, 4096,
                        new_lengths=True))
    return rows


def cpu_rows() -> list[Row]:
    return [Row("ViT (tiny) 224 px, batch 8", "vit", "forward", 8, 224),
            Row("Whisper encoder (tiny) 1500, batch 1", "whisper", "forward", 1, 1500),
            Row("SmolLM2-135M prefill 1024", "llama", "forward", 1, 1024),
            Row("SmolLM2-135M decode after 1024, batch 1, eager", "llama", "decode", 1, 1024)]
