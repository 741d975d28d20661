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


def test_tiny_run_writes_every_row_and_the_target(streaming, tmp_path):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    tiny_llama().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    data_dir.mkdir()
    (data_dir / "a.txt").write_text(TEXT * 2)
    results = streaming.main(["--out", str(tmp_path / "out"), "--model", str(model_dir), "--data", str(data_dir),
                              "--tokens", "300", "--baseline-tokens", "120", "--windows", "32", "--sinks", "0", "4",
                              "--chunk-size", "16", "--stretch", "100", "--no-progress"])
    names = [(entry["row"], entry["positions"]) for entry in results["rows"]]
    assert names == [("unpatched", "text"), ("sliding 32, 0 sinks", "cache"), ("sliding 32, 4 sinks", "cache"),
                     ("sliding 32, 4 sinks", "text"), ("recomputation 32", "text")]
    by_name = {name: entry for name, entry in zip(names, results["rows"], strict=True)}
    assert by_name[("unpatched", "text")]["tokens"] == 119
    assert all(entry["tokens"] == 299 for name, entry in by_name.items() if name[0] != "unpatched")
    assert by_name[("sliding 32, 4 sinks", "cache")]["held_tokens"] == 4 + 31 + 16
    assert len(by_name[("sliding 32, 4 sinks", "cache")]["stretches"]) == 3
    assert all(math.isfinite(entry["perplexity"]) for entry in results["rows"])
    assert len(results["targets"]) == 1 and results["targets"][0].split()[0] in ("PASS", "MISS")
    saved = json.loads((tmp_path / "out" / "streaming.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    assert (tmp_path / "out" / "streaming.md").read_text().count("\n| ") == 6
    assert (tmp_path / "out" / "streaming.png").read_bytes().startswith(b"\x89PNG")
