"""benchmarks/streaming.py on a tiny checkpoint: every row scores the stream, the recomputation baseline
scores each token once, and the report is written."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "eval"))

from eval_fixtures import TEXT, char_tokenizer  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def streaming():
    spec = importlib.util.spec_from_file_location("streaming_benchmark", ROOT / "benchmarks" / "streaming.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_recomputation_scores_each_token_once_with_its_window(streaming):
    model = tiny_llama().eval()
    ids = torch.randint(3, 97, (50,), generator=torch.Generator().manual_seed(0))
    nll = streaming.recomputed_token_nll(model, ids, 16, progress=False)
    assert nll.numel() == 49
    with torch.no_grad():  # windows [b, b + 16) every 4 tokens score their last 4: token 30 in [16, 32)
        logits = model(ids[None, 16:32]).logits[0]
    assert nll[29].item() == pytest.approx(F.cross_entropy(logits[13], ids[30]).item(), rel=1e-5)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    tiny_llama().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    data_dir.mkdir()
    (data_dir / "a.txt").write_text(TEXT * 2)
    return ["--model", str(model_dir), "--data", str(data_dir), "--tokens", "300", "--baseline-tokens", "120",
            "--chunk-size", "16", "--stretch", "100", "--early-stretch", "40", "--no-progress"]


def test_tiny_run_writes_every_row_and_the_targets(streaming, tiny_checkpoint, tmp_path):
    results = streaming.main(["--out", str(tmp_path / "out"), *tiny_checkpoint, "--windows", "32", "48",
                              "--sinks", "0", "4"])
    names = [(entry["row"], entry["positions"]) for entry in results["rows"]]
    assert names == [("unpatched", "text"), ("sliding 32, 0 sinks", "cache"), ("sliding 32, 4 sinks", "cache"),
                     ("sliding 32, 4 sinks", "text"), ("sliding 48, 0 sinks", "cache"),
                     ("sliding 48, 4 sinks", "cache"), ("recomputation 32", "text"), ("recomputation 48", "text")]
    by_name = {name: entry for name, entry in zip(names, results["rows"], strict=True)}
    assert by_name[("unpatched", "text")]["tokens"] == 119
    assert all(entry["tokens"] == 299 for name, entry in by_name.items() if name[0] != "unpatched")
    assert by_name[("sliding 32, 4 sinks", "cache")]["held_tokens"] == 4 + 31 + 16
    assert len(by_name[("sliding 32, 4 sinks", "cache")]["stretches"]) == 3
    assert len(by_name[("sliding 32, 4 sinks", "cache")]["stretch_tokens_per_s"]) == 3  # 300 positions by 100
    assert all(len(entry["early_stretches"]) == 3 for entry in results["rows"])  # 119 scored tokens by 40
    unpatched = by_name[("unpatched", "text")]
    assert unpatched["early_stretches"][0] == pytest.approx(  # the same tokens, the same prefix: the same scores
        by_name[("recomputation 48", "text")]["early_stretches"][0], rel=1e-4)
    assert all(math.isfinite(entry["perplexity"]) for entry in results["rows"])
    assert [line.split()[:3] for line in results["targets"]] == [
        [results["targets"][0].split()[0], "sliding", "32,"], [results["targets"][1].split()[0], "sliding", "48,"]]
    assert all(line.split()[0] in ("PASS", "MISS") for line in results["targets"])
    saved = json.loads((tmp_path / "out" / "streaming.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    table = (tmp_path / "out" / "streaming.md").read_text()
    assert table.count("\n| ") == 2 * (1 + 8) and "| 0-100 | 100-200 | 200-300 |" in table
    assert (tmp_path / "out" / "streaming.png").read_bytes().startswith(b"\x89PNG")


def test_resume_keeps_the_saved_rows_and_measures_the_rest(streaming, tiny_checkpoint, tmp_path, monkeypatch):
    out = ["--out", str(tmp_path / "out"), *tiny_checkpoint, "--windows", "32"]
    first = streaming.main([*out, "--sinks", "4"])
    measured = []
    original = streaming.streaming_perplexity
    monkeypatch.setattr(streaming, "streaming_perplexity", lambda *a, **k: measured.append(1) or original(*a, **k))
    monkeypatch.setattr(streaming, "recomputed_token_nll", lambda *a, **k: pytest.fail("recomputed again"))
    second = streaming.main([*out, "--sinks", "0", "4", "--resume"])
    assert len(measured) == 1  # only the new row: 0 sinks
    kept = {(entry["row"], entry["positions"]): entry for entry in first["rows"]}
    for entry in second["rows"]:
        if (entry["row"], entry["positions"]) in kept:
            assert entry == kept[(entry["row"], entry["positions"])]
    assert [entry["row"] for entry in second["rows"]].count("sliding 32, 0 sinks") == 1
    measured.clear()
    monkeypatch.setattr(streaming, "recomputed_token_nll", lambda *a, **k: torch.zeros(299))
    third = streaming.main([*out[:-1], "16", "--sinks", "4", "--resume"])  # another window: its rows are new
    assert len(measured) == 2  # 4 sinks with cache and with text positions at window 16; unpatched is kept
    assert third["rows"][0] == kept[("unpatched", "text")]


def test_token_counts_in_headers(streaming):
    assert [streaming.tokens_label(n) for n in (0, 8192, 100000, 4096, 300)] == ["0", "8k", "100k", "4k", "300"]
