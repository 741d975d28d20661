"""`hf-efficient-attn eval` end to end on tiny random models: reports written, `full` equal to the baseline,
and unusable input refused with a message that says the fix."""

from __future__ import annotations

import json
import sys

import jiwer
import pytest
from eval_fixtures import TEXT, write_wav_folder
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

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
        "--variant-option", "sink_tokens=2",
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
        "--variant", "full", "--variant", "sliding", "--window", 4, "--variant-option", "targets=encoder",
    )
    assert rows["_report"]["metric"] == "wer"
    baseline, full = rows["baseline"], rows["full(targets=encoder)"]
    assert full["value"] == baseline["value"] and full["details"]["cer"] == baseline["details"]["cer"]
    assert full["details"]["examples"] == baseline["details"]["examples"]
    assert baseline["details"]["samples"] == 3
    assert "sliding(targets=encoder, window=4)" in rows


WHISPER_STYLE = ["Hello, World!", "The colour is twenty five.", "Good morning, Mr. Smith."]
"""Transcripts with case, punctuation, a number and a British spelling: normalized and raw rates differ."""


def test_whisper_rates_normalized_and_raw(whisper_dir, tmp_path):
    clips = write_wav_folder(tmp_path / "clips", 16000, WHISPER_STYLE)
    arguments = ("--model", whisper_dir, "--data", clips, "--batch-size", 3, "--max-new-tokens", 6)
    baseline = run_eval(tmp_path / "normalized", *arguments)["baseline"]
    details = baseline["details"]
    # The three clips are all in the examples: jiwer on them, raw and through transformers' normalizer
    # (the character tokenizer has no normalizer.json, so no word list), gives the reported rates.
    predictions = [example["prediction"] for example in details["examples"]]
    normalize = EnglishTextNormalizer({})
    normal_predictions = [normalize(text).strip() for text in predictions]
    normal_references = ["hello world", "the colour is 25", "good morning mister smith"]
    assert [example["normalized_reference"] for example in details["examples"]] == normal_references
    assert baseline["value"] == pytest.approx(jiwer.wer(normal_references, normal_predictions))
    assert details["cer"] == pytest.approx(jiwer.cer(normal_references, normal_predictions))
    assert details["raw_wer"] == pytest.approx(jiwer.wer(WHISPER_STYLE, predictions))
    assert details["raw_cer"] == pytest.approx(jiwer.cer(WHISPER_STYLE, predictions))
    assert details["cer"] != pytest.approx(details["raw_cer"])
    assert "no word list" in details["normalizer"]
    table = (tmp_path / "normalized" / "comparison.md").read_text()
    assert "| configuration | wer | delta vs baseline | raw_wer | cer |" in table
    assert f"- normalizer: {details['normalizer']}" in table
    # --no-normalize makes the raw WER the headline; the same rates are all still there.
    rows = run_eval(tmp_path / "raw", *arguments, "--no-normalize")
    assert rows["_report"]["metric"] == "raw_wer"
    raw = rows["baseline"]
    assert raw["value"] == details["raw_wer"] and raw["details"]["wer"] == baseline["value"]
    assert (raw["details"]["cer"], raw["details"]["raw_cer"]) == (details["cer"], details["raw_cer"])
    assert "| configuration | raw_wer | delta vs baseline | wer | raw_cer |" in (tmp_path / "raw" / "comparison.md").read_text()


def test_vit_on_an_image_folder(vit_dir, image_folder, tmp_path):
    rows = run_eval(
        tmp_path, "--model", vit_dir, "--data", image_folder, "--batch-size", 4,
        "--variant", "full", "--variant", "sliding", "--window", 2, "--variant-options", "sliding.neighbourhood=2d",
    )
    assert rows["_report"]["metric"] == "accuracy"
    assert rows["full"]["value"] == rows["baseline"]["value"]
    assert rows["baseline"]["details"]["samples"] == 9
    assert "sliding(neighbourhood=2d, window=2)" in rows



def test_vit_under_lsh_and_axial(vit_dir, image_folder, tmp_path):
    """The content-based and the axial variants are configurations like any other; `lsh` with one bucket
    and one chunk over the 37 tokens is exact attention, so it scores as the baseline."""
    rows = run_eval(
        tmp_path, "--model", vit_dir, "--data", image_folder, "--batch-size", 4, "--variant", "lsh", "--variant", "axial",
        "--variant-option", "lsh.bucket_size=37", "lsh.num_buckets=1",
    )
    assert rows["lsh(bucket_size=37, num_buckets=1)"]["value"] == rows["baseline"]["value"]
    assert rows["axial"]["error"] is None and rows["axial"]["details"]["samples"] == 9

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


