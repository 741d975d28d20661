"""Curves into PNG files, drawn with matplotlib's object API (no pyplot: no global figure state, no display).

matplotlib is optional: `missing` says so in a report's words where it is not installed, and the scripts
then leave their plots out rather than fail after the measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Points = Sequence[tuple[float, float | None]]


def missing() -> str | None:
    """Why there can be no plots here, or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed: no plots (pip install matplotlib)."
    return None


def figure(rows: int = 1, columns: int = 1, size: tuple[float, float] = (8, 5)) -> tuple[Any, list[list[Any]]]:
    """A figure with a ``rows`` x ``columns`` grid of axes (``axes[row][column]``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    return fig, [list(row) for row in axes]


def draw(axes: Any, curves: dict[str, Points], xlabel: str, ylabel: str, title: str = "", log_x: bool = True,
         log_y: bool = True, style: Callable[[str], dict[str, Any]] | None = None, legend_size: int = 8) -> None:
    """One line per curve, named by its label (``style(label)``: matplotlib's line options); points without
    a positive value are left out (a failed or skipped measurement), and log scales set where a line is."""
    for label, points in curves.items():
        kept = [(x, y) for x, y in points if y is not None and y > 0]
        if kept:
            axes.plot(*zip(*kept, strict=True), label=label, **{"marker": "o", **(style(label) if style else {})})
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if axes.lines:
        if log_x:
            axes.set_xscale("log")
        if log_y:
            axes.set_yscale("log")
        axes.legend(fontsize=legend_size)
    axes.grid(True, which="both", alpha=0.3)


def save(fig: Any, path: Path, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG; its path, as reports list it."""
    fig.savefig(path, dpi=dpi)
    return str(path)
