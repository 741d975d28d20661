"""Audio samples of a speech dataset: their sample rate and waveform, read with ``soundfile``.

A sample is one of the forms a ``datasets`` audio column takes: ``{"array", "sampling_rate"}`` (decoded),
``{"path", "bytes"}`` (an ``Audio(decode=False)`` column) or a file path. Files are read with
``soundfile`` (WAV, FLAC, OGG, MP3) rather than through ``datasets``' own decoding, which needs
torchcodec and FFmpeg. Nothing is resampled: a sample at another rate than the model's is an error.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import EvalInputError


def _file_of(sample: Any):
    """What soundfile can open for a sample given as a path or ``{"path", "bytes"}``."""
    if isinstance(sample, str):
        return sample
    if isinstance(sample, dict) and sample.get("bytes"):
        return io.BytesIO(sample["bytes"])
    if isinstance(sample, dict) and sample.get("path"):
        return sample["path"]
    raise EvalInputError(
        f"Cannot read an audio sample of type {type(sample).__name__}"
        f"{' with keys ' + str(sorted(sample)) if isinstance(sample, dict) else ''}; give a file path, "
        '{"path", "bytes"} or {"array", "sampling_rate"}.'
    )


def describe(sample: Any) -> str:
    """A short name of a sample for error messages: its path, or its kind."""
    if isinstance(sample, str):
        return sample
    if isinstance(sample, dict) and sample.get("path"):
        return str(sample["path"])
    return "an in-memory array" if isinstance(sample, dict) and "array" in sample else "in-memory bytes"


def sample_rate(sample: Any) -> int:
    """The sample rate of ``sample`` in Hz (read from the file header, without decoding the audio)."""
    if isinstance(sample, dict) and "array" in sample:
        return int(sample["sampling_rate"])
    import soundfile

    return int(soundfile.info(_file_of(sample)).samplerate)


def waveform(sample: Any) -> np.ndarray:
    """The mono float32 waveform of ``sample`` (channels averaged)."""
    if isinstance(sample, dict) and "array" in sample:
        data = np.asarray(sample["array"], dtype=np.float32)
    else:
        import soundfile

        data, _ = soundfile.read(_file_of(sample), dtype="float32", always_2d=False)
    return data.mean(axis=1) if data.ndim == 2 else data


def check_sample_rates(samples: Sequence[Any], expected: int) -> None:
    """Raise `EvalInputError` naming the first sample whose rate is not ``expected`` Hz."""
    for index, sample in enumerate(samples):
        rate = sample_rate(sample)
        if rate != expected:
            raise EvalInputError(
                f"Audio sample {index} ({describe(sample)}) is sampled at {rate} Hz, but the model's feature "
                f"extractor expects {expected} Hz. Resample the audio to {expected} Hz first "
                f"(e.g. `sox in.wav -r {expected} out.wav`)."
            )
