"""A comparison written out: ``comparison.json`` (everything), ``comparison.md`` (a table) and
``comparison.png`` (quality against evaluation time, one point per configuration).

The plot uses matplotlib's object-oriented API with the Agg canvas, imported only when plotting, so
the rest of the package does not need matplotlib and the caller's pyplot backend is left alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from .compare import Comparison, ComparisonRow

NAMES = {"json": "comparison.json", "markdown": "comparison.md", "plot": "comparison.png"}
DETAIL_COLUMNS = {"wer": "cer"}
"""A detail shown in the table next to a metric (CER beside WER)."""


def _direction(comparison: Comparison) -> str:
    return "higher is better" if comparison.higher_is_better else "lower is better"


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown section: what was compared, then one table row per configuration."""
    metric = comparison.metric
    detail = DETAIL_COLUMNS.get(metric)
    lines = [f"## {metric} ({_direction(comparison)})", ""]
    lines += [f"- {key}: {value}" for key, value in comparison.context.items()]
    header = ["configuration", metric, "delta vs baseline"] + ([detail] if detail else [])
    header += ["time (s)", "speed vs baseline", "peak memory (MiB)"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline_seconds = comparison.baseline.seconds
    for row in comparison.rows:
        if row.error is not None:
            error = " ".join(row.error.split()).replace("|", "\\|")
            lines.append(f"| {row.label} | failed: {error} |" + " |" * (len(header) - 2))
            continue
        cells = [row.label, f"{row.value:.4f}", "-" if row.variant is None else f"{row.delta:+.4f}"]
        if detail:
            cells.append(f"{row.details.get(detail, float('nan')):.4f}")
        speed = baseline_seconds / row.seconds if row.seconds else float("nan")
        cells += [f"{row.seconds:.2f}", f"{speed:.2f}x", f"{row.peak_bytes / 2**20:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: Comparison, path: Path) -> None:
    """Save a scatter of metric against evaluation time, labelled per configuration, to ``path`` (PNG)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as missing:
        raise ImportError(
            "Plotting the comparison needs matplotlib: pip install matplotlib (or the package's 'train' extra)."
        ) from missing
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    measured: list[ComparisonRow] = [row for row in comparison.rows if row.error is None]
    for row in measured:
        is_baseline = row.variant is None
        axes.scatter(row.seconds, row.value, marker="*" if is_baseline else "o", s=160 if is_baseline else 50,
                     color="black" if is_baseline else None, zorder=3)
        axes.annotate(row.label, (row.seconds, row.value), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel("evaluation time (s)")
    axes.set_ylabel(f"{comparison.metric} ({_direction(comparison)})")
    axes.set_title(f"{comparison.metric} against time: {comparison.context.get('model', '')}", fontsize=10)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


def write_report(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, Markdown and PNG files into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in NAMES.items()}
    paths["json"].write_text(json.dumps(comparison.to_dict(), indent=2, default=str) + "\n")
    paths["markdown"].write_text(comparison_markdown(comparison))
    plot_comparison(comparison, paths["plot"])
    return paths
