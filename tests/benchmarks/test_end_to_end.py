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


def test_lsh_and_axial_rows_run_only_when_named(end_to_end, tmp_path):
    end_to_end.main(["--out", str(tmp_path / "named"), "--device", "cpu", "--tiny", "--models", "llama,vit",
                     "--variants", "hf-sdpa,lsh,axial", "--lengths", "64", "--vit-sizes", "64", "--skip-train",
                     "--skip-generation"])
    results = json.loads((tmp_path / "named" / "end_to_end.json").read_text())
    checked = {(c["family"], c["config"]): c["status"] for c in results["checks"]}
    assert checked[("llama", "lsh")] == checked[("vit", "lsh")] == checked[("vit", "axial")] == "approximate"
    assert ("llama", "axial") not in checked  # axial needs a patch grid
    timed = {(r["family"], r["config"]) for r in results["rows"] if r["status"] == "ok"}
    assert {("llama", "lsh"), ("vit", "lsh"), ("vit", "axial")} <= timed

    end_to_end.main(["--out", str(tmp_path / "default"), "--device", "cpu", "--tiny", "--models", "vit",
                     "--vit-sizes", "64", "--skip-train", "--time-budget", "0"])
    rows = json.loads((tmp_path / "default" / "end_to_end.json").read_text())["checks"]
    assert not {"lsh", "axial"} & {c["config"] for c in rows}


