"""benchmarks/layout_configs.py: a tiny run on the CPU (kernels interpreted) times every column of both
shapes and checks each forced configuration against float64 attention under the layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "layout_configs.py"


def test_tiny_run_times_every_configuration_and_checks_it(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_EA_AUTOTUNE": "0"}
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny"], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=600)
    results = json.loads((tmp_path / "layout_configs.json").read_text())
    assert set(results["shapes"]) == {"tiny bidirectional", "tiny causal"}
    for shape in results["shapes"].values():
        times, errors = shape["times"], shape["errors"]
        assert 0.3 < shape["density"] < 0.9  # the layout leaves block pairs out
        assert all(isinstance(ms, float) and ms > 0 for ms in times.values()), times
        assert set(errors) == {"layout w4 s1 tile 32x16", "layout w4 s1 tile 16x16"}
        assert all(error < 1e-5 for error in errors.values()), errors
    table = (tmp_path / "layout_configs.md").read_text()
    assert "## tiny causal" in table and "| layout, every block |" in table
