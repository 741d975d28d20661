"""The English speech training set ``speech-en-train``: other sentences than ``speech-en``'s, in many voices.

Recovery fine-tuning of Whisper needs transcribed speech that the evaluation never hears. The
sentences come from the same Wikipedia articles of ``text-en`` as ``speech-en``'s, and pass the same
`speech.spoken_sentences` filter, but ``speech-en``'s own sentences (`speech.choose_sentences` with
its default count) are left out, so no evaluation sentence is ever trained on. They are taken round
robin over the articles (the first unused sentence of each article, then the second, ...), evenly
spaced through each article, so every article contributes.

Each sentence is spoken by one of `VOICES` at one of `WORDS_PER_MINUTE` (cycling through both, so
voice and rate vary independently), resampled to 16 kHz by `speech.synthesize`, and stored as Ogg
Vorbis through soundfile: about 6 kB per second of speech against 32 kB as 16-bit WAV (FLAC saves only
a third), so 400 utterances take about 14 MB. Vorbis is lossy but transparent for speech; the decoded
audio is the same on every run (the Ogg container's stream serial number is random, so the bytes are not).

The folder is an audio folder: ``0001.ogg`` … and ``metadata.csv`` (``file_name,text,source,voice,words_per_minute``),
plus ``synthesis.json`` recording the voices, rates and espeak-ng version.
"""

from __future__ import annotations

import csv
import json
import subprocess
import tempfile
from pathlib import Path

from .speech import DEFAULT_COUNT, _tool, choose_sentences, require_speech_tools, spoken_sentences, synthesize

TRAINING_COUNT = 400
VOICES = ("en-us+m3", "en-us+f2", "en-gb+m1", "en-gb-x-rp+f4", "en-029+m2", "en-gb-scotland+m5", "en-us+m7")
"""espeak-ng voices (language + variant): American, British, Received Pronunciation, Caribbean and Scottish English."""
WORDS_PER_MINUTE = (120, 140, 160, 175)
"""Speaking rates; their count is prime to the number of voices, so every voice speaks at every rate."""
FORMAT, SUBTYPE, SUFFIX = "OGG", "VORBIS", ".ogg"


def training_sentences(text_folder: Path, count: int = TRAINING_COUNT, held_out: int = DEFAULT_COUNT) -> list[tuple[str, str]]:
    """``count`` ``(sentence, file)`` pairs of the Wikipedia articles of ``text_folder``, none of them among
    the ``held_out`` sentences that ``speech-en`` speaks."""
    excluded = {sentence for sentence, _ in choose_sentences(text_folder, held_out)}
    manifest = json.loads((text_folder / "manifest.json").read_text(encoding="utf-8"))
    files = sorted(entry["file"] for entry in manifest["documents"] if entry["source"] == "wikipedia")
    pools = {file: [s for s in spoken_sentences((text_folder / file).read_text(encoding="utf-8")) if s not in excluded] for file in files}
    per_document = -(-count // max(len(files), 1))
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for round_ in range(per_document):
        for file in files:
            pool = pools[file]
            if len(pool) <= round_:
                continue
            sentence = pool[(2 * round_ + 1) * len(pool) // (2 * per_document)] if len(pool) >= per_document else pool[round_]
            if sentence not in seen:
                seen.add(sentence)
                chosen.append((sentence, file))
    if len(chosen) < count:
        raise ValueError(f"{text_folder} yields {len(chosen)} unused speakable sentences, fewer than the {count} asked for")
    return chosen[:count]


def build_speech_training_set(folder: Path, text_folder: Path, count: int = TRAINING_COUNT) -> list[dict]:
    """Synthesize ``count`` training sentences of ``text_folder`` into ``folder``; return the metadata rows."""
    import soundfile

    require_speech_tools()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        wav = Path(scratch) / "speech.wav"
        for index, (sentence, source) in enumerate(training_sentences(text_folder, count)):
            voice, rate = VOICES[index % len(VOICES)], WORDS_PER_MINUTE[index % len(WORDS_PER_MINUTE)]
            synthesize(sentence, wav, voice, rate)
            audio, sample_rate = soundfile.read(wav, dtype="int16")
            name = f"{index + 1:04d}{SUFFIX}"
            soundfile.write(folder / name, audio, sample_rate, format=FORMAT, subtype=SUBTYPE)
            rows.append({"file_name": name, "text": sentence, "source": source, "voice": voice, "words_per_minute": rate})
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    version = subprocess.run([_tool("espeak-ng"), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    synthesis = {"voices": list(VOICES), "words_per_minute": list(WORDS_PER_MINUTE), "format": f"{FORMAT}/{SUBTYPE}",
                 "held_out": f"the {DEFAULT_COUNT} sentences of speech-en", "espeak_ng": version}
    (folder / "synthesis.json").write_text(json.dumps(synthesis, indent=1) + "\n", encoding="utf-8")
    return rows