def test_unknown_names_are_refused(end_to_end, tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        end_to_end.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--variants", "sdpa"])
    with pytest.raises(SystemExit, match="--modes: unknown"):
        end_to_end.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--modes", "prefill,decode"])


PARTIAL = ["--device", "cpu", "--tiny", "--models", "llama,vit", "--variants", "hf-sdpa,sliding", "--lengths", "32,64",
           "--vit-sizes", "8", "--gen-new", "2", "--gen-variants", "hf-sdpa,sliding", "--time-budget", "300"]


def backdate(out: Path, date: str) -> Path:
    """Date a run's end_to_end.json ``date``, as if it had run then: the runs of a test share one clock second."""
    path = out / "end_to_end.json"
    results = json.loads(path.read_text())
    results["env"]["date"] = date
    if "runs" in results:
        results["runs"][0]["date"] = date
    path.write_text(json.dumps(results))
    return path


def entries(results: dict) -> dict[tuple, dict]:
    """Rows by (model, config, mode, tokens)."""
    return {(r["family"], r["config"], r["mode"], r["tokens"]): r for r in results["rows"]}


def test_partial_runs_merge_into_one_table(end_to_end, tmp_path, monkeypatch):
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    with monkeypatch.context() as patch:
        patch.setattr(end_to_end, "write_plots", lambda results, out_dir: [])  # plots take most of a tiny run
        end_to_end.main(["--out", str(first), *PARTIAL, "--modes", "prefill,generate"])
    day1 = "2000-01-01 00:00:00"
    # train only, on top of the first run's prefill and generation
    end_to_end.main(["--out", str(second), *PARTIAL, "--modes", "train", "--merge", str(backdate(first, day1))])
    results = json.loads((second / "end_to_end.json").read_text())
    markdown = (second / "end_to_end.md").read_text()
    rows = entries(results)
    prefill = [r for r in rows.values() if r["mode"] == "prefill"]
    train = [r for r in rows.values() if r["mode"] == "train"]
    assert len(prefill) == len(train) == 6  # (llama at 32 and 64, vit at 8) x (hf-sdpa, sliding)
    assert all(r["status"] == "ok" and r["run"] == day1 for r in prefill)
    assert all(r["status"] == "ok" and "run" not in r for r in train)
    assert [(g["config"], g["run"]) for g in results["generation"]] == [("hf-sdpa", day1), ("sliding", day1)]
    decode = [c for c in results["checks"] if c["mode"] == "decode"]  # not redone by a train-only run
    assert decode and all(c["run"] == day1 for c in decode)
    assert all("run" not in c for c in results["checks"] if c["mode"] == "prefill")  # redone
    assert [run["date"] for run in results["runs"]] == [results["env"]["date"], day1]
    assert f"† from the run of {day1}" in markdown and f"† {day1}" in markdown.split("## Rows")[0]
    assert "| hf-sdpa | " + end_to_end.cell(rows[("llama", "hf-sdpa", "prefill", 32)]) + " † |" in markdown
    assert "| hf-sdpa † |" in markdown  # the generation row
    if results.get("plots"):  # drawn from the merged results: prefill and train of both models, generation
        assert sorted(Path(p).name for p in results["plots"]) == [
            "end_to_end_generation.png", "end_to_end_llama.png", "end_to_end_vit.png"]

    # prefill again with every run's time capped at 0 s: the first length is measured (and replaces the earlier
    # entry), the longer one is skipped (and does not replace the one measured before)
    day2 = "2000-01-02 00:00:00"
    monkeypatch.setattr(end_to_end, "write_plots", lambda results, out_dir: [])
    end_to_end.main(["--out", str(third), *PARTIAL, "--modes", "prefill", "--max-run-s", "0",
                     "--merge", str(backdate(second, day2))])
    results = json.loads((third / "end_to_end.json").read_text())
    markdown = (third / "end_to_end.md").read_text()
    rows = entries(results)
    for config in ("hf-sdpa", "sliding"):
        assert "run" not in rows[("llama", config, "prefill", 32)]
        assert rows[("llama", config, "prefill", 64)]["run"] == day1
        assert rows[("llama", config, "prefill", 64)]["status"] == "ok"
        assert rows[("llama", config, "train", 64)]["run"] == day2
    assert len(rows) == 12
    assert [run["date"] for run in results["runs"]] == [results["env"]["date"], day2, day1]
    assert f"† from the run of {day2}" in markdown and f"‡ from the run of {day1}" in markdown
    cells = [end_to_end.cell(rows[("llama", "hf-sdpa", "prefill", n)]) for n in (32, 64)]
    assert f"| hf-sdpa | {cells[0]} | {cells[1]} ‡ |" in markdown  # this run's cell unmarked, the kept one marked


def test_two_runs_merged_on_one_base_list_that_base_once(end_to_end):
    def run(date: str, family: str, runs: list[dict]) -> dict:
        row = {"family": family, "config": "hf-sdpa", "mode": "prefill", "tokens": 8, "status": "ok"}
        base_row = {**row, "family": "llama", "run": "base"}
        return {"env": {"date": date, "command": date}, "rows": [row, base_row], "checks": [], "generation": [],
                "families": {}, "configs": {}, "fallbacks": {}, "runs": [{"date": date, "command": date}, *runs]}

    base = [{"date": "base", "command": "base"}]
    merged = end_to_end.merge_previous(run("vit-day", "vit", base), run("whisper-day", "whisper", base))
    assert [r["date"] for r in merged["runs"]] == ["vit-day", "base", "whisper-day"]
    assert {(r["family"], r.get("run")) for r in merged["rows"]} == {
        ("vit", None), ("llama", "base"), ("whisper", "whisper-day")}


def test_two_runs_merged_on_one_base_keep_the_newest_measurement_of_each_cell(end_to_end):
    BASE = "2000-01-01 00:00:00"

    def run(date: str, remeasured: str) -> dict:
        rows = [{"family": family, "config": "hf-sdpa", "mode": "prefill", "tokens": 8, "status": "ok",
                 "ms": 1.0 if family == remeasured else 9.0, **({} if family == remeasured else {"run": BASE})}
                for family in ("llama", "vit")]
        return {"env": {"date": date, "command": date}, "rows": rows, "checks": [], "generation": [],
                "families": {}, "configs": {}, "fallbacks": {}, "runs": [{"date": date, "command": date},
                                                                        {"date": BASE, "command": "base"}]}

    for newer, older in ((run("2000-01-03 00:00:00", "vit"), run("2000-01-02 00:00:00", "llama")),
                         (run("2000-01-02 00:00:00", "llama"), run("2000-01-03 00:00:00", "vit"))):
        merged = end_to_end.merge_previous(newer, older)
        assert {r["family"]: r["ms"] for r in merged["rows"]} == {"llama": 1.0, "vit": 1.0}
        assert BASE not in [r["date"] for r in merged["runs"]]


def test_merging_a_run_of_other_settings_is_refused(end_to_end, tmp_path):
    end_to_end.main(["--out", str(tmp_path), *PARTIAL, "--models", "vit", "--modes", "prefill"])
    with pytest.raises(SystemExit, match="window"):
        end_to_end.main(["--out", str(tmp_path / "again"), *PARTIAL, "--models", "vit", "--encoder-window", "8",
                         "--merge", str(tmp_path / "end_to_end.json")])
