"""`hf-efficient-attn eval` end to end on tiny random models: reports written, `full` equal to the baseline,
and unusable input refused with a message that says the fix."""

from __future__ import annotations

import json
import sys

import pytest
from eval_fixtures import TEXT, write_wav_folder

from hf_efficient_attn.cli import main
from hf_efficient_attn.eval.cli import variant_configs
from hf_efficient_attn.eval.errors import EvalInputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_eval(out, *arguments: str) -> dict:
    assert main(["eval", *map(str, arguments), "--out", str(out), "--no-progress"]) == 0
    assert (out / "comparison.md").read_text().startswith("## ")
    assert (out / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)
    report = json.loads((out / "comparison.json").read_text())
    return {row["label"]: row for row in report["rows"]} | {"_report": report}


@pytest.mark.parametrize("mode", ["strided", "document"])
def test_language_model_on_a_text_file(llama_dir, text_file, tmp_path, mode):
    rows = run_eval(
        tmp_path, "--model", llama_dir, "--data", text_file, "--mode", mode, "--max-length", 48, "--stride", 16,
        "--variant", "full", "--variant", "sliding", "--window", "8,48",
    )
    assert rows["_report"]["metric"] == "perplexity" and rows["_report"]["context"]["task"] == "text"
    baseline = rows["baseline"]["value"]
    assert rows["full"]["value"] == pytest.approx(baseline, rel=1e-6)
    assert rows["sliding(window=48)"]["value"] == pytest.approx(baseline, rel=1e-6)  # window covers every window
    assert rows["sliding(window=8)"]["value"] != pytest.approx(baseline, rel=1e-6)
    assert rows["sliding(window=8)"]["delta"] == pytest.approx(rows["sliding(window=8)"]["value"] - baseline)
    assert all(row["seconds"] > 0 for label, row in rows.items() if label != "_report")


