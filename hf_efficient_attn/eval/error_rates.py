"""WER and CER of transcripts, through the package's offline `evaluate` metric script: normalized and raw.

The normalized figures (``wer``, ``cer``) compare both sides after Whisper's English normalizer,
transformers' ``EnglishTextNormalizer``, the normalizer of OpenAI's published Whisper WERs, so that
figures are comparable with those: lower case; words in brackets or parentheses and the fillers
``hmm``, ``mm``, ``mhm``, ``mmm``, ``uh`` and ``um`` dropped; contractions and titles spelled out
(``won't`` -> ``will not``, ``mr`` -> ``mister``); punctuation, symbols and diacritics removed;
numbers written as digits (``twenty five`` -> ``25``); British spellings turned American through a
word list. That list is the ``normalizer.json`` of Whisper tokenizers (`spelling_mapping` reads it);
without it nothing is respelled. The raw figures (``raw_wer``, ``raw_cer``) compare the text as given,
case and punctuation included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import EvalInputError

METRIC_SCRIPT = Path(__file__).with_name("error_rate_metric.py")


@lru_cache(maxsize=1)
def load_metric():
    """The metric module of `METRIC_SCRIPT`, loaded once (importing ``evaluate`` takes seconds)."""
    import evaluate

    return evaluate.load(str(METRIC_SCRIPT), keep_in_memory=True)


def spelling_mapping(tokenizer: Any) -> dict[str, str]:
    """The British-to-American word list of a Whisper tokenizer (its ``normalizer.json``); empty if it has none.

    Transformers' ``WhisperTokenizer`` holds that file as ``english_spelling_normalizer`` (None when the
    checkpoint has no ``normalizer.json``); other tokenizers have no such list.
    """
    return dict(getattr(tokenizer, "english_spelling_normalizer", None) or {})


def english_normalizer(spelling: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """Whisper's English normalizer with ``spelling`` as its word list: ``text -> normalized text``.

    The result has single spaces between words and none at either end.
    """
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer(dict(spelling or {}))
    return lambda text: normalizer(text).strip()


def error_rates(
    predictions: Sequence[str], references: Sequence[str], spelling: Mapping[str, str] | None = None
) -> dict[str, float]:
    """Corpus-level ``wer`` and ``cer`` after Whisper's English normalizer, ``raw_wer`` and ``raw_cer`` as given.

    ``spelling`` is the normalizer's British-to-American word list (see `spelling_mapping`); None or
    empty respells nothing. Raises `EvalInputError` if the lists differ in length or a reference is
    empty, as given or after normalization, since an empty reference has no length to divide its
    errors by.
    """
    if len(predictions) != len(references):
        raise EvalInputError(f"Got {len(predictions)} predictions for {len(references)} references; give one per reference.")
    normalize = english_normalizer(spelling)
    normalized_predictions = [normalize(text) for text in predictions]
    normalized_references = [normalize(text) for text in references]
    for texts, when in ((references, ""), (normalized_references, " after Whisper's English normalization")):
        empty = [index for index, text in enumerate(texts) if not text.strip()]
        if empty:
            raise EvalInputError(
                f"Reference transcript(s) at index {empty[:10]} are empty{when}; remove those samples or give them a transcript."
            )
    metric = load_metric()
    normalized = metric.compute(predictions=normalized_predictions, references=normalized_references)
    raw = metric.compute(predictions=list(predictions), references=list(references))
    return {"wer": normalized["wer"], "cer": normalized["cer"], "raw_wer": raw["wer"], "raw_cer": raw["cer"]}
