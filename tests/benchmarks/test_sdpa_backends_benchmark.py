"""benchmarks/sdpa_backends.py: a tiny run on the CPU writes its three sections, with the CUDA-only columns
marked as not run and the default column and the layout's exact routes checked against float32 math."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "sdpa_backends.py"


def test_tiny_run_writes_every_section(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny", "--lengths", "3"], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "sdpa_backends.json").read_text())
    for row in results["shapes"]:
        assert row["default"]["error"] < 1e-5 and row["default"]["fwd_ms"] > 0 and row["default"]["fwd_bwd_ms"] > 0
        assert all(row[column] == "n/a" for column in ("sdpa-cudnn", "sdpa-flash", "ours-cudnn", "ours"))
    layout = results["layout"]
    for route in ("auto", "whole-rows split", "one masked call"):
        assert layout[route]["error"] < 1e-5 and layout[route]["fwd_ms"] > 0
    new = results["new_shapes"]
    assert len(set(new["lengths"])) == 3 and new["default"]["lengths_timed"] == 3
    table = (tmp_path / "sdpa_backends.md").read_text()
    assert "| tiny causal |" in table and "whole-rows split" in table and "first call minus warm" in table
