"""Local data sources load into the layout of their kind; bad sources give errors that say the fix."""

from __future__ import annotations

import json

import datasets
import pytest
from eval_fixtures import write_wav_folder

from hf_efficient_attn.eval.audio import check_sample_rates, waveform
from hf_efficient_attn.eval.data import load_eval_data
from hf_efficient_attn.eval.errors import EvalInputError


def test_text_sources(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second")
    (tmp_path / "docs" / "a.txt").write_text("first")
    (tmp_path / "docs" / "blank.txt").write_text("  \n")
    assert load_eval_data(tmp_path / "docs").dataset["text"] == ["first", "second"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"sentence": text}) for text in ["x y", "z"]))
    data = load_eval_data(rows, max_samples=1)
    assert (data.kind, data.dataset["text"]) == ("text", ["x y"])


def test_a_text_file_is_one_document_whatever_its_suffix(tmp_path):
    for name in ("GPL-3", "notes.rst", "story.TXT"):
        (tmp_path / name).write_text("Some words.\n")
        data = load_eval_data(tmp_path / name)
        assert (data.kind, data.dataset["text"]) == ("text", ["Some words.\n"])
    (tmp_path / "clip.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # decodes as UTF-8, but holds NUL bytes
    (tmp_path / "latin-1").write_bytes("Café".encode("latin-1"))
    for name in ("clip.wav", "latin-1"):
        with pytest.raises(EvalInputError, match=r"is not UTF-8 text, nor a table file \(\.json"):
            load_eval_data(tmp_path / name)


def test_saved_datasets_and_splits(tmp_path):
    splits = datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict({"text": ["a b c"]}), "train": datasets.Dataset.from_dict({"text": ["d"]})}
    )
    splits.save_to_disk(tmp_path / "dict")
    assert load_eval_data(tmp_path / "dict").dataset["text"] == ["a b c"]
    assert load_eval_data(tmp_path / "dict", split="train").dataset["text"] == ["d"]
    with pytest.raises(EvalInputError, match=r"splits \['test', 'train'\], not 'validation'"):
        load_eval_data(tmp_path / "dict", split="validation")


def test_audio_folder_and_in_memory_audio(tmp_path):
    data = load_eval_data(write_wav_folder(tmp_path / "clips", 16000, ["one", "two"]))
    assert data.kind == "speech" and data.dataset["text"] == ["one", "two"]
    assert waveform(data.dataset["audio"][0]).shape == (8000,)
    in_memory = datasets.Dataset.from_dict(
        {"audio": [{"array": [0.0] * 80, "sampling_rate": 8000}], "transcription": ["hi"]}
    )
    data = load_eval_data(in_memory)
    assert data.kind == "speech"
    with pytest.raises(EvalInputError, match="sample 0 .* 8000 Hz.*expects 16000 Hz.*Resample"):
        check_sample_rates(list(data.dataset["audio"]), 16000)


def test_image_folder_labels_are_class_names(image_folder):
    data = load_eval_data(image_folder)
    assert data.kind == "vision" and len(data.dataset) == 9
    assert data.dataset.features["label"].names == ["LABEL_0", "LABEL_1", "LABEL_2"]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(EvalInputError, match="does not exist"):
        load_eval_data(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EvalInputError, match="no samples"):
        load_eval_data(tmp_path / "empty.txt")
    write_wav_folder(tmp_path / "no_clips", 16000, [])
    with pytest.raises(EvalInputError, match="no samples"):
        load_eval_data(tmp_path / "no_clips")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.bin").write_bytes(b"\0")
    with pytest.raises(EvalInputError, match="no layout"):
        load_eval_data(tmp_path / "other")
    with pytest.raises(EvalInputError, match="fit no task"):
        load_eval_data(datasets.Dataset.from_dict({"question": ["?"]}))
