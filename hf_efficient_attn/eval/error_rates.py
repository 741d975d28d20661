"""WER and CER of transcripts, through the package's offline `evaluate` metric script.

Transcripts are compared after a light normalization by default (lower case, punctuation removed,
runs of white space collapsed), because Whisper writes case and punctuation that reference
transcripts often lack; ``normalize=False`` compares them as given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .errors import EvalInputError

METRIC_SCRIPT = Path(__file__).with_name("error_rate_metric.py")


@lru_cache(maxsize=1)
def load_metric():
    """The metric module of `METRIC_SCRIPT`, loaded once (importing ``evaluate`` takes seconds)."""
    import evaluate

    return evaluate.load(str(METRIC_SCRIPT), keep_in_memory=True)


def normalize_transcript(text: str) -> str:
    """Lower case, punctuation and symbols replaced by spaces, white space collapsed."""
    kept = "".join(" " if unicodedata.category(char)[0] in "PS" else char for char in text.lower())
    return re.sub(r"\s+", " ", kept).strip()


def error_rates(predictions: Sequence[str], references: Sequence[str], normalize: bool = True) -> dict[str, float]:
    """Corpus-level ``{"wer": ..., "cer": ...}`` of ``predictions`` against ``references``.

    Raises `EvalInputError` if the lists differ in length or a reference is empty (after normalization),
    since an empty reference has no length to divide its errors by.
    """
    if len(predictions) != len(references):
        raise EvalInputError(f"Got {len(predictions)} predictions for {len(references)} references; give one per reference.")
    if normalize:
        predictions = [normalize_transcript(text) for text in predictions]
        references = [normalize_transcript(text) for text in references]
    empty = [index for index, text in enumerate(references) if not text.strip()]
    if empty:
        raise EvalInputError(
            f"Reference transcript(s) at index {empty[:10]} are empty{' after normalization' if normalize else ''}; "
            "remove those samples or give them a transcript."
        )
    return load_metric().compute(predictions=list(predictions), references=list(references))