def test_document_mode_with_min_tokens_scores_only_long_documents(llama_dir, tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    for name, length in (("short", 20), ("exact", 48), ("long", 300), ("middle", 47)):
        (folder / f"{name}.txt").write_text(TEXT[:length])
    rows = run_eval(tmp_path / "long", "--model", llama_dir, "--data", folder, "--mode", "document",
                    "--max-length", 48, "--min-tokens", 48, "--variant", "full")
    details = rows["baseline"]["details"]
    assert (details["documents"], details["skipped_documents"], details["truncated_documents"]) == (2, 2, 1)
    assert details["tokens"] == 2 * 47  # both fill the context and score from their second token
    assert rows["full"]["value"] == pytest.approx(rows["baseline"]["value"], rel=1e-6)


def test_streaming_mode_writes_its_stretches_and_position_plot(llama_dir, text_file, tmp_path):
    rows = run_eval(
        tmp_path, "--model", llama_dir, "--data", text_file, "--mode", "streaming", "--chunk-size", 8,
        "--max-tokens", 90, "--stretch", 30, "--variant", "sliding", "--window", "8,128",
        "--variant-options", "sink_tokens=2",
    )
    assert (tmp_path / "perplexity-by-position.png").read_bytes().startswith(PNG_SIGNATURE)
    baseline, narrow, wide = rows["baseline"], rows["sliding(sink_tokens=2, window=8)"], rows["sliding(sink_tokens=2, window=128)"]
    assert baseline["details"]["positions"] == "text" and narrow["details"]["positions"] == "cache"
    assert baseline["details"]["tokens"] == narrow["details"]["tokens"] == 89  # every token but the first, once
    assert len(narrow["details"]["stretch_perplexities"]) == 3
    assert narrow["details"]["held_tokens_max"] == 2 + 7 + 8  # sinks, window - 1, one chunk: bounded
    assert baseline["details"]["held_tokens_max"] == 90  # the unpatched cache grows
    assert wide["value"] == pytest.approx(baseline["value"], rel=1e-5)  # the window covers the stream
    assert narrow["value"] != pytest.approx(baseline["value"], rel=1e-5)
    table = (tmp_path / "comparison.md").read_text()
    assert "Perplexity per stretch of 30 scored tokens" in table and "| 0-30 | 30-60 | 60-90 |" in table


def test_whisper_on_an_audio_folder(whisper_dir, audio_folder, tmp_path):
    rows = run_eval(
        tmp_path, "--model", whisper_dir, "--data", audio_folder, "--batch-size", 2, "--max-new-tokens", 6,
        "--variant", "full", "--variant", "sliding", "--window", 4, "--variant-options", "targets=encoder",
    )
    assert rows["_report"]["metric"] == "wer"
    baseline, full = rows["baseline"], rows["full(targets=encoder)"]
    assert full["value"] == baseline["value"] and full["details"]["cer"] == baseline["details"]["cer"]
    assert full["details"]["examples"] == baseline["details"]["examples"]
    assert baseline["details"]["samples"] == 3
    assert "sliding(targets=encoder, window=4)" in rows


def test_vit_on_an_image_folder(vit_dir, image_folder, tmp_path):
    rows = run_eval(
        tmp_path, "--model", vit_dir, "--data", image_folder, "--batch-size", 4,
        "--variant", "full", "--variant", "sliding", "--window", 2, "--variant-options", "sliding.neighbourhood=2d",
    )
    assert rows["_report"]["metric"] == "accuracy"
    assert rows["full"]["value"] == rows["baseline"]["value"]
    assert rows["baseline"]["details"]["samples"] == 9
    assert "sliding(neighbourhood=2d, window=2)" in rows


def eval_error(capsys, *arguments) -> str:
    assert main(["eval", *map(str, arguments), "--no-progress"]) == 2
    return capsys.readouterr().err


def test_missing_data_file(llama_dir, tmp_path, capsys):
    assert "does not exist" in eval_error(capsys, "--model", llama_dir, "--data", tmp_path / "nope.txt", "--out", tmp_path)


def test_missing_model_folder(text_file, tmp_path, capsys):
    message = eval_error(capsys, "--model", tmp_path / "no-model", "--data", text_file, "--out", tmp_path)
    assert "model path" in message and "does not exist" in message


def test_bad_stride_is_refused_before_the_model_loads(text_file, tmp_path, capsys):
    message = eval_error(capsys, "--model", tmp_path / "no-model", "--data", text_file, "--max-length", 64,
                         "--stride", 64, "--out", tmp_path)
    assert "stride must be an integer in [1, max_length - 1] = [1, 63]" in message


def test_window_flags_are_refused_in_streaming_mode(text_file, tmp_path, capsys):
    error = eval_error(capsys, "--model", tmp_path / "absent", "--data", text_file, "--mode", "streaming",
                       "--max-length", 64)
    assert "--chunk-size" in error and "--max-tokens" in error


def test_min_tokens_is_refused_outside_document_mode(text_file, tmp_path, capsys):
    error = eval_error(capsys, "--model", tmp_path / "absent", "--data", text_file, "--min-tokens", 64)
    assert "--mode document" in error


def test_empty_dataset(whisper_dir, tmp_path, capsys):
    empty = write_wav_folder(tmp_path / "empty", 16000, [])
    assert "no samples" in eval_error(capsys, "--model", whisper_dir, "--data", empty, "--out", tmp_path)


def test_audio_at_8_khz(whisper_dir, tmp_path, capsys):
    clips = write_wav_folder(tmp_path / "clips8k", 8000)
    message = eval_error(capsys, "--model", whisper_dir, "--data", clips, "--out", tmp_path / "out")
    assert "8000 Hz" in message and "expects 16000 Hz" in message and "Resample" in message
    assert not (tmp_path / "out").exists()


def test_text_data_for_a_vit(vit_dir, text_file, tmp_path, capsys):
    message = eval_error(capsys, "--model", vit_dir, "--data", text_file, "--out", tmp_path)
    assert "is text data" in message and "vision model" in message and "image folder" in message


def test_task_that_the_model_does_not_serve(llama_dir, text_file, tmp_path, capsys):
    message = eval_error(capsys, "--model", llama_dir, "--data", text_file, "--task", "speech", "--out", tmp_path)
    assert "task='speech'" in message and "'text'" in message


def test_refused_variant_configuration(vit_dir, image_folder, tmp_path, capsys):
    message = eval_error(capsys, "--model", vit_dir, "--data", image_folder, "--variant", "sliding",
                         "--variant-options", "sink_tokens=-1", "--out", tmp_path)
    assert "sliding(sink_tokens=-1) was refused" in message


def test_variant_configs_from_flags():
    configs = variant_configs(
        ["full", "sliding", "sparse"], "64,128", ["sink_tokens=4", "sparse.block_size=16", "layers=[0, 1]"]
    )
    assert [(config.variant, config.options) for config in configs] == [
        ("full", {"layers": [0, 1]}),
        ("sliding", {"sink_tokens": 4, "layers": [0, 1], "window": 64}),
        ("sliding", {"sink_tokens": 4, "layers": [0, 1], "window": 128}),
        ("sparse", {"block_size": 16, "layers": [0, 1]}),
    ]
    with pytest.raises(EvalInputError, match="not a variant"):
        variant_configs(["windowed"], None, [])
    with pytest.raises(EvalInputError, match="none of the variants"):
        variant_configs(["full"], "64", [])
    with pytest.raises(EvalInputError, match="no chosen variant has an option 'rank'"):
        variant_configs(["sliding"], None, ["rank=4"])
    with pytest.raises(EvalInputError, match="not KEY=VALUE"):
        variant_configs(["sliding"], None, ["window"])


def test_default_model_needs_the_assets_module(text_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "hf_efficient_attn.assets", None)  # as if the module were absent
    message = eval_error(capsys, "--task", "text", "--data", text_file, "--out", tmp_path)
    assert "No --model was given" in message and "'smollm2-135m'" in message and "Give --model PATH" in message
