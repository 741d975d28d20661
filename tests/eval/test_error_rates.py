"""WER and CER, through the package's offline evaluate metric, equal edit distances counted by hand."""

from __future__ import annotations

import pytest

from hf_efficient_attn.eval.error_rates import error_rates, normalize_transcript
from hf_efficient_attn.eval.errors import EvalInputError


def test_single_pairs_match_textbook_edit_distances():
    # kitten -> sitting: k->s, e->i, insert g: 3 character edits over 6 reference characters.
    assert error_rates(["sitting"], ["kitten"], normalize=False)["cer"] == pytest.approx(3 / 6)
    # "the cat sat on the mat" (6 words, 22 characters) -> "the cat sit on mat": sat->sit and the
    # deleted "the": 2 word edits; a->i and the deleted "the " (4 characters): 5 character edits.
    rates = error_rates(["the cat sit on mat"], ["the cat sat on the mat"], normalize=False)
    assert rates == pytest.approx({"wer": 2 / 6, "cer": 5 / 22})
    # One inserted word: 1 edit over 2 reference words; "a x b" vs "a b": 2 inserted characters over 3.
    assert error_rates(["a x b"], ["a b"], normalize=False) == pytest.approx({"wer": 1 / 2, "cer": 2 / 3})


def test_rates_are_corpus_level_totals():
    # Edits add up over pairs and divide by the total reference length: (2 + 0) / (6 + 2) words,
    # (5 + 0) / (22 + 11) characters; not the mean of per-pair rates.
    rates = error_rates(
        ["the cat sit on mat", "hello world"], ["the cat sat on the mat", "hello world"], normalize=False
    )
    assert rates == pytest.approx({"wer": 2 / 8, "cer": 5 / 33})


def test_normalization_ignores_case_and_punctuation():
    assert normalize_transcript("  Hello, World!  It's   me. ") == "hello world it s me"
    assert error_rates(["Hello, world!"], ["hello world"]) == {"wer": 0.0, "cer": 0.0}
    assert error_rates(["Hello, world!"], ["hello world"], normalize=False)["wer"] == 1.0


def test_bad_pairs_are_errors():
    with pytest.raises(EvalInputError, match="2 predictions for 1 references"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(EvalInputError, match=r"index \[1\] are empty after normalization"):
        error_rates(["a", "b"], ["a", "?!"])
