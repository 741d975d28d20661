"""The speech training set: sentences disjoint from the speech-en evaluation set, several voices, compact audio.

Synthesis tests are skipped when espeak-ng or sox is missing (apt-get install espeak-ng sox); the
check of the built asset is skipped when it has not been built.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from hf_efficient_attn.assets.speech import choose_sentences
from hf_efficient_attn.assets.speech_train import VOICES, training_sentences

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega", "river", "mountain", "valley"]


@pytest.fixture
def text_folder(tmp_path):
    """A text-en-like folder: four Wikipedia documents of 25 distinct speakable sentences each, one KJV book."""
    documents = []
    for doc in range(4):
        sentences = [f"The {WORDS[doc]} article says {' '.join(WORDS[(i + j) % len(WORDS)] for j in range(6))} in line {'x' * (i + 1)}."
                     for i in range(25)]
        (tmp_path / f"wikipedia-{doc}.txt").write_text(" ".join(sentences))
        documents.append({"file": f"wikipedia-{doc}.txt", "source": "wikipedia"})
    (tmp_path / "kjv-01.txt").write_text("In the beginning God created the heaven and the earth and all of it.")
    documents.append({"file": "kjv-01.txt", "source": "kjv"})
    (tmp_path / "manifest.json").write_text(json.dumps({"documents": documents}))
    return tmp_path


def require_speech_tools() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")


def test_training_sentences_leave_out_the_evaluation_sentences(text_folder):
    held_out = {sentence for sentence, _ in choose_sentences(text_folder, 4)}
    chosen = training_sentences(text_folder, count=40, held_out=4)
    sentences = [sentence for sentence, _ in chosen]
    assert len(sentences) == len(set(sentences)) == 40
    assert not held_out & set(sentences)
    assert {file for _, file in chosen} == {f"wikipedia-{doc}.txt" for doc in range(4)}


def test_asking_for_more_sentences_than_there_are_says_so(text_folder):
    with pytest.raises(ValueError, match="fewer than the 500 asked for"):
        training_sentences(text_folder, count=500, held_out=4)


def test_built_set_is_an_audio_folder_of_varied_voices(text_folder, tmp_path_factory):
    require_speech_tools()
    import soundfile

    from hf_efficient_attn.assets.speech_train import build_speech_training_set

    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    rows = build_speech_training_set(first, text_folder, count=8)
    build_speech_training_set(second, text_folder, count=8)
    with open(first / "metadata.csv", newline="") as handle:
        assert [row["file_name"] for row in csv.DictReader(handle)] == [row["file_name"] for row in rows]
    assert len({row["voice"] for row in rows}) == min(8, len(VOICES)) and len({row["words_per_minute"] for row in rows}) > 1
    for row in rows:
        audio, rate = soundfile.read(first / row["file_name"], dtype="float32")
        again, _ = soundfile.read(second / row["file_name"], dtype="float32")
        assert rate == 16000 and audio.ndim == 1 and 1.0 < len(audio) / rate < 30.0
        assert (audio == again).all()


def test_the_built_asset_is_compact_and_disjoint_from_speech_en():
    from hf_efficient_attn.assets import AssetNotFoundError, asset_path

    try:
        train, evaluation = asset_path("speech-en-train"), asset_path("speech-en")
    except AssetNotFoundError as unbuilt:
        pytest.skip(f"the speech assets are not built: {unbuilt}")

    def texts(folder):
        with open(folder / "metadata.csv", newline="") as handle:
            return [row["text"] for row in csv.DictReader(handle)]

    assert len(texts(train)) == 400 and not set(texts(train)) & set(texts(evaluation))
    assert sum(file.stat().st_size for file in train.iterdir()) < 25 * 2**20
