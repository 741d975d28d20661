"""Training data: splits disjoint from the evaluation data, sample and batch shapes of each task."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from eval.eval_fixtures import char_tokenizer
from recovery_checkpoints import TEXT, image_folder, vit_checkpoint, whisper_checkpoint, write_wav_folder

from hf_efficient_attn.train import TrainError, augment
from hf_efficient_attn.train import data as training_data


def built(name: str):
    from hf_efficient_attn.assets import AssetNotFoundError, asset_path

    try:
        return asset_path(name)
    except AssetNotFoundError as unbuilt:
        pytest.skip(f"asset {name!r} is not built: {unbuilt}")


def test_text_split_holds_out_every_eighth_document_of_each_source(tmp_path):
    documents = [{"file": f"w{i}.txt", "source": "wikipedia"} for i in range(17)] + [{"file": f"k{i}.txt", "source": "kjv"} for i in range(9)]
    (tmp_path / "manifest.json").write_text(json.dumps({"documents": documents}))
    split = training_data.text_split(tmp_path)
    assert [path.name for path in split.held_out] == ["w7.txt", "w15.txt", "k7.txt"]
    assert len(split.train) == 23 and not set(split.train) & set(split.held_out)


def test_text_asset_split_is_disjoint_and_complete():
    folder = built("text-en")
    split = training_data.text_split(folder)
    assert not set(split.train) & set(split.held_out)
    assert set(split.train) | set(split.held_out) == set(folder.glob("*.txt"))
    assert {path.name.split("-")[0] for path in split.held_out} == {"wikipedia", "kjv"}
    held_out_texts = set(training_data.read_documents(split.held_out))
    assert not held_out_texts & set(training_data.text_documents())


def test_token_chunks_and_their_batches(tmp_path):
    tokenizer = char_tokenizer()
    chunks = training_data.causal_lm_chunks(tokenizer, [TEXT, TEXT], seq_len=32)
    assert len(chunks) == (2 * (len(TEXT) + 1)) // 32  # one token per character, plus EOS after each document
    assert all(torch.equal(chunk["input_ids"], chunk["labels"]) for chunk in chunks)
    batch = training_data.collate_causal_lm(chunks[:3])
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 32)
    with pytest.raises(TrainError, match="fewer than seq_len=4096"):
        training_data.causal_lm_chunks(tokenizer, [TEXT], seq_len=4096)


def test_speech_samples_and_padded_labels(tmp_path):
    from transformers import AutoFeatureExtractor, AutoTokenizer

    checkpoint = whisper_checkpoint(tmp_path / "whisper")
    clips = write_wav_folder(tmp_path / "clips", 16000)
    samples = training_data.speech_training_set(AutoFeatureExtractor.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint), clips)
    assert len(samples) == 3 and samples[0]["input_features"].shape == (8, 48)
    batch = training_data.SpeechCollator(decoder_start_token_id=1)([samples[0], samples[1]])
    assert batch["input_features"].shape == (2, 8, 48)
    assert batch["labels"].shape == (2, len(" the cat sat on the mat")) and batch["labels"][0, -1] == -100


def test_speech_collator_drops_the_decoder_start_token():
    samples = [{"input_features": torch.zeros(4, 6), "labels": torch.tensor(ids)} for ids in ([9, 5, 6, 2], [9, 7, 2])]
    labels = training_data.SpeechCollator(decoder_start_token_id=9)(samples)["labels"]
    assert labels.tolist() == [[5, 6, 2], [7, 2, -100]]


def test_speech_data_at_another_rate_is_refused(tmp_path):
    from transformers import AutoFeatureExtractor, AutoTokenizer

    from hf_efficient_attn.eval.errors import EvalInputError

    checkpoint = whisper_checkpoint(tmp_path / "whisper")
    clips = write_wav_folder(tmp_path / "clips", 8000)
    with pytest.raises(EvalInputError, match="8000 Hz"):
        training_data.speech_training_set(AutoFeatureExtractor.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint), clips)


def test_image_folder_samples_and_batches(tmp_path):
    from transformers import AutoConfig

    from hf_efficient_attn.compat import load_image_processor

    checkpoint = vit_checkpoint(tmp_path / "vit")
    samples = training_data.image_training_set(load_image_processor(checkpoint), AutoConfig.from_pretrained(checkpoint),
                                               image_folder(tmp_path / "images", per_class=2))
    batch = training_data.collate_images([samples[index] for index in range(len(samples))])
    assert batch["pixel_values"].shape == (6, 3, 24, 24) and batch["labels"].tolist() == [0, 0, 1, 1, 2, 2]


def test_augmented_images_move_each_read_and_keep_their_label(tmp_path):
    from transformers import AutoConfig

    from hf_efficient_attn.compat import load_image_processor

    checkpoint = vit_checkpoint(tmp_path / "vit")
    processor, config = load_image_processor(checkpoint), AutoConfig.from_pretrained(checkpoint)
    images = image_folder(tmp_path / "images", per_class=1)
    plain = training_data.image_training_set(processor, config, images)
    moved = training_data.image_training_set(processor, config, images, augment=True)
    torch.manual_seed(0)
    first, second = moved[1], moved[1]
    assert torch.equal(plain[1]["pixel_values"], plain[1]["pixel_values"])
    assert first["pixel_values"].shape == plain[1]["pixel_values"].shape and first["labels"] == plain[1]["labels"]
    assert not torch.equal(first["pixel_values"], second["pixel_values"])
    assert not torch.equal(first["pixel_values"], plain[1]["pixel_values"])


def test_jitter_shifts_by_the_drawn_fraction_of_the_side(monkeypatch):
    from PIL import Image

    image = Image.new("L", (30, 20), color=0)
    image.putpixel((10, 8), 255)
    # Draws of 1, 0.5, 0.5: the largest shift right, none down, no rotation.
    monkeypatch.setattr(augment.torch, "rand", lambda count: torch.tensor([1.0, 0.5, 0.5]))
    moved = np.asarray(augment.jitter(image))
    assert moved.shape == (20, 30) and moved.argmax() == np.ravel_multi_index((8, 10 + round(augment.MAX_SHIFT * 30)), (20, 30))


def test_mnist_training_digits_are_not_the_evaluation_digits():
    from PIL import Image
    from transformers import ViTConfig

    from hf_efficient_attn.assets.vit_training import image_processor

    evaluation, training = built("images-mnist"), built("images-mnist-train")
    config = ViTConfig(num_labels=10, id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})
    samples = training_data.image_training_set(image_processor(28), config)
    assert len(samples) == 4000 and samples[0]["pixel_values"].shape == (3, 28, 28)
    assert sorted(path.name for path in training.iterdir()) == [str(digit) for digit in range(10)]
    train_hashes = {hashlib.sha1(np.asarray(image).tobytes()).hexdigest() for image in samples.images}
    test_hashes = {hashlib.sha1(np.asarray(Image.open(path)).tobytes()).hexdigest() for path in evaluation.glob("*/*.png")}
    assert len(test_hashes) > 990 and not train_hashes & test_hashes


def test_augmenting_anything_but_images_is_refused():
    from types import SimpleNamespace

    from hf_efficient_attn.train.recovery import task_setup

    with pytest.raises(TrainError, match="this is a speech model"):
        task_setup(SimpleNamespace(task="speech"), augment=True)
