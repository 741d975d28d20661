"""benchmarks/harness: what a run records of its environment, and its plots."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import environment, plots  # noqa: E402


def test_environment_names_the_cpu_and_the_versions_asked_for():
    assert environment.device_name(torch.device("cpu")).startswith("CPU (")
    found = environment.versions("torch", "python", "cuda")
    assert list(found) == ["torch", "python", "cuda"] and found["torch"] == torch.__version__
    assert environment.command_line("kernel_speed.py", ["--out", "x"]) == "python benchmarks/kernel_speed.py --out x"
    assert len(environment.timestamp()) == len("2026-01-01 00:00:00")


def test_curves_leave_out_points_without_a_positive_value(tmp_path):
    if plots.missing():
        pytest.skip(plots.missing())
    fig, axes = plots.figure(1, 2, size=(6, 3))
    plots.draw(axes[0][0], {"hf-sdpa": [(1, 2.0), (2, None), (4, 0.0)], "ours": [(1, None)]}, "tokens", "ms",
               style=lambda label: {"linestyle": "--"})
    plots.draw(axes[0][1], {}, "tokens", "GiB")
    [line] = axes[0][0].lines  # "ours" had no point to draw
    assert list(line.get_xdata()) == [1] and line.get_linestyle() == "--"
    assert axes[0][0].get_xscale() == "log" and axes[0][1].get_xscale() == "linear"
    path = plots.save(fig, tmp_path / "curves.png")
    assert Path(path).read_bytes().startswith(b"\x89PNG")
