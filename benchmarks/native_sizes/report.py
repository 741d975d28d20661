"""The report: the environment a run is compared by, the targets, the Markdown table, and the merge of
several runs into one table (each row whole from one run)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
import transformers

from benchmarks.harness.store import save_report

from .measuring import fastest
from .rows import COLUMNS, OURS, cpu_rows, gpu_rows


def earlier_cells(path: Path, env: dict) -> dict[tuple[str, str], dict]:
    """Cells measured by an earlier run (its native.json) on the same device and versions, to keep."""
    earlier = json.loads(path.read_text())
    if earlier["env"] != env:
        raise SystemExit(f"--keep {path}: measured on {earlier['env']}, not {env}; measure again instead")
    return {(entry["row"], column): {**cell, "run": "earlier"} for entry in earlier["rows"]
            for column, cell in entry["cells"].items() if value(cell) is not None}


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "-"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "triton": triton_version, "dtype": str(dtype).replace("torch.", "")}


def value(cell: dict) -> float | None:
    return cell.get("ms", cell.get("tokens_per_s"))


def targets(results: dict, cpu: bool) -> list[str]:
    """The issue's targets, each line PASS or MISS with its figures."""
    limit = 1.10 if cpu else 1.05
    lines = []
    for entry in results["rows"]:
        cells = entry["cells"]
        base = cells.get("sdpa", {})
        for column in OURS:
            cell = cells.get(column, {})
            if value(cell) is None or value(base) is None:
                continue
            ratio = value(cell) / value(base) if "ms" in cell else value(base) / value(cell)
            if entry["kind"] != "memory":
                lines.append(f"{'PASS' if ratio <= limit else 'MISS'} {entry['row']}: {column} {ratio:.2f}x sdpa's time")
            if cell.get("peak_gib") is not None and base.get("peak_gib") is not None:
                ok = cell["peak_gib"] <= base["peak_gib"] * 1.01
                lines.append(f"{'PASS' if ok else 'MISS'} {entry['row']}: {column} peak {cell['peak_gib']:.2f} GiB "
                             f"vs sdpa {base['peak_gib']:.2f}")
        if entry["kind"] == "decode" and "32k" in entry["row"] and value(cells.get("sliding", {})):
            speedup = value(cells["sliding"]) / value(base) if value(base) else float("nan")
            lines.append(f"{'PASS' if speedup >= 1.3 else 'MISS'} {entry['row']}: sliding {speedup:.2f}x sdpa's tokens/s")
            own = value(cells.get("hf-sliding", {}))
            if own:
                ok = value(cells["sliding"]) >= own
                lines.append(f"{'PASS' if ok else 'MISS'} {entry['row']}: sliding {value(cells['sliding']):.1f} vs "
                             f"transformers' own sliding window {own:.1f} tokens/s")
    return lines


def markdown(results: dict) -> str:
    env = results["env"]
    columns = [c for c in COLUMNS if any(c in e["cells"] for e in results["rows"])]
    lines = [f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
             f"{env['dtype']}; `{results['command']}`", ""]
    if results.get("runs"):
        lines += ["Merged from the runs: " + "; ".join(f"{n}: `{c}`" for n, c in enumerate(results["runs"], 1))
                  + ". Each row comes whole from one run, named by the superscripts.", ""]
    lines += [
             "Forward and prefill rows: ms (lower is better); decoding rows: tokens/s per sequence (higher is "
             "better); peak memory in GiB below each figure. † measured by the earlier run the table was merged "
             "with (same device and versions).", "",
             "| row | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for entry in results["rows"]:
        cells = []
        for column in columns:
            cell = entry["cells"].get(column)
            if cell is None:
                cells.append("")
            elif value(cell) is None:
                cells.append(cell.get("status", "")[:40])
            else:
                unit = "" if "ms" in cell else " tok/s"
                peak = f"<br>{cell['peak_gib']:.2f} GiB" if cell.get("peak_gib") is not None else ""
                flag = " ⚠" if "LARGE" in cell.get("check", "") else ""
                flag += " †" if cell.get("run") == "earlier" else ""
                flag += f" <sup>{cell['run']}</sup>" if isinstance(cell.get("run"), int) else ""
                cells.append(f"{value(cell):.3g}{unit}{peak}{flag}")
        lines.append(f"| {entry['row']} | " + " | ".join(cells) + " |")
    if results.get("targets"):
        lines += ["", "Targets:", ""] + [f"- {line}" for line in results["targets"]]
    return "\n".join(lines) + "\n"


def merge(paths: list[Path], command: str) -> dict:
    """One table from several runs on the same device and versions: each row whole from the latest run
    that measured it, so that every comparison in a row is within one run; each cell names its run."""
    runs = [json.loads(path.read_text()) for path in paths]
    if any(run["env"] != runs[0]["env"] for run in runs):
        raise SystemExit("--merge: the runs were made on different devices or versions")
    order = [row.name for row in gpu_rows() + cpu_rows()]
    rows: dict[str, dict] = {}
    for number, run_ in enumerate(runs, start=1):
        for entry in run_["rows"]:
            if not any(value(cell) is not None and cell.get("run") != "earlier" for cell in entry["cells"].values()):
                continue  # measured nothing here (skipped, or cells kept from an earlier run)
            cells = {column: {**cell, "run": number} for column, cell in entry["cells"].items()
                     if cell.get("run") != "earlier"}  # kept cells are not this run's
            for cell in cells.values():
                fastest(cell)  # runs saved before cells were their fastest round took the median
            rows[entry["row"]] = {"row": entry["row"], "kind": entry["kind"], "cells": cells}
    results = {"env": runs[0]["env"], "command": command, "runs": [run_["command"] for run_ in runs],
               "rows": sorted(rows.values(), key=lambda entry: order.index(entry["row"]))}
    results["targets"] = targets(results, "CPU" in results["env"]["device"])
    return results


def save(results: dict, out: Path) -> None:
    save_report(out, "native", results, markdown(results))
