"""Training data for recovery fine-tuning, one kind per task, kept apart from the data that scores it.

Each builder returns samples (dicts of tensors) for `train`, and each task has a collate function
that batches them into the keyword arguments of ``model(**batch)``, ``labels`` included, so the
model returns its own loss.

- **text** (causal LM): documents tokenized and joined (each ending with the tokenizer's EOS token),
  cut into chunks of ``seq_len`` tokens; ``labels`` are the input ids (the model shifts them). By
  default the documents are the **training part of the text-en asset**: `text_split` holds out every
  `HELD_OUT_EVERY`-th document of each source (Wikipedia, King James Bible), and the recovery
  evaluation (`evaluators.text_metric`) scores only those. The split is by document, so no text is
  both trained on and scored. (``hf-efficient-attn eval`` without ``--data`` scores the whole corpus,
  training part included; compare fine-tuned models with the held-out documents.)
- **speech** (Whisper): log-mel ``input_features`` and the transcript's token ids as ``labels``, made
  by the model's feature extractor and tokenizer when a sample is read. By default the
  ``speech-en-train`` asset: other sentences, voices and rates than the ``speech-en`` evaluation set.
- **vision** (image classifier): ``pixel_values`` from the model's image processor and the label id.
  By default the ``images-mnist-train`` asset: the MNIST training digits, none of them in the
  ``images-mnist`` evaluation set. ``augment`` moves each image at random every time it is read.

Other data comes through `eval.data.load_eval_data`, so it takes the same layouts as evaluation: a
text file or folder of ``.txt`` files, an audio folder with ``metadata.csv``, an image folder of class
subfolders, a table file, a ``save_to_disk`` folder or a Hub dataset (its ``train`` split).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .augment import jitter
from .config import TrainError

TEXT_ASSET, SPEECH_ASSET, IMAGE_ASSET = "text-en", "speech-en-train", "images-mnist-train"
HELD_OUT_EVERY = 8
"""`text_split` holds out documents 7, 15, 23, ... (counting from 0) of each source of text-en."""
IGNORED_LABEL = -100
"""The label that transformers' losses skip (padding of transcripts)."""


@dataclass(frozen=True)
class TextSplit:
    """The text-en documents (file paths) to train on and to evaluate on; no file is in both."""

    train: list[Path]
    held_out: list[Path]


