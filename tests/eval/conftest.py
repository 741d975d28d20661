"""Fixtures: checkpoint folders of tiny random models with their preprocessing, and tiny data sets in the
local layouts the evaluation reads (a text file, an audio folder, an image folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fixtures import TEXT, char_tokenizer, write_wav_folder
from tiny_models import tiny_llama, tiny_vit, tiny_whisper


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and threads of parallel test workers contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checkpoint_folder(tmp_path_factory, name: str, *parts) -> Path:
    """A folder with each of ``parts`` (model, tokenizer, feature extractor, ...) saved into it."""
    folder = tmp_path_factory.mktemp(name)
    for part in parts:
        part.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory, "llama", tiny_llama(), char_tokenizer())


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory) -> Path:
    from transformers import WhisperFeatureExtractor

    model = tiny_whisper()
    # 30 s windows of 2 * max_source_positions frames: the tiny encoder's input length.
    frames = 2 * model.config.max_source_positions
    features = WhisperFeatureExtractor(
        feature_size=model.config.num_mel_bins, sampling_rate=16000, chunk_length=30, hop_length=30 * 16000 // frames
    )
    return checkpoint_folder(tmp_path_factory, "whisper", model, char_tokenizer(), features)


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory) -> Path:
    from transformers import ViTImageProcessor

    model = tiny_vit()
    size = model.config.image_size
    return checkpoint_folder(tmp_path_factory, "vit", model, ViTImageProcessor(size={"height": size, "width": size}))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="session")
def audio_folder(tmp_path_factory) -> Path:
    return write_wav_folder(tmp_path_factory.mktemp("speech") / "clips", 16000)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Class subfolders named after the tiny ViT's labels (LABEL_0, LABEL_1, LABEL_2), 3 images each."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for label in range(3):
        (folder / f"LABEL_{label}").mkdir()
        for index in range(3):
            pixels = generator.integers(0, 256, (30, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"LABEL_{label}" / f"{index}.png")
    return folder
