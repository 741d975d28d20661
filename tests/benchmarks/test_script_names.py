"""The benchmark scripts run as ``python benchmarks/NAME.py``, which puts benchmarks/ first on the import
path: a script or a folder of modules (the harness) named like an installed package would stand in for it
wherever that package is imported (transformers 5.25 imports the `kernels` package of its dependencies; a
benchmarks/kernels.py broke every script there)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def installed_top_level_names() -> set[str]:
    """Top-level module names of every installed distribution (from its metadata and file list)."""
    names = set()
    for distribution in importlib.metadata.distributions():
        top_level = distribution.read_text("top_level.txt")
        if top_level:
            names.update(line.strip() for line in top_level.splitlines() if line.strip())
        for file in distribution.files or ():
            parts = Path(str(file)).parts
            if parts and not parts[0].endswith((".dist-info", ".data", "..")):
                names.add(Path(parts[0]).stem if parts[0].endswith(".py") else parts[0])
        names.add(distribution.metadata["Name"].replace("-", "_").lower())
    return names


def test_no_benchmark_script_or_package_shadows_an_installed_module():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")}
    packages = {path.parent.name for path in BENCHMARKS.glob("*/__init__.py")}
    assert "native" in scripts and "kernel_speed" in scripts  # the folder is the one meant
    assert {"harness", "whole_model"} <= packages
    assert not (scripts | packages) & installed_top_level_names()
