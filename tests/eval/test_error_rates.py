"""WER and CER, through the package's offline evaluate metric, equal edit distances counted by hand; the
normalized rates see the text as Whisper's English normalizer writes it, the raw rates as given."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import char_tokenizer

from hf_efficient_attn.eval.error_rates import english_normalizer, error_rates, spelling_mapping
from hf_efficient_attn.eval.errors import EvalInputError

SPELLING = {"colour": "color", "organise": "organize"}
"""A two-word excerpt of the British-to-American list in Whisper tokenizers' normalizer.json."""


def test_single_pairs_match_textbook_edit_distances():
    # Lower-case words without punctuation or numbers: the normalizer leaves them as they are, so the
    # normalized and the raw rates are the same edit distances.
    # kitten -> sitting: k->s, e->i, insert g: 3 character edits over 6 reference characters.
    assert error_rates(["sitting"], ["kitten"]) == pytest.approx({"wer": 1.0, "cer": 3 / 6, "raw_wer": 1.0, "raw_cer": 3 / 6})
    # "the cat sat on the mat" (6 words, 22 characters) -> "the cat sit on mat": sat->sit and the
    # deleted "the": 2 word edits; a->i and the deleted "the " (4 characters): 5 character edits.
    rates = error_rates(["the cat sit on mat"], ["the cat sat on the mat"])
    assert rates == pytest.approx({"wer": 2 / 6, "cer": 5 / 22, "raw_wer": 2 / 6, "raw_cer": 5 / 22})
    # One inserted word: 1 edit over 2 reference words; "a x b" vs "a b": 2 inserted characters over 3.
    assert error_rates(["a x b"], ["a b"]) == pytest.approx({"wer": 1 / 2, "cer": 2 / 3, "raw_wer": 1 / 2, "raw_cer": 2 / 3})


def test_rates_are_corpus_level_totals():
    # Edits add up over pairs and divide by the total reference length: (2 + 0) / (6 + 2) words,
    # (5 + 0) / (22 + 11) characters; not the mean of per-pair rates.
    rates = error_rates(["the cat sit on mat", "hello world"], ["the cat sat on the mat", "hello world"])
    assert rates == pytest.approx({"wer": 2 / 8, "cer": 5 / 33, "raw_wer": 2 / 8, "raw_cer": 5 / 33})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Punctuation goes; a period not followed by a digit first becomes a space.
        ("Hello, World! Is it... you?", "hello world is it you"),
        # Contractions are spelled out, "can't" as two words.
        ("I won't go, we can't stay, they're here and she'll know I've seen it.",
         "i will not go we can not stay they are here and she will know i have seen it"),
        # Titles are spelled out, the period after them dropped.
        ("Mr. Smith met Dr. Jones.", "mister smith met doctor jones"),
        # Filler words, and words in brackets or parentheses (Whisper's sound annotations), are dropped.
        ("Um, I think, uh, hmm, yes [laughs] (inaudible) okay.", "i think yes okay"),
        # Spelled-out numbers become digits: compounds, "one oh one" as a nominal 101, ordinals keep their suffix.
        ("Twenty-five people, room one oh one, the twenty first century", "25 people room 101 the 21st century"),
        # Digits keep decimal points, percent signs and decade suffixes; commas between digits go.
        ("It rose 3.5% in the 1960s to 1,200 units.", "it rose 3.5% in the 1960s to 1200 units"),
        # Diacritics are dropped.
        ("A naïve café", "a naive cafe"),
    ],
)
def test_whisper_english_normalizer(text, expected):
    assert english_normalizer()(text) == expected


def test_normalizer_respells_only_the_words_of_its_list():
    assert english_normalizer(SPELLING)("Organise the colour of the Organisation.") == "organize the color of the organisation"
    assert english_normalizer()("Organise the colour.") == "organise the colour"


def test_normalized_and_raw_rates_on_whisper_style_text():
    predictions = ["the color is 25", "I can hear you mister Jones"]
    references = ["The colour is twenty five.", "I can't hear you, um, Mr. Jones."]
    # Normalized, the references read "the color is 25" (4 words, 15 characters) and "i can not hear you
    # mister jones" (7 words, 31 characters); the predictions differ by the missing "not": 1 word edit of
    # 11 words, 4 characters ("not ") of 46.
    # Raw: The/the, colour/color, twenty/25 substituted, "five." deleted: 4 edits of 5 words; can't/can,
    # "you,"/you, "Mr."/mister, "Jones."/Jones substituted, "um," deleted: 5 of 7 (only "I" and "hear" match).
    rates = error_rates(predictions, references, SPELLING)
    assert rates["wer"] == pytest.approx(1 / 11)
    assert rates["cer"] == pytest.approx(4 / 46)
    assert rates["raw_wer"] == pytest.approx((4 + 5) / (5 + 7))
    # Without the word list "colour" stays British in the reference: one more substitution.
    unmapped = error_rates(predictions, references)
    assert unmapped["wer"] == pytest.approx(2 / 11)
    assert unmapped["raw_wer"] == rates["raw_wer"]


def test_spelling_mapping_comes_from_a_whisper_tokenizer_folder(tmp_path):
    from transformers import AutoTokenizer, WhisperTokenizer

    WhisperTokenizer(vocab={"<|endoftext|>": 0, "a": 1}, merges=[]).save_pretrained(tmp_path)
    assert spelling_mapping(AutoTokenizer.from_pretrained(tmp_path)) == {}  # a Whisper tokenizer without normalizer.json
    (tmp_path / "normalizer.json").write_text(json.dumps(SPELLING))
    assert spelling_mapping(AutoTokenizer.from_pretrained(tmp_path)) == SPELLING
    assert spelling_mapping(char_tokenizer()) == {}  # not a Whisper tokenizer


def test_bad_pairs_are_errors():
    with pytest.raises(EvalInputError, match="2 predictions for 1 references"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(EvalInputError, match=r"index \[1\] are empty; "):
        error_rates(["a", "b"], ["a", " "])
    with pytest.raises(EvalInputError, match=r"index \[1, 2\] are empty after Whisper's English normalization"):
        error_rates(["a", "b", "c"], ["a", "?!", "Um, hmm."])
