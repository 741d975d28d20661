"""benchmarks/neighbourhood.py: the exact count of visible pairs, and a tiny run on the CPU (the kernel in
Triton's interpreter) that checks our kernel and writes the table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "neighbourhood.py"


@pytest.fixture(scope="module")
def neighbourhood():
    spec = importlib.util.spec_from_file_location("neighbourhood_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("rows", "cols", "window", "prefix", "leading", "global_queries"), [
    (4, 5, 2, 1, 1, 1), (6, 7, 3, 0, 0, 0), (5, 7, 2, 2, 9, 4), (9, 9, 20, 1, 3, 12), (64, 64, 5, 1, 1, 1),
])
def test_pairs_are_the_masks_count(neighbourhood, rows, cols, window, prefix, leading, global_queries):
    pattern = neighbourhood.Pattern(rows, cols, window, prefix)
    pattern.leading, pattern.global_queries = leading, global_queries
    assert pattern.pairs() == int(pattern.dense_mask("cpu").sum())


def test_tiny_run_checks_ours_and_writes_the_table(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_EA_AUTOTUNE": "0"}
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny", "--repeats", "1"], check=True,
                   env=env, cwd=ROOT, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "neighbourhood.json").read_text())
    assert [(row["grid"], row["pass"]) for row in results["rows"]] == [("4x5", "fwd"), ("4x5", "fwd+bwd")]
    for row in results["rows"]:
        assert row["pairs"] == 171 and row["err"] < 1e-4
        assert "ms" in row["ours"] and "ms" in row["sdpa dense"] and row["ours_over_share"] > 0
    assert all(err < 1e-4 for err in results["checks"]["window 2"].values())
    assert "| 4x5 | 21 | 2 | fwd+bwd | 171 |" in (tmp_path / "neighbourhood.md").read_text()
