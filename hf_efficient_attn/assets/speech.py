"""The English speech set ``speech-en``: real sentences spoken by espeak-ng, 16 kHz WAV + transcripts.

The sentences come from the Wikipedia articles of ``text-en`` (build that first): evenly spaced
through each article, 8 to 24 words, letters and plain punctuation only (no digits, quotes or
brackets, whose spoken form is ambiguous), one article after another in file order. espeak-ng
speaks each with a fixed voice and rate; sox resamples to 16 kHz mono 16-bit without dither (1 dB quieter, so that no sample clips), so the
same sentences give the same bytes on every run. The audio is synthetic, but the text is the exact
reference transcript, which is what a word error rate needs.

The folder is an audio folder: ``0001.wav`` … and ``metadata.csv`` (``file_name,text,source``), plus
``synthesis.json`` recording the voice, rate and espeak-ng version.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

VOICE = "en-us+m3"
"""American English with the third male variant: the most intelligible to whisper-tiny.en of those tried."""
WORDS_PER_MINUTE = 140
SAMPLE_RATE = 16000
DEFAULT_COUNT = 80

_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;'-]*[a-z]\.")
_INSTALL_TOOLS = (
    "install them with `sudo apt-get install espeak-ng sox` (Debian/Ubuntu) or `brew install espeak-ng sox` (macOS)"
)


class SpeechToolMissingError(RuntimeError):
    """espeak-ng or sox is not on the PATH."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SpeechToolMissingError(f"{name} is not installed; the speech set needs espeak-ng and sox: {_INSTALL_TOOLS}")
    return path


def require_speech_tools() -> None:
    """Raise `SpeechToolMissingError`, saying how to install them, unless espeak-ng and sox are on the PATH."""
    _tool("espeak-ng")
    _tool("sox")


def spoken_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that speak unambiguously (see the module docstring), in order."""
    candidates = [s for line in text.splitlines() for s in re.split(r"(?<=[.!?])\s+", line.strip())]
    return [s for s in candidates if _SENTENCE.fullmatch(s) and 8 <= len(s.split()) <= 24]


def choose_sentences(text_folder: Path, count: int) -> list[tuple[str, str]]:
    """``count`` ``(sentence, file)`` pairs from the Wikipedia documents of the ``text-en`` folder."""
    manifest = json.loads((text_folder / "manifest.json").read_text(encoding="utf-8"))
    files = sorted(entry["file"] for entry in manifest["documents"] if entry["source"] == "wikipedia")
    per_document = -(-count // max(len(files), 1))
    rounds: list[list[tuple[str, str]]] = [[] for _ in range(per_document)]
    for file in files:
        sentences = spoken_sentences((text_folder / file).read_text(encoding="utf-8"))
        if len(sentences) < per_document:
            continue
        for i in range(per_document):
            rounds[i].append((sentences[(2 * i + 1) * len(sentences) // (2 * per_document)], file))
    chosen = [pair for round_ in rounds for pair in round_][:count]
    if len(chosen) < count:
        raise ValueError(f"{text_folder} yields {len(chosen)} speakable sentences, fewer than the {count} asked for")
    return chosen


def synthesize(sentence: str, output: Path, voice: str = VOICE, words_per_minute: int = WORDS_PER_MINUTE) -> None:
    """Speak ``sentence`` into ``output``: a 16 kHz mono 16-bit WAV, in an espeak-ng ``voice`` at a rate."""
    espeak, sox = _tool("espeak-ng"), _tool("sox")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "speech.wav"
        subprocess.run([espeak, "-v", voice, "-s", str(words_per_minute), "-w", str(raw), sentence], check=True)
        # 1 dB of headroom: resampling espeak-ng's full-scale peaks would otherwise clip a few samples.
        subprocess.run([sox, "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(output), "gain", "-1"], check=True)


def build_speech_set(folder: Path, text_folder: Path, count: int = DEFAULT_COUNT) -> list[dict]:
    """Synthesize ``count`` sentences of ``text_folder`` into ``folder``; return the metadata rows."""
    require_speech_tools()
    rows = []
    for index, (sentence, source) in enumerate(choose_sentences(text_folder, count), 1):
        name = f"{index:04d}.wav"
        synthesize(sentence, folder / name)
        rows.append({"file_name": name, "text": sentence, "source": source})
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text", "source"])
        writer.writeheader()
        writer.writerows(rows)
    version = subprocess.run([_tool("espeak-ng"), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    synthesis = {"voice": VOICE, "words_per_minute": WORDS_PER_MINUTE, "sample_rate": SAMPLE_RATE, "espeak_ng": version}
    (folder / "synthesis.json").write_text(json.dumps(synthesis, indent=1) + "\n", encoding="utf-8")
    return rows
