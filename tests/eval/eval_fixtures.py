"""Helpers of the evaluation tests: an English snippet, a character-level tokenizer, an audio folder writer."""

from __future__ import annotations

import csv
import string
from pathlib import Path

import numpy as np

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n\n"
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow; the five boxing "
    "wizards jump quickly."
)
TRANSCRIPTS = ["hello world", "the cat sat on the mat", "good morning"]


def char_tokenizer():
    """A character-level fast tokenizer of 76 tokens (fits the tiny models' vocabulary of 97)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for char in string.ascii_letters + string.digits + " .,;:'!?-\n":
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def write_wav_folder(folder: Path, rate: int, transcripts=TRANSCRIPTS, seconds: float = 0.5) -> Path:
    """An audio folder: one noisy tone per transcript at ``rate`` Hz, and metadata.csv (file_name,text)."""
    import soundfile

    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for index, text in enumerate(transcripts):
            time = np.arange(int(rate * seconds)) / rate
            wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * index) * time) + 0.05 * generator.standard_normal(time.size)
            soundfile.write(folder / f"clip{index}.wav", wave.astype(np.float32), rate)
            writer.writerow([f"clip{index}.wav", text])
    return folder