def text_split(folder: str | Path | None = None) -> TextSplit:
    """Split the text-en asset (or a folder in its layout) by document, as the module docstring says."""
    folder = Path(folder) if folder is not None else _asset(TEXT_ASSET)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["documents"]
    position: dict[str, int] = {}
    train, held_out = [], []
    for entry in manifest:
        index = position[entry["source"]] = position.get(entry["source"], -1) + 1
        (held_out if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append(folder / entry["file"])
    return TextSplit(train, held_out)


def read_documents(paths: Sequence[Path]) -> list[str]:
    """The text of each file."""
    return [Path(path).read_text(encoding="utf-8") for path in paths]


def text_documents(source: Any = None, split: str = "train") -> list[str]:
    """Documents of ``source`` (see the module docstring), by default text-en's training documents."""
    if source is None:
        return read_documents(text_split().train)
    return list(_load(source, split, "text").dataset["text"])


def causal_lm_chunks(tokenizer, documents: Sequence[str], seq_len: int) -> list[dict[str, torch.Tensor]]:
    """``{"input_ids", "labels"}`` chunks of ``seq_len`` tokens from ``documents`` joined with EOS tokens.

    The incomplete last chunk is dropped, so every sample has the same length and no padding is needed.
    """
    if not isinstance(seq_len, int) or seq_len < 2:
        raise TrainError(f"`seq_len` must be an integer >= 2, got {seq_len!r}.")
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [token for ids in tokenizer(list(documents))["input_ids"] for token in ids + end]
    if len(stream) < seq_len:
        raise TrainError(f"The training text has {len(stream)} tokens, fewer than seq_len={seq_len}; give more text or a smaller seq_len.")
    ids = torch.tensor(stream[: len(stream) // seq_len * seq_len], dtype=torch.long).view(-1, seq_len)
    return [{"input_ids": row, "labels": row} for row in ids]


def collate_causal_lm(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-length token chunks into ``input_ids`` and ``labels`` of shape ``[batch, seq_len]``."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in ("input_ids", "labels")}


class SpeechTrainingSet(Dataset):
    """Audio samples and transcripts, turned into Whisper inputs when read (features take 1 MB each)."""

    def __init__(self, audio: Sequence[Any], texts: Sequence[str], feature_extractor, tokenizer) -> None:
        self.audio, self.texts = list(audio), list(texts)
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from ..eval.audio import waveform

        features = self.feature_extractor(
            waveform(self.audio[index]), sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt"
        ).input_features[0]
        labels = self.tokenizer(" " + self.texts[index].strip(), return_tensors="pt").input_ids[0]
        return {"input_features": features, "labels": labels}


def speech_training_set(feature_extractor, tokenizer, source: Any = None, split: str = "train") -> SpeechTrainingSet:
    """Whisper training samples of ``source`` (default the speech-en-train asset); sample rates are checked first."""
    from ..eval.audio import check_sample_rates

    dataset = _load(source if source is not None else _asset(SPEECH_ASSET), split, "speech").dataset
    audio = list(dataset["audio"])
    check_sample_rates(audio, feature_extractor.sampling_rate)
    return SpeechTrainingSet(audio, dataset["text"], feature_extractor, tokenizer)


@dataclass(frozen=True)
class SpeechCollator:
    """Batch Whisper samples: stacked features, transcripts padded with -100.

    The labels lose their first token when it is the decoder start token, because the model puts that
    token in front of the labels itself when it makes the decoder inputs.
    """

    decoder_start_token_id: int

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        labels = torch.nn.utils.rnn.pad_sequence(
            [sample["labels"] for sample in samples], batch_first=True, padding_value=IGNORED_LABEL
        )
        if bool((labels[:, 0] == self.decoder_start_token_id).all()):
            labels = labels[:, 1:]
        return {"input_features": torch.stack([sample["input_features"] for sample in samples]), "labels": labels}


class ImageTrainingSet(Dataset):
    """PIL images (a dataset's ``Image`` column) and model label ids, processed when read.

    With ``augment`` each read gets a freshly moved copy of the image (`augment.jitter`).
    """

    def __init__(self, images: Sequence[Any], labels: Sequence[int], image_processor, augment: bool = False) -> None:
        self.images, self.labels, self.image_processor = images, list(labels), image_processor
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index].convert("RGB")
        if self.augment:
            image = jitter(image)
        pixels = self.image_processor(image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, "labels": torch.tensor(self.labels[index], dtype=torch.long)}


def image_training_set(
    image_processor, config, source: Any = None, split: str = "train", augment: bool = False
) -> ImageTrainingSet:
    """Training images of ``source`` (default the images-mnist-train asset), labels mapped to ``config``'s ids by class name.

    ``augment``: random small shifts and rotations each time an image is read (`augment`).
    """
    from ..eval.vision import model_label_ids

    dataset = _load(_asset(IMAGE_ASSET) if source is None else source, split, "vision").dataset
    labels = list(dataset["label"])
    names = getattr(dataset.features["label"], "names", None)
    if names:
        ids = model_label_ids(names, config)
        labels = [ids[label] for label in labels]
    return ImageTrainingSet(dataset["image"], labels, image_processor, augment)


def collate_images(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` ``[batch, channels, height, width]`` and ``labels`` ``[batch]``."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in ("pixel_values", "labels")}


def _asset(name: str) -> Path:
    from ..assets import asset_path

    try:
        return asset_path(name)
    except FileNotFoundError as unbuilt:
        raise TrainError(f"No training data was given, and the default ({name!r}) is not built: {unbuilt} Or give the data's path.") from unbuilt


def _load(source: Any, split: str, kind: str):
    """`load_eval_data` of ``source``, refused unless it is ``kind`` data."""
    from ..eval.data import load_eval_data

    data = load_eval_data(source, split=split)
    if data.kind != kind:
        raise TrainError(f"The training data {data.source!r} is {data.kind} data; this task trains on {kind} data.")
    return data
