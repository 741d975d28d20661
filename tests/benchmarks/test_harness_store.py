"""benchmarks/harness/store.py: an earlier run's entries merged into this run's, each entry whole from one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import store  # noqa: E402


def rank(entry: dict) -> int:
    """2 measured, 1 half measured (the backward skipped), 0 skipped."""
    if entry["fwd"] == "skipped":
        return 0
    return 1 if entry["bwd"] == "skipped" else 2


def entry(name: str, fwd: object, bwd: object) -> dict:
    return {"name": name, "fwd": fwd, "bwd": bwd}


def test_each_entry_comes_whole_from_one_run():
    current = [entry("a", 1.0, 2.0), entry("b", 1.5, "skipped"), entry("c", "skipped", "skipped")]
    earlier = [entry("a", 9.0, 9.0), entry("b", 8.0, 8.5), entry("c", 7.0, "skipped"), entry("d", 6.0, 6.5)]
    merged = {e["name"]: e for e in store.merge_entries(current, earlier, ("name",), "day1", rank)}

    assert merged["a"] == entry("a", 1.0, 2.0)  # measured now: this run's, unmarked
    assert merged["b"] == {**entry("b", 8.0, 8.5), "run": "day1"}  # not this run's forward with day1's backward
    assert merged["c"] == {**entry("c", 7.0, "skipped"), "run": "day1"}  # half measured tells more than skipped
    assert merged["d"] == {**entry("d", 6.0, 6.5), "run": "day1"}  # only the earlier run had it
    assert list(merged) == ["a", "b", "c", "d"]


def test_of_two_kept_entries_the_later_measurement_wins():
    kept_from_base = {**entry("a", 1.0, 1.0), "run": "day1"}
    remeasured_on_day2 = entry("a", 2.0, 2.0)
    [merged] = store.merge_entries([kept_from_base], [remeasured_on_day2], ("name",), "day2", rank)
    assert merged == {**remeasured_on_day2, "run": "day2"}
    [merged] = store.merge_entries([entry("a", 3.0, 3.0)], [remeasured_on_day2], ("name",), "day2", rank)
    assert "run" not in merged  # this run's own measurement is the latest


def results(date: str, rows: list[dict], runs: list[dict] | None = None) -> dict:
    own = {"env": {"date": date, "command": f"run {date}", "torch": "2", "transformers": "5", "triton": "3"},
           "rows": rows}
    return {**own, "runs": runs} if runs else own


def test_runs_list_this_run_and_the_earlier_ones_still_measuring_an_entry():
    day1 = results("day1", [entry("a", 1.0, 1.0), entry("b", 1.0, 1.0)])
    day2 = store.merge_runs(results("day2", [entry("a", 2.0, 2.0)]), day1, {"rows": ("name",)},
                            lambda section, e: rank(e))
    assert [run["date"] for run in day2["runs"]] == ["day2", "day1"]
    assert day2["runs"][1] == {"date": "day1", "command": "run day1", "torch": "2", "transformers": "5",
                               "triton": "3"}
    day3 = store.merge_runs(results("day3", [entry("b", 3.0, 3.0)]), day2, {"rows": ("name",)},
                            lambda section, e: rank(e))
    assert {e["name"]: e.get("run") for e in day3["rows"]} == {"b": None, "a": "day2"}
    assert [run["date"] for run in day3["runs"]] == ["day3", "day2"]  # day1's only entry was measured again
    assert "runs" not in day1 and len(day2["rows"]) == 2  # the arguments are left as they were


def test_a_run_of_other_settings_is_refused(tmp_path):
    path = tmp_path / "earlier.json"
    store.write_json(path, {"env": {"dtype": "bfloat16"}, "args": {"window": 8, "when": Path("/x")}})
    assert json.loads(path.read_text())["args"]["when"] == "/x"  # not JSON: written as its str
    this = {"env": {"dtype": "bfloat16"}, "args": {"window": 8}}
    assert store.load_comparable(path, this, {"env": ("dtype",), "args": ("window",)})["args"]["window"] == 8
    with pytest.raises(SystemExit, match="window = 8, this run has 16"):
        store.load_comparable(path, {**this, "args": {"window": 16}}, {"env": ("dtype",), "args": ("window",)})
