"""The result of evaluating one model: its headline metric and the numbers behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Score:
    """One evaluation's headline metric.

    Attributes:
        metric: its name (``"perplexity"``, ``"wer"``, ``"accuracy"``).
        value: its value.
        higher_is_better: how to read a difference between two scores.
        details: other numbers of the same run (token and sample counts, CER, ...), JSON-friendly.
    """

    metric: str
    value: float
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
