"""Results on disk, and merging an earlier run's results into this run's, entry by entry.

One GPU call is limited to minutes, so a full table is measured in parts, each run merged with the
results of the ones before (``--merge``). An entry is one measurement, named by a few fields (pattern,
length, config...): the merge keeps this run's entries, except where the earlier run's entry for the same
measurement tells more (it measured what this run skipped), and adds the earlier entries this run did not
have. An entry is never put together from two runs: it is kept or replaced whole, so that the figures of
one row always compare within one run. Entries kept from an earlier run carry ``run``, the date of the run
that measured them, and ``runs`` lists the runs whose entries the results still hold, this run first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

RUN_FIELDS = ("date", "command", "torch", "transformers", "triton")
"""What ``runs`` records of each run (from its ``env``)."""


def write_json(path: Path, results: dict) -> None:
    """Write ``results`` (anything not JSON as its ``str``)."""
    path.write_text(json.dumps(results, indent=1, default=str))


def save_report(out_dir: Path, name: str, results: dict, text: str) -> None:
    """Write ``results`` to ``<name>.json`` and the table ``text`` to ``<name>.md`` in ``out_dir``, made if
    missing: the two files every benchmark leaves."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{name}.json", results)
    (out_dir / f"{name}.md").write_text(text)


def load_comparable(path: Path, results: dict, must_match: Mapping[str, tuple[str, ...]]) -> dict:
    """The earlier results at ``path``, refused (SystemExit) where a field of ``must_match`` (section ->
    fields) differs from this run's: its entries would not measure the same thing."""
    previous = json.loads(path.read_text())
    for section, fields in must_match.items():
        for field in fields:
            theirs, ours = previous[section].get(field), results[section].get(field)
            if theirs != ours:
                raise SystemExit(f"--merge: {path} was run with {field} = {theirs!r}, this run has {ours!r}")
    return previous


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


def runs_of(results: dict) -> list[dict[str, Any]]:
    """The runs whose entries ``results`` holds, its own first."""
    env = results["env"]
    return results.get("runs") or [{field: env.get(field) for field in RUN_FIELDS}]


def merge_runs(results: dict, previous: dict, sections: Mapping[str, tuple[str, ...]],
               rank: Callable[[str, dict], int]) -> dict:
    """``results`` with each list of entries in ``sections`` (name -> the fields naming an entry) merged
    with ``previous``'s (`merge_entries`, ``rank(section, entry)``), and ``runs``: this run, then the earlier
    runs that still measured an entry. Neither argument is changed."""
    date = previous["env"]["date"]
    merged = {**results, **{section: merge_entries(results[section], previous.get(section, []), fields, date,
                                                   rank=lambda entry, section=section: rank(section, entry))
                            for section, fields in sections.items()}}
    kept = {entry["run"] for section in sections for entry in merged[section] if "run" in entry}
    own, *carried = runs_of(results)
    carried = [run for run in carried if run["date"] in kept]  # what the earlier run re-measured is gone
    listed = {run["date"] for run in [own, *carried]}  # two merged runs may share an earlier one
    merged["runs"] = [own, *carried] + [run for run in runs_of(previous) if run["date"] in kept - listed]
    return merged
