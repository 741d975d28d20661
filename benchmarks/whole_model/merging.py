"""Partial whole-model runs merged into one table (`harness.store`): which entries are the same measurement,
what an earlier run must share with this one, and which of two entries tells more."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness.store import load_comparable, merge_runs

ENTRY_KEYS = {"checks": ("family", "config", "reference", "mode", "tokens"),
              "rows": ("family", "config", "mode", "tokens"),
              "generation": ("config", "prompt")}
"""Per list of results, the fields that say which measurement an entry is: the same in two runs, the same cell."""
MUST_MATCH = {"env": ("device_name", "dtype"),
              "args": ("tiny", "checkpointing", "window", "encoder_window", "llama_path")}
"""What an earlier run must share with this one for --merge: anything that changes what a cell measures."""


def load_previous(path: Path, results: dict) -> dict:
    """The earlier results to merge; refused when its cells would not compare with this run's (MUST_MATCH)."""
    return load_comparable(path, results, MUST_MATCH)


def rank(section: str, entry: dict) -> int:
    """How much an entry tells: 2 measured, 1 failed (OOM, an error, its check failed), 0 skipped. Checks all
    rank alike: a check this run redid always replaces the earlier one."""
    if section == "checks":
        return 0
    status = entry.get("status", "")
    return 2 if status == "ok" else 0 if status.startswith("skipped") else 1


def with_missing(current: dict, earlier: dict) -> dict:
    """``current``, followed by the keys of ``earlier`` it lacks."""
    return {**current, **{key: value for key, value in earlier.items() if key not in current}}


def merge_previous(results: dict, previous: dict) -> dict:
    """This run's results with the earlier run's entries it did not replace (`store.merge_runs`), and the
    union of both runs' descriptions of families, rows and fallbacks. Neither argument is changed."""
    merged = merge_runs(results, previous, ENTRY_KEYS, rank)
    merged["families"] = with_missing(results["families"], previous.get("families", {}))
    configs = previous.get("configs", {})
    merged["configs"] = {family: with_missing(results["configs"].get(family, {}), configs.get(family, {}))
                         for family in with_missing(results["configs"], configs)}
    fallbacks = previous.get("fallbacks", {})
    merged["fallbacks"] = {name: sorted({*results["fallbacks"].get(name, []), *fallbacks.get(name, [])})
                           for name in with_missing(results["fallbacks"], fallbacks)}
    return merged
