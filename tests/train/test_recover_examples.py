"""The three recovery scripts of examples/, end to end for two steps on tiny random-weight checkpoints and tiny local data."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from recovery_checkpoints import (
    TEXT,
    image_folder,
    llama_checkpoint,
    text_folder,
    vit_checkpoint,
    whisper_checkpoint,
    write_wav_folder,
)
from training_batches import run_on_two_cpu_ranks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMON = ["--steps", "2", "--batch-size", "2", "--no-progress"]


def run_example(script: str, arguments: list[str], monkeypatch) -> dict:
    """Run an example as ``python examples/<script> ...`` would, in this process; return its saved report."""
    out = Path(arguments[arguments.index("--output-dir") + 1])
    monkeypatch.setattr(sys, "argv", [script, *arguments, *COMMON])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert {path.name for path in out.iterdir()} >= {"recovery.json", "recovery.md", "recovery.png"}
    return json.loads((out / "recovery.json").read_text())


def test_causal_lm_with_a_control_run(tmp_path, monkeypatch):
    model = llama_checkpoint(tmp_path / "llama")
    corpus = tmp_path / "held-out.txt"
    corpus.write_text(TEXT * 3)
    arguments = ["--model", str(model), "--train-data", str(text_folder(tmp_path / "train")), "--eval-data", str(corpus),
                 "--window", "8", "--seq-len", "64", "--eval-tokens", "200", "--recipe", "full", "--control",
                 "--output-dir", str(tmp_path / "out")]
    report = run_example("recover_causal_lm.py", arguments, monkeypatch)
    assert (report["metric"], report["lower_is_better"], report["variant_options"]) == ("perplexity", True, {"window": 8})
    assert [row["step"] for row in report["history"] if row["metric"] is not None] == [0, 2]
    assert report["control"] == report["control_history"][-1]["metric"]
    assert report["fine_tuned"] == report["history"][-1]["metric"] and report["zero_shot"] > 1


def test_whisper_windowed_encoder(tmp_path, monkeypatch):
    arguments = ["--model", str(whisper_checkpoint(tmp_path / "whisper")), "--window", "4",
                 "--train-data", str(write_wav_folder(tmp_path / "train", 16000)),
                 "--eval-data", str(write_wav_folder(tmp_path / "eval", 16000, ["good evening", "hello"])),
                 "--distill", "0.5", "--lora-mlp", "--warmup-steps", "1", "--max-new-tokens", "5", "--output-dir", str(tmp_path / "out")]
    report = run_example("recover_whisper.py", arguments, monkeypatch)
    assert (report["metric"], report["variant_options"]) == ("wer", {"targets": "encoder", "window": 4})
    assert report["config"]["recipe"] == "lora" and report["control"] is None
    chosen = {key: report["config"][key] for key in ("distill_weight", "lora_mlp", "warmup_steps")}
    assert chosen == {"distill_weight": 0.5, "lora_mlp": True, "warmup_steps": 1}


def test_vit_under_accelerate_launch(tmp_path):
    """The launcher's one-process CPU run: the same script, no code change."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed (pip install accelerate)")
    images = image_folder(tmp_path / "images")
    arguments = ["--model", str(vit_checkpoint(tmp_path / "vit")), "--window", "2", "--train-data", str(images),
                 "--eval-data", str(images), "--augment", "--output-dir", str(tmp_path / "out"), *COMMON]
    subprocess.run([launcher, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", str(EXAMPLES / "recover_vit.py"), *arguments], check=True, timeout=300)
    report = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert (report["metric"], report["lower_is_better"]) == ("accuracy", False)
    assert report["variant_options"] == {"neighbourhood": "2d", "window": 2} and report["processes"] == 1


def test_vit_on_two_cpu_processes_under_torchrun(tmp_path):
    """Two real ranks: the report counts both, so the script trained as one DDP job, not two copies."""
    images = image_folder(tmp_path / "images")
    arguments = ["--model", str(vit_checkpoint(tmp_path / "vit")), "--window", "2", "--train-data", str(images),
                 "--eval-data", str(images), "--output-dir", str(tmp_path / "out"), *COMMON]
    run_on_two_cpu_ranks(EXAMPLES / "recover_vit.py", arguments)
    report = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert report["processes"] == 2 and report["steps"] == 2
