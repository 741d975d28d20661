"""benchmarks/new_lengths.py: a tiny run on the CPU times every row, each on a prompt past every earlier
row's lengths except the rows that repeat the previous prompt, and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_times_every_row_on_the_lengths_it_names(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "new_lengths.py"), "--out", str(tmp_path), "--tiny",
                    "--prompt", "10", "--steps", "3"], check=True, cwd=ROOT, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "new_lengths.json").read_text())
    rows = {row["row"]: row for row in results["rows"]}
    assert len(rows) == 5 and all(row["median_ms"] >= row["min_ms"] > 0 for row in rows.values())
    prompts = [row["prompt"] for row in results["rows"]]
    assert prompts == [15, 15, 20, 25, 25]  # a stride of steps + 2 past the previous new prompt
    assert "| flash, same lengths again | 25 |" in (tmp_path / "new_lengths.md").read_text()
