"""`hf-efficient-attn demo`: its rows against the unpatched model, its inputs, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from hf_efficient_attn.cli import main
from hf_efficient_attn.demo import TABLE_HEADER, run_demo, table_row, text_ids, tiny_model
from tests.tiny_models import tiny_llama, tiny_whisper


def test_exact_variants_match_and_approximations_are_reported():
    model = tiny_llama().eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    shown = []
    returned = run_demo(model, ids, repeats=1, on_row=shown.append)
    assert shown == returned  # each row as soon as it was measured, in order
    rows = {row.variant: row for row in returned}

    assert rows["full"].max_abs_diff < 1e-5 and rows["full"].top1_agreement == 1.0
    assert rows["full"].perplexity == pytest.approx(rows[f"unpatched ({model.config._attn_implementation})"].perplexity)
    assert rows["performer"].max_abs_diff > 1e-3  # an approximation shows as one
    assert rows["lowrank"].measurement is None and "cannot run" in rows["lowrank"].note  # refused on a causal LM
    assert rows["axial"].measurement is None and "cannot run" in rows["axial"].note  # no patch grid in an LM
    assert rows["lsh"].max_abs_diff > 1e-3 and 0 < rows["lsh"].top1_agreement < 1
    with torch.no_grad():  # each variant was unpatched again
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_text_ids_are_consecutive_tokens_of_the_documents(tmp_path):
    (tmp_path / "a.txt").write_text("one two three")
    (tmp_path / "b.txt").write_text("four five six seven")
    (tmp_path / "manifest.json").write_text(json.dumps({"documents": [{"file": "a.txt"}, {"file": "b.txt"}]}))

    def tokenizer(text, add_special_tokens):
        return {"input_ids": [len(word) for word in text.split()]}

    assert text_ids(tokenizer, tmp_path, batch=2, length=3).tolist() == [[3, 3, 5], [4, 4, 3]]
    with pytest.raises(ValueError, match="fewer than --batch × --length"):
        text_ids(tokenizer, tmp_path, batch=2, length=4)


def test_tiny_demo_prints_every_variant(capsys):
    assert main(["demo", "--tiny", "--length", "32", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "small Llama (random weights)" in printed
    assert "\n".join(TABLE_HEADER) in printed
    for name in ("flash", "full", "sliding", "sparse", "performer", "linear", "lsh", "axial"):
        assert f"| {name} |" in printed


def test_table_rows_show_measurements_or_why_a_variant_was_refused():
    rows = run_demo(tiny_model(), torch.randint(0, 4096, (1, 16), generator=torch.Generator().manual_seed(0)), repeats=1)
    lines = {row.variant: table_row(row) for row in rows}
    assert lines["full"].startswith("| full | - | ") and lines["full"].count("|") == TABLE_HEADER[0].count("|")
    assert lines["sliding"].startswith("| sliding | window=256, sink_tokens=4 | ")
    assert lines["lowrank"].startswith("| lowrank | rank=64 | n/a: ")


def test_local_checkpoint_with_tokenizer_runs_on_text(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_EFFICIENT_ATTN_ASSETS", str(tmp_path / "no-assets"))
    tiny_model().save_pretrained(tmp_path / "model")
    assert main(["demo", "--model", str(tmp_path / "model"), "--length", "16", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "random token ids (the checkpoint has no tokenizer)" in printed
    assert "| sliding |" in printed


def test_missing_default_assets_name_the_build_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_EFFICIENT_ATTN_ASSETS", str(tmp_path))
    assert main(["demo"]) == 1
    error = capsys.readouterr().err
    assert "hf-efficient-attn fetch-assets --only smollm2,text" in error and "--tiny" in error


@pytest.mark.parametrize("flag", ["--length", "--batch", "--repeats"])
def test_non_positive_sizes_are_refused(flag, capsys):
    assert main(["demo", "--tiny", flag, "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_missing_model_path_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "nonexistent")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --model: ") and "does not exist" in error and "save_pretrained" in error
    assert "Traceback" not in error and "Repo id" not in error


def test_folder_without_a_config_is_refused(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path, capsys):
    tiny_whisper().save_pretrained(tmp_path)
    assert main(["demo", "--model", str(tmp_path), "--length", "8", "--repeats", "1"]) == 2
    assert "'WhisperForConditionalGeneration', not a causal language model" in capsys.readouterr().err


def test_unavailable_device_names_the_available_ones(capsys):
    past_the_last = f"cuda:{torch.cuda.device_count()}"
    assert main(["demo", "--tiny", "--device", past_the_last]) == 2
    error = capsys.readouterr().err
    assert f"--device {past_the_last!r}" in error and "cpu" in error and "Traceback" not in error


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="this torch build has CUDA")
def test_cuda_on_a_cpu_build_of_torch_says_so(capsys):
    assert main(["demo", "--tiny", "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert "has no CUDA support" in error and "install a CUDA build of torch" in error
