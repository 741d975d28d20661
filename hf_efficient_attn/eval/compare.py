"""The unpatched model against patched versions of it, on the same data: metric, delta, time and memory.

`compare_variants` runs the evaluation on the model as given (the baseline), then, for each variant
configuration, patches the model in place, runs the same evaluation, and unpatches it, so only one
copy of the weights is ever in memory. Every configuration is tried (patched and unpatched) before the
baseline runs, so a bad option fails in seconds rather than after the baseline. A configuration whose
evaluation fails is recorded with its error and the others still run. Callers that show progress get
each model version's label before it runs and its row as soon as it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..api import patch_model, unpatch_model
from ..measure import measure
from .errors import EvalInputError
from .progress import scoring
from .results import Score

BASELINE_LABEL = "baseline"


@dataclass
class VariantConfig:
    """A variant name and the keyword arguments of `patch_model` (its options, ``layers``, ``targets``)."""

    variant: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        options = ", ".join(f"{key}={value}" for key, value in self.options.items())
        return f"{self.variant}({options})" if options else self.variant


@dataclass
class ComparisonRow:
    """One evaluated model: the baseline (``variant`` None) or a patched version.

    ``delta`` is ``value`` minus the baseline's; ``seconds`` and ``peak_bytes`` are those of the whole
    evaluation (see `measure.measure`); ``error`` is set, and the numbers None, if the evaluation failed.
    """

    label: str
    variant: str | None
    options: dict[str, Any]
    value: float | None
    delta: float | None
    seconds: float | None
    peak_bytes: int | None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Comparison:
    """All rows of one comparison, the metric they share, and what was compared (``context``)."""

    metric: str
    higher_is_better: bool
    rows: list[ComparisonRow]
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> ComparisonRow:
        return self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_configs(model: nn.Module, configs: Sequence[VariantConfig]) -> None:
    """Patch and unpatch ``model`` with each configuration; `EvalInputError` naming the first that is refused."""
    for config in configs:
        try:
            patch_model(model, config.variant, **config.options)
        except (ValueError, TypeError) as refused:
            raise EvalInputError(f"Variant configuration {config.label} was refused: {refused}") from refused
        unpatch_model(model)


def _run(
    model: nn.Module, evaluate: Callable[[nn.Module], Score], warm_up: Callable[[nn.Module], object] | None
) -> tuple[Score, float, int]:
    device = next(model.parameters()).device
    if warm_up is not None:
        warm_up(model)
    with measure(device) as measurement:
        score = evaluate(model)
    return score, measurement.seconds, measurement.peak_bytes


def compare_variants(
    model: nn.Module,
    evaluate: Callable[[nn.Module], Score],
    configs: Sequence[VariantConfig],
    *,
    warm_up: Callable[[nn.Module], object] | None = None,
    context: dict[str, Any] | None = None,
    seed: int = 0,
    on_start: Callable[[int, str], None] | None = None,
    on_row: Callable[[str, ComparisonRow], None] | None = None,
) -> Comparison:
    """Evaluate ``model`` unpatched, then patched with each of ``configs``; ``model`` ends unpatched.

    Args:
        model: an unpatched supported model, in eval mode.
        evaluate: ``evaluate(model) -> Score``, e.g. from `tasks.evaluator_for`.
        configs: the variant configurations to compare with the baseline.
        warm_up: run untimed on each model version before its evaluation (first-call costs such as
            kernel compilation and autotuning then stay out of the timings).
        context: what is being compared (model, data, device, ...), kept in the result for reports.
        seed: seeds torch before each patch, so variants with random state (projections, features)
            are the same from run to run.
        on_start: called as ``on_start(position, label)`` before each model version runs: position 0
            is the baseline, ``1 .. len(configs)`` the configurations in order.
        on_row: called as ``on_row(metric, row)`` with each `ComparisonRow` as soon as its model version
            is done (``metric`` is the name of the score, e.g. ``"perplexity"``).
    """
    check_configs(model, configs)
    if on_start is not None:
        on_start(0, BASELINE_LABEL)
    with scoring(BASELINE_LABEL):
        baseline, seconds, peak = _run(model, evaluate, warm_up)
    rows: list[ComparisonRow] = []

    def add(row: ComparisonRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(baseline.metric, row)

    add(ComparisonRow(BASELINE_LABEL, None, {}, baseline.value, 0.0, seconds, peak, baseline.details))
    for position, config in enumerate(configs, start=1):
        if on_start is not None:
            on_start(position, config.label)
        torch.manual_seed(seed)
        patch_model(model, config.variant, **config.options)
        try:
            with scoring(config.label):
                score, seconds, peak = _run(model, evaluate, warm_up)
        except Exception as error:  # one failing configuration must not lose the others' results
            message = f"{type(error).__name__}: {error}"
            add(ComparisonRow(config.label, config.variant, config.options, None, None, None, None, error=message))
            continue
        finally:
            unpatch_model(model)
        add(
            ComparisonRow(config.label, config.variant, config.options, score.value, score.value - baseline.value,
                          seconds, peak, score.details)
        )
    return Comparison(baseline.metric, baseline.higher_is_better, rows, dict(context or {}))
