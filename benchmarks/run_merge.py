"""Merging a benchmark run's entries with an earlier run's, so that several partial runs build one table.

One GPU call is limited to minutes, so a full table (`kernel_speed.py`, `end_to_end.py`, each with `--merge`)
is measured in parts. An entry is one measurement, named by a few fields (pattern, length, config...);
the merge keeps this run's entries, except where the earlier run's entry for the same measurement tells
more (it measured what this run skipped), and adds the earlier entries this run did not have. Entries
kept from an earlier run carry ``run``: the date of the run that measured them.
"""

from __future__ import annotations

from collections.abc import Callable


def merge_entries(current: list[dict], earlier: list[dict], fields: tuple[str, ...], date: str,
                  rank: Callable[[dict], int]) -> list[dict]:
    """This run's entries, each replaced by the earlier run's (run ``date``) where that one has a higher
    ``rank``, or the same rank and a later measurement (this run's entry was itself kept from a run before
    that: two partial runs merged onto one base), then the earlier run's entries this run did not have."""
    def key(entry: dict) -> tuple:
        return tuple(entry.get(field) for field in fields)

    def replaced(entry: dict, other: dict) -> bool:
        if rank(other) != rank(entry):
            return rank(other) > rank(entry)
        return "run" in entry and other["run"] > entry["run"]

    older = {key(entry): {**entry, "run": entry.get("run", date)} for entry in earlier}
    merged = [older[key(e)] if key(e) in older and replaced(e, older[key(e)]) else e for e in current]
    done = {key(entry) for entry in current}
    return merged + [entry for k, entry in older.items() if k not in done]
