"""Tiny checkpoint folders (random weights and their preprocessing) and tiny local data for the recovery tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from eval.eval_fixtures import TEXT, char_tokenizer, write_wav_folder
from tiny_models import tiny_llama, tiny_vit, tiny_whisper

__all__ = ["TEXT", "image_folder", "llama_checkpoint", "text_folder", "vit_checkpoint", "whisper_checkpoint", "write_wav_folder"]


def _save(folder: Path, *parts) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        part.save_pretrained(folder)
    return folder


def llama_checkpoint(folder: Path) -> Path:
    return _save(folder, tiny_llama(), char_tokenizer())


def whisper_checkpoint(folder: Path) -> Path:
    """Whisper with a feature extractor whose 30 s window makes the tiny encoder's input length."""
    from transformers import WhisperFeatureExtractor

    model = tiny_whisper()
    frames = 2 * model.config.max_source_positions
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins, sampling_rate=16000, chunk_length=30,
                                       hop_length=30 * 16000 // frames)
    return _save(folder, model, char_tokenizer(), features)


def vit_checkpoint(folder: Path) -> Path:
    from transformers import ViTImageProcessor

    model = tiny_vit()
    size = model.config.image_size
    return _save(folder, model, ViTImageProcessor(size={"height": size, "width": size}))


def text_folder(folder: Path, documents: int = 3) -> Path:
    """A folder of ``documents`` .txt files of the English snippet, each repeated."""
    folder.mkdir(parents=True)
    for index in range(documents):
        (folder / f"doc{index}.txt").write_text((TEXT + "\n\n") * (index + 2))
    return folder


def image_folder(folder: Path, per_class: int = 4) -> Path:
    """Class subfolders named after the tiny ViT's labels LABEL_0..LABEL_2, random 30x30 RGB images."""
    from PIL import Image

    generator = np.random.default_rng(0)
    for label in range(3):
        (folder / f"LABEL_{label}").mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(generator.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(folder / f"LABEL_{label}" / f"{index}.png")
    return folder
