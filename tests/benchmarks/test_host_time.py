"""benchmarks/host_time.py on tiny models on the CPU: every measurement runs and the report is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "host_time.py"


def test_tiny_run_writes_every_row(tmp_path):
    spec = importlib.util.spec_from_file_location("host_time_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    results = module.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--repeats", "2"])

    saved = json.loads((tmp_path / "host_time.json").read_text())
    assert saved["models"] == results["models"]
    rows = {(row["model"].split()[0], row["config"]): row for row in saved["models"]}
    assert set(rows) == {(model, config) for model in ("ViT", "Whisper") for config in module.MODEL_ROWS}
    for (_model, config), row in rows.items():
        assert 0 < row["host_ms"] <= row["wall_ms"]
        if config == "hf-sdpa":
            assert row["extra_host_us_per_layer"] == 0
    calls = {(row["call"], row["pass"]): row for row in saved["calls"]}
    assert calls[("torch sdpa", "forward")]["host_us"] > 0
    ours = calls[("ours fused_attention", "forward")]
    assert "host_us" in ours or ours["status"].startswith("n/a")
    report = (tmp_path / "host_time.md").read_text()
    assert "| Whisper (tiny shapes) | 16 | flash |" in report and "cProfile" in report
