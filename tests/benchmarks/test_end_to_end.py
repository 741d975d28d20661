"""benchmarks/end_to_end.py on tiny models on the CPU: every phase runs, the outputs are written, and the
correctness check stops a configuration that claims exactness it does not have."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "end_to_end.py"


@pytest.fixture(scope="module")
def end_to_end():
    spec = importlib.util.spec_from_file_location("end_to_end_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


TINY = ["--device", "cpu", "--tiny", "--models", "llama,whisper,vit", "--variants", "hf-sdpa,hf-sdpa-sliding,flash,sliding,performer",
        "--lengths", "32,64", "--whisper-lengths", "16", "--vit-sizes", "8,16", "--gen-new", "4", "--gen-variants",
        "hf-sdpa,sliding", "--time-budget", "300"]


def test_tiny_run_writes_results_and_flags_a_wrong_exact_claim(end_to_end, tmp_path, monkeypatch):
    # Performer approximates softmax attention; claiming it exact must fail its check and keep it untimed.
    monkeypatch.setitem(end_to_end.CONFIGS, "performer", dataclasses.replace(end_to_end.CONFIGS["performer"], exact=True))
    end_to_end.main(["--out", str(tmp_path), *TINY])

    results = json.loads((tmp_path / "end_to_end.json").read_text())
    markdown = (tmp_path / "end_to_end.md").read_text()
    checks = {(c["family"], c["config"], c["reference"], c["mode"]): c for c in results["checks"]}

    for family in ("llama", "whisper", "vit"):
        assert checks[(family, "performer", "hf-sdpa", "prefill")]["status"] == "FAIL"
        for name in ("hf-sdpa", "flash", "sliding"):
            assert checks[(family, name, "hf-sdpa", "prefill")]["status"] == "ok", (family, name)
    assert checks[("llama", "hf-sdpa-sliding", "hf-sdpa", "prefill")]["status"] == "ok"
    assert checks[("llama", "sliding", "hf-sdpa-sliding", "prefill")]["status"] == "ok"
    assert checks[("llama", "sliding", "hf-sdpa-sliding", "decode")]["status"] == "ok"

    rows = results["rows"]
    performer = [r for r in rows if r["config"] == "performer"]
    assert performer and all(r["status"] == "check failed" for r in performer)
    timed = [r for r in rows if r["config"] != "performer"]
    assert {r["mode"] for r in timed} == {"prefill", "train"}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in timed), [r for r in timed if r["status"] != "ok"]
    assert {r["family"] for r in timed} == {"llama", "whisper", "vit"}

    generation = {g["config"]: g for g in results["generation"]}
    assert set(generation) == {"hf-sdpa", "sliding"}
    for g in generation.values():
        assert g["status"] == "ok" and [p["generated"] for p in g["points"]] == [1, 2, 4]
    # the bounded cache keeps window - 1 tokens per layer; the full cache keeps them all
    assert generation["sliding"]["points"][-1]["cache_mib"] < generation["hf-sdpa"]["points"][-1]["cache_mib"]

    assert "| llama | performer | hf-sdpa | prefill |" in markdown and "FAIL" in markdown
    assert "## Targets" in markdown and "check failed" in markdown
    if results.get("plots"):
        assert all(Path(p).exists() for p in results["plots"])
    else:
        assert "matplotlib" in markdown


def test_rows_are_skipped_once_the_budget_is_spent(end_to_end, tmp_path):
    end_to_end.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--models", "vit", "--variants",
                     "hf-sdpa,sliding", "--vit-sizes", "8", "--skip-train", "--time-budget", "0"])
    results = json.loads((tmp_path / "end_to_end.json").read_text())
    assert [c["status"] for c in results["checks"]] == ["ok", "ok"]
    assert [r["status"] for r in results["rows"]] == ["skipped (time budget)"] * 2


def test_unknown_names_are_refused(end_to_end, tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        end_to_end.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--variants", "sdpa"])
