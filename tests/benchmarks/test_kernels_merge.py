"""benchmarks/kernel_speed.py --merge: earlier measurements fill what this run did not measure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_kernels_module():
    spec = importlib.util.spec_from_file_location("kernels_benchmark", ROOT / "benchmarks" / "kernel_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(impl, n, fwd):
    return {"pattern": "causal", "n": n, "batch": max(1, 16384 // n), "d": 64, "impl": impl, "fwd": fwd, "fwd+bwd": fwd}


def test_skipped_and_absent_entries_come_from_the_earlier_run(tmp_path):
    kernels = load_kernels_module()
    measured_then = {"ms": 1.0, "tflops": 10.0}
    measured_now = {"ms": 0.5, "tflops": 20.0}
    earlier = {"env": {"date": "2026-01-01"}, "checks": {"causal/d64": 1e-3},
               "rows": [row("ours", 1024, measured_then), row("flex", 1024, measured_then),
                        row("ours", 4096, measured_then), row("ours", 8192, "skipped (time budget)")],
               "sparse": []}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    results = {"env": {"date": "2026-02-01"}, "checks": {},
               "rows": [row("ours", 1024, measured_now), row("flex", 1024, "skipped (time budget)"),
                        row("ours", 8192, "skipped (time budget)")],
               "sparse": [{"n": 16384, "d": 64, "impl": "ours", "fwd": measured_now}]}
    kernels.merge_previous(results, path)
    by_key = {(r["impl"], r["n"]): r for r in results["rows"]}
    assert by_key[("ours", 1024)]["fwd"] == measured_now and "run" not in by_key[("ours", 1024)]
    assert by_key[("flex", 1024)]["fwd"] == measured_then and by_key[("flex", 1024)]["run"] == "2026-01-01"
    assert by_key[("ours", 4096)]["run"] == "2026-01-01"
    assert by_key[("ours", 8192)]["fwd"] == "skipped (time budget)" and "run" not in by_key[("ours", 8192)]
    assert len(results["rows"]) == 4
    assert results["checks"] == {"causal/d64": 1e-3}
    assert results["sparse"] == [{"n": 16384, "d": 64, "impl": "ours", "fwd": measured_now}]


def test_an_earlier_complete_entry_replaces_one_whose_backward_was_skipped(tmp_path):
    kernels = load_kernels_module()
    then = {"ms": 1.0, "tflops": 10.0}
    partial = {**row("ours", 16384, {"ms": 0.9, "tflops": 11.0}), "fwd+bwd": "skipped (time budget)"}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"env": {"date": "2026-01-01"}, "checks": {}, "rows": [row("ours", 16384, then)],
                                "sparse": []}))
    results = {"env": {"date": "2026-02-01"}, "checks": {}, "rows": [partial], "sparse": []}
    kernels.merge_previous(results, path)
    [merged] = results["rows"]
    assert merged["fwd"] == then and merged["fwd+bwd"] == then and merged["run"] == "2026-01-01"


def test_a_run_cut_short_is_completed_from_an_earlier_one_without_measuring(tmp_path):
    kernels = load_kernels_module()
    env = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0"}
    now = {"ms": 0.5, "tflops": 20.0}
    then = {"ms": 1.0, "tflops": 10.0}
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"env": {**env, "date": "2026-02-01"}, "checks": {},
                               "rows": [row("ours", 16384, now), row("ours", 65536, "skipped (time budget)"),
                                        row("fa4", 65536, "skipped (time budget)")],
                               "sparse": []}))
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"env": {**env, "date": "2026-01-01"}, "checks": {},
                                   "rows": [row("ours", 16384, then), row("ours", 65536, then), row("fa4", 65536, "n/a")],
                                   "sparse": []}))
    out = tmp_path / "merged"
    results = kernels.main(["--out", str(out), "--from-run", str(run), "--merge", str(earlier)])
    by_n = {r["n"]: r for r in results["rows"] if r["impl"] == "ours"}
    assert by_n[16384]["fwd"] == now and "run" not in by_n[16384]
    assert by_n[65536]["fwd"] == then and by_n[65536]["run"] == "2026-01-01"
    [fa4] = [r for r in results["rows"] if r["impl"] == "fa4"]
    assert fa4["fwd"] == "skipped (time budget)", "an earlier run without the implementation says nothing of it"
    table = (out / "kernels.md").read_text()
    assert "| causal | 16384 |" in table and "ours (run of 2026-01-01)" in table


def test_the_table_says_which_optional_backends_could_not_run_and_why(tmp_path):
    """An n/a that means "not installed here" is told apart from one that means "cannot express the pattern"."""
    kernels = load_kernels_module()
    missing = kernels.optional_backends_missing()
    assert set(missing) == {"ours-cudnn", "fa4"}  # this machine has neither the extras nor CUDA
    env = {"gpu": "test GPU", "torch": "2", "triton": "3", "cuda": "13", "date": "2026-02-01", "cannot_run": missing}
    results = {"env": env, "checks": {}, "rows": [row("ours", 1024, {"ms": 1.0, "tflops": 10.0}), row("fa4", 1024, "n/a")],
               "sparse": []}
    kernels.write(results, tmp_path)
    text = (tmp_path / "kernels.md").read_text()
    for name, why in missing.items():
        assert f"- Not measured here (its cells read n/a): {name}: {why}." in text
    assert json.loads((tmp_path / "kernels.json").read_text())["env"]["cannot_run"] == missing