def test_progress_names_each_configuration_and_prints_its_result_when_done(llama_dir, text_file, tmp_path, capsys):
    run_eval(tmp_path, "--model", llama_dir, "--data", text_file, "--max-length", 48, "--variant", "full",
             "--variant", "sliding", "--window", 8)
    printed = capsys.readouterr().out
    assert f"{llama_dir.name} (text) on {text_file}: 8 windows of 48 tokens, 24 apart, over {len(TEXT)} tokens" in printed
    lines = [line for line in printed.splitlines() if line.startswith(("[", "    "))]
    assert lines[0] == f"[1/3] baseline (unpatched) on {llama_dir.name}"
    assert lines[1].startswith("    perplexity ") and "2 configurations to go, about" in lines[1]
    assert lines[2] == f"[2/3] full on {llama_dir.name}" and "(+0.0000 vs baseline)" in lines[3]
    assert lines[4] == f"[3/3] sliding(window=8) on {llama_dir.name}" and "vs baseline" in lines[5]
    assert printed.index(lines[5]) < printed.index("| configuration |")  # each result before the final table


def test_text_file_without_a_suffix_is_read_as_text(llama_dir, tmp_path):
    licence = tmp_path / "GPL-3"
    licence.write_text(TEXT)
    rows = run_eval(tmp_path / "out", "--model", llama_dir, "--data", licence, "--max-length", 48, "--variant", "full")
    assert rows["_report"]["context"]["samples"] == 1
    assert rows["baseline"]["details"]["tokens"] == len(TEXT) - 1  # one character per token


def default_text_run(llama_dir, text_file, tmp_path, monkeypatch, *arguments) -> dict:
    """``eval`` on the CPU without --data, with ``text_file`` as the default text and a CPU part of 40 tokens."""
    from hf_efficient_attn.eval import defaults

    monkeypatch.setattr(defaults, "default_source", lambda task, role: str(text_file))
    monkeypatch.setattr(defaults, "CPU_TEXT_TOKENS", 40)
    return run_eval(tmp_path, "--model", llama_dir, "--device", "cpu", "--max-length", 16, "--variant", "full", *arguments)


def test_cpu_without_data_scores_a_part_of_the_default_text_and_says_how_to_score_all(
    llama_dir, text_file, tmp_path, monkeypatch, capsys
):
    rows = default_text_run(llama_dir, text_file, tmp_path / "part", monkeypatch)
    assert rows["baseline"]["details"]["tokens"] == 39 and rows["baseline"]["details"]["forwards"] == 4
    printed = capsys.readouterr().out
    assert "on the CPU without --data, eval scores part of the default data, its first 40 tokens" in printed
    assert "--full scores all of it" in printed and "4 windows of 16 tokens, 8 apart, over 40 tokens" in printed

    rows = default_text_run(llama_dir, text_file, tmp_path / "full", monkeypatch, "--full")
    assert rows["baseline"]["details"]["tokens"] == len(TEXT) - 1
    assert "without --data" not in capsys.readouterr().out
    rows = default_text_run(llama_dir, text_file, tmp_path / "chosen", monkeypatch, "--max-tokens", 24)
    assert rows["baseline"]["details"]["tokens"] == 23  # the user's own part wins


def test_max_tokens_is_refused_in_document_mode(text_file, tmp_path, capsys):
    error = eval_error(capsys, "--model", tmp_path / "absent", "--data", text_file, "--mode", "document", "--max-tokens", 64)
    assert "--max-samples" in error


def test_full_with_data_is_refused(text_file, tmp_path, capsys):
    assert "Leave out --full or --data" in eval_error(capsys, "--model", tmp_path / "absent", "--data", text_file, "--full")


def test_unavailable_device_is_an_error_not_a_traceback(llama_dir, text_file, tmp_path, capsys):
    import torch

    past_the_last = f"cuda:{torch.cuda.device_count()}"
    error = eval_error(capsys, "--model", llama_dir, "--data", text_file, "--device", past_the_last, "--out", tmp_path)
    assert error.startswith(f"error: --device {past_the_last!r}") and "cpu" in error


def test_streaming_says_how_many_tokens_and_forwards_it_runs(llama_dir, text_file, tmp_path, capsys):
    run_eval(tmp_path, "--model", llama_dir, "--data", text_file, "--mode", "streaming", "--chunk-size", 8,
             "--max-tokens", 40, "--variant", "full")
    assert ": a stream of 40 tokens, 8 per forward (5 forwards), for the baseline and 1 configuration\n" in capsys.readouterr().out


def test_eval_without_its_extra_says_what_to_install(monkeypatch, capsys):
    """A base install (no datasets, jiwer, ...) gets the install command, not a ModuleNotFoundError."""
    from hf_efficient_attn.eval import cli as eval_cli

    real = eval_cli.missing_packages
    monkeypatch.setattr(eval_cli, "missing_packages", lambda names: ["datasets", *real(names)])
    assert main(["eval"]) == 2
    assert "pip install 'hf-efficient-attn[eval]'" in capsys.readouterr().err
