"""The Markdown of the reports: tables, the versions line, and the marks of merged runs.

Every table has a header row, a separator row (``---`` left, ``---:`` right-aligned) and a row per entry,
each line ``| cell | cell |``. In a table merged from several runs, an entry kept from an earlier run
carries that run's mark (†, ‡, §, ¶, then [5], [6]...), and the header names the run of each mark.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

RUN_MARKS = "†‡§¶"
LABELS = {"torch": "torch", "transformers": "transformers", "triton": "triton", "cuda": "CUDA",
          "cudnn": "cuDNN", "python": "Python"}


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a table; ``align`` has an ``l`` or ``r`` per column (missing ones: left)."""
    align = align.ljust(len(header), "l")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns: {row}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines


def versions_line(env: dict, names: Sequence[str] = ("torch", "transformers", "triton")) -> str:
    """``torch 2.11, transformers 5.17, triton 3.6``: the versions ``names`` recorded in ``env``."""
    return ", ".join(f"{LABELS.get(name, name)} {env.get(name)}" for name in names)


def run_marks(results: dict) -> dict[str, str]:
    """The mark of each earlier run merged into ``results``, by the run's date."""
    earlier = [run["date"] for run in results.get("runs", [])[1:]]
    return {date: RUN_MARKS[i] if i < len(RUN_MARKS) else f"[{i + 1}]" for i, date in enumerate(earlier)}


def mark(entry: dict, marks: dict[str, str]) -> str:
    """`` †`` (its run's mark) after an entry kept from an earlier run; nothing after one of this run."""
    return f" {marks[entry['run']]}" if "run" in entry else ""


def merged_runs(results: dict, marks: dict[str, str]) -> list[str]:
    """Header lines naming the runs merged and the mark of each earlier one; none for a single run."""
    if "runs" not in results:
        return []
    lines = ["Merged from " + ", ".join([f"this run ({results['env']['date']})"]
                                        + [f"{mark} {date}" for date, mark in marks.items()]) + ":", ""]
    for run in results["runs"][1:]:
        lines.append(f"- {marks[run['date']]} from the run of {run['date']} ({versions_line(run)}): "
                     f"`{run['command']}`")
    return lines + [""]
