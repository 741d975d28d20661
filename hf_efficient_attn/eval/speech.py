"""Speech recognition quality: transcribe with a Whisper model's ``generate()`` and score WER and CER.

WER and CER come after Whisper's English normalizer, with the word list of the model's tokenizer where
it has one, and raw, on the transcripts as given (see `error_rates`); the score says which normalizer
and word list were used.

Every sample's sample rate is checked against the feature extractor's before anything runs, and a
sample longer than the feature extractor's window (30 s for Whisper) is refused: Whisper would see
only its start, and the error rate would measure truncation rather than attention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import audio
from .error_rates import english_normalizer, error_rates, spelling_mapping
from .errors import EvalInputError
from .progress import description
from .results import Score


def transcribe(
    model: nn.Module,
    feature_extractor,
    tokenizer,
    waveforms: Sequence[np.ndarray],
    generate_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Transcripts of ``waveforms`` (mono, at the feature extractor's rate) from one batched ``generate()``."""
    parameter = next(model.parameters())
    features = feature_extractor(
        list(waveforms), sampling_rate=feature_extractor.sampling_rate, return_tensors="pt"
    ).input_features.to(device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        ids = model.generate(input_features=features, **(generate_kwargs or {}))
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def speech_error_rates(
    model: nn.Module,
    feature_extractor,
    tokenizer,
    samples: Sequence[Any],
    references: Sequence[str],
    *,
    batch_size: int = 8,
    normalize: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> Score:
    """WER and CER of ``model``'s transcripts of ``samples`` against ``references``, normalized and raw.

    The headline is ``wer`` (after Whisper's English normalizer, comparable with published Whisper WERs),
    or ``raw_wer`` with ``normalize=False``; the details hold the other rates of `error_rates`, the
    normalizer used (``normalizer``) and the first transcripts with their normalized forms.

    Args:
        tokenizer: decodes the generated ids; its ``normalizer.json`` word list, if it has one, respells
            British words in the normalized rates (see `error_rates.spelling_mapping`).
        samples: audio in any form `audio.waveform` reads (paths, ``{"path", "bytes"}``, arrays).
        references: the reference transcript of each sample.
        normalize: make the normalized WER the headline; False: the raw WER (both are always computed).
        generate_kwargs: extra arguments of ``generate()`` (``language``, ``max_new_tokens``, ...).
    """
    if batch_size < 1:
        raise EvalInputError(f"batch_size must be >= 1, got {batch_size}.")
    expected = feature_extractor.sampling_rate
    audio.check_sample_rates(samples, expected)
    predictions: list[str] = []
    starts = range(0, len(samples), batch_size)
    for start in tqdm(starts, desc=description("transcribing"), unit="batch", disable=not progress):
        batch = samples[start : start + batch_size]
        waveforms = [audio.waveform(sample) for sample in batch]
        for offset, wave in enumerate(waveforms):
            if wave.shape[0] > feature_extractor.n_samples:
                raise EvalInputError(
                    f"Audio sample {start + offset} ({audio.describe(batch[offset])}) lasts {wave.shape[0] / expected:.1f} s; "
                    f"the model reads at most {feature_extractor.n_samples / expected:.0f} s. Split it into shorter clips."
                )
        predictions += transcribe(model, feature_extractor, tokenizer, waveforms, generate_kwargs)
    spelling = spelling_mapping(tokenizer)
    rates = error_rates(predictions, references, spelling)
    headline = "wer" if normalize else "raw_wer"
    details = {name: value for name, value in rates.items() if name != headline}
    details |= {"samples": len(samples), "normalizer": _normalizer_note(spelling),
                "examples": _examples(predictions, references, english_normalizer(spelling))}
    return Score(metric=headline, value=rates[headline], higher_is_better=False, details=details)


def _normalizer_note(spelling: Mapping[str, str]) -> str:
    """What the normalized rates were computed with, for reports."""
    words = (f"British-to-American word list of {len(spelling)} words from the tokenizer's normalizer.json" if spelling
             else "no word list (the tokenizer has no normalizer.json), British spellings kept")
    return f"Whisper's EnglishTextNormalizer (transformers), {words}"


def _examples(
    predictions: Sequence[str], references: Sequence[str], normalize: Callable[[str], str], count: int = 3
) -> list[dict[str, str]]:
    """The first few prediction/reference pairs, as given and normalized, so a reader can see what was scored."""
    return [{"prediction": p, "reference": r, "normalized_prediction": normalize(p), "normalized_reference": normalize(r)}
            for p, r in zip(predictions[:count], references[:count], strict=True)]
