"""benchmarks/harness/markdown.py: the table format every report uses, and the marks of merged runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import markdown  # noqa: E402


def test_table_lines():
    lines = markdown.table(["config", "ms", "note"], [["flash", 1.5, ""], ["sdpa", "OOM", "x"]], align="lr")
    assert lines == ["| config | ms | note |", "|---|---:|---|", "| flash | 1.5 |  |", "| sdpa | OOM | x |"]


def test_a_row_of_another_width_is_refused():
    with pytest.raises(ValueError, match="3 cells in a table of 2 columns"):
        markdown.table(["a", "b"], [[1, 2, 3]])


def test_versions_line_labels_each_version():
    env = {"torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"}
    assert markdown.versions_line(env, ("torch", "triton", "cuda")) == "torch 2.11.0, triton 3.6.0, CUDA 13.0"
    assert markdown.versions_line(env) == "torch 2.11.0, transformers None, triton 3.6.0"


def test_kept_entries_carry_the_mark_of_their_run():
    runs = [{"date": f"day{i}", "command": f"run {i}", "torch": "2", "transformers": "5", "triton": "3"}
            for i in range(7)]
    results = {"env": {"date": "day0"}, "runs": runs}
    marks = markdown.run_marks(results)
    assert marks == {"day1": "†", "day2": "‡", "day3": "§", "day4": "¶", "day5": "[5]", "day6": "[6]"}
    assert markdown.mark({"ms": 1.0, "run": "day2"}, marks) == " ‡"
    assert markdown.mark({"ms": 1.0}, marks) == ""
    header = markdown.merged_runs(results, marks)
    assert header[0] == "Merged from this run (day0), † day1, ‡ day2, § day3, ¶ day4, [5] day5, [6] day6:"
    assert header[2] == "- † from the run of day1 (torch 2, transformers 5, triton 3): `run 1`"
    assert markdown.merged_runs({"env": {"date": "day0"}}, {}) == []  # a single run names none
