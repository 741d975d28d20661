"""The patching scripts of examples/ (causal LM, Whisper, ViT), run on tiny random-weight checkpoints and tiny local data."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from recovery_checkpoints import (
    image_folder,
    llama_checkpoint,
    vit_checkpoint,
    whisper_checkpoint,
    write_wav_folder,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(script: str, arguments: list[str], monkeypatch, capsys) -> str:
    """Run ``python examples/<script> ...`` in this process; return what it printed."""
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    return capsys.readouterr().out


def test_causal_lm_generates_with_a_bounded_cache(tmp_path, monkeypatch, capsys):
    out = run_example("patch_causal_lm.py", ["--model", str(llama_checkpoint(tmp_path / "llama")), "--window", "8",
                                             "--sinks", "2", "--new-tokens", "20"], monkeypatch, capsys)
    unpatched, patched = (line for line in out.splitlines() if "cache holds" in line)
    prompt = 40  # the prompt's characters, one token each under the character tokenizer
    assert unpatched.startswith(f"unpatched: cache holds {prompt + 19} tokens")
    assert patched.startswith("sliding, window 8 + 2 sinks: cache holds 10 tokens")  # sinks, window - 1 and the newest


def test_whisper_transcribes_with_a_windowed_encoder(tmp_path, monkeypatch, capsys):
    audio = write_wav_folder(tmp_path / "clips", 16000)
    out = run_example("patch_whisper.py", ["--model", str(whisper_checkpoint(tmp_path / "whisper")), "--audio", str(audio),
                                           "--window", "4", "--max-new-tokens", "4"], monkeypatch, capsys)
    assert [line for line in out.splitlines() if line.endswith(".wav")] == ["clip0.wav", "clip1.wav", "clip2.wav"]
    assert out.count("encoder window 4:") == 3


def test_vit_scores_each_configuration(tmp_path, monkeypatch, capsys):
    images = image_folder(tmp_path / "images", per_class=2)
    out = run_example("patch_vit.py", ["--model", str(vit_checkpoint(tmp_path / "vit")), "--images", str(images),
                                       "--window", "2"], monkeypatch, capsys)
    assert out.splitlines()[0] == "6 images, top-1 accuracy:"
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["unpatched", "sliding,", "axial"]
