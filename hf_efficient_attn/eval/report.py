"""A comparison written out: ``comparison.json`` (everything), ``comparison.md`` (a table) and
``comparison.png`` (quality against evaluation time, one point per configuration). A streaming
comparison adds its perplexity per stretch of the stream to the table and ``perplexity-by-position.png``.

The plot uses matplotlib's object-oriented API with the Agg canvas, imported only when plotting, so
the rest of the package does not need matplotlib and the caller's pyplot backend is left alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from .compare import Comparison, ComparisonRow

NAMES = {"json": "comparison.json", "markdown": "comparison.md", "plot": "comparison.png"}
POSITIONS_PLOT = "perplexity-by-position.png"
DETAIL_COLUMNS = {"wer": ("raw_wer", "cer"), "raw_wer": ("wer", "raw_cer")}
"""Details shown in the table next to a metric: the WER of the other normalization, and the CER beside the WER."""
NOTED_DETAILS = ("normalizer",)
"""Details listed once above the table, from the baseline's row (what the normalized WER was computed with)."""


def _direction(comparison: Comparison) -> str:
    return "higher is better" if comparison.higher_is_better else "lower is better"


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown section: what was compared, then one table row per configuration."""
    metric = comparison.metric
    details = DETAIL_COLUMNS.get(metric, ())
    lines = [f"## {metric} ({_direction(comparison)})", ""]
    lines += [f"- {key}: {value}" for key, value in comparison.context.items()]
    lines += [f"- {key}: {comparison.baseline.details[key]}" for key in NOTED_DETAILS if key in comparison.baseline.details]
    header = ["configuration", metric, "delta vs baseline", *details]
    header += ["time (s)", "speed vs baseline", "peak memory (MiB)"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    baseline_seconds = comparison.baseline.seconds
    for row in comparison.rows:
        if row.error is not None:
            error = " ".join(row.error.split()).replace("|", "\\|")
            lines.append(f"| {row.label} | failed: {error} |" + " |" * (len(header) - 2))
            continue
        cells = [row.label, f"{row.value:.4f}", "-" if row.variant is None else f"{row.delta:+.4f}"]
        cells += [f"{row.details.get(detail, float('nan')):.4f}" for detail in details]
        speed = baseline_seconds / row.seconds if row.seconds else float("nan")
        cells += [f"{row.seconds:.2f}", f"{speed:.2f}x", f"{row.peak_bytes / 2**20:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _stretch_lines(comparison)) + "\n"


def _streamed(comparison: Comparison) -> list[ComparisonRow]:
    return [row for row in comparison.rows if row.error is None and "stretch_perplexities" in row.details]


def _tokens(count: int) -> str:
    return f"{count // 1024}k" if count and count % 1024 == 0 else str(count)


def _stretch_lines(comparison: Comparison) -> list[str]:
    """A streaming comparison's perplexity per stretch of the stream, the positions used, the cache held."""
    rows = _streamed(comparison)
    if not rows:
        return []
    stretch = rows[0].details["stretch"]
    count = max(len(row.details["stretch_perplexities"]) for row in rows)
    header = ["configuration", "positions", "cache held (tokens)", "tokens/s"]
    header += [f"{_tokens(k * stretch)}-{_tokens((k + 1) * stretch)}" for k in range(count)]
    lines = ["", f"Perplexity per stretch of {stretch} scored tokens:", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        details = row.details
        cells = [row.label, details["positions"], str(details["held_tokens_max"]), f"{details['tokens_per_second']:.0f}"]
        cells += [f"{value:.2f}" for value in details["stretch_perplexities"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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


def plot_positions(comparison: Comparison, path: Path) -> None:
    """Save a streaming comparison's perplexity per stretch against position in the stream to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in _streamed(comparison):
        stretch, values = row.details["stretch"], row.details["stretch_perplexities"]
        ends = [min((k + 1) * stretch, row.details["tokens"]) for k in range(len(values))]
        style = {"color": "black", "linewidth": 2} if row.variant is None else {}
        axes.plot(ends, values, marker="o", markersize=3, label=f"{row.label} ({row.details['positions']})", **style)
    axes.set_xlabel("position in the stream (tokens)")
    axes.set_ylabel(f"perplexity per {comparison.rows[0].details.get('stretch', '')} tokens (lower is better)")
    axes.set_yscale("log")
    axes.set_title(f"streaming perplexity: {comparison.context.get('model', '')}", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def write_report(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write the JSON, Markdown and PNG files into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in NAMES.items()}
    paths["json"].write_text(json.dumps(comparison.to_dict(), indent=2, default=str) + "\n")
    paths["markdown"].write_text(comparison_markdown(comparison))
    plot_comparison(comparison, paths["plot"])
    if _streamed(comparison):
        paths["positions"] = out / POSITIONS_PLOT
        plot_positions(comparison, paths["positions"])
    return paths
