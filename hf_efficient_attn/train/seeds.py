"""One recovery run repeated over several seeds, and the spread of its scores: `run_seeds`, `SeedsReport`.

A seed sets the data order, the LoRA initialisation, dropout and any random state of the variant, so
one run's gap closed is one draw. `run_seeds` runs `run_recovery` once per seed (each report saved in
``out_dir/seed-<n>``, checkpoints in its ``checkpoints``), scores the baseline once (same weights,
same data: it does not depend on the seed) and everything else per seed, zero-shot included. The
`SeedsReport` gives, for every score and gap share, the mean, the sample standard deviation and the
range over the seeds; ``save`` writes ``recovery-seeds.json`` (the summary and every seed's report)
and ``recovery-seeds.md``. A gap share that a seed does not have (its zero-shot not worse than the
target) is left out of that share's statistics, and the table says over how many seeds each is.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, TrainError
from .evaluate_as import attention_configs, attention_label
from .recovery import NAMES as REPORT_NAMES
from .recovery import RecoveryReport, process_state, recipe_label, recorded_config, run_recovery, write_report

NAMES = {"json": "recovery-seeds.json", "markdown": "recovery-seeds.md"}
QUANTITIES = {"baseline": "baseline", "zero_shot": "zero-shot", "fine_tuned": "fine-tuned", "control": "control",
              "gap_closed": "gap closed", "gap_closed_vs_control": "gap closed vs control"}
SHARES = ("gap_closed", "gap_closed_vs_control")


@dataclass
class Spread:
    """One quantity over the seeds: ``values`` per seed (None where a seed has none) and the statistics
    of those present; ``std`` is the sample standard deviation, None with fewer than two values."""

    values: list[float | None]
    mean: float
    std: float | None
    min: float
    max: float

    @property
    def count(self) -> int:
        return sum(value is not None for value in self.values)


def spread(values: Sequence[float | None]) -> Spread | None:
    """The `Spread` of ``values`` over those that are not None; None when none is."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else None
    return Spread(list(values), statistics.fmean(present), std, min(present), max(present))


@dataclass
class SeedsReport:
    """The reports of one recovery run under each of ``seeds``, in their order."""

    seeds: list[int]
    reports: list[RecoveryReport]

    def summary(self) -> dict[str, dict[str, Spread | None]]:
        """Spreads by attention, then quantity: the trained variant's scores (baseline, zero-shot,
        fine-tuned, control) and gap shares, then each configuration scored as, under
        ``"scored as <configuration>"`` (zero-shot, fine-tuned, gap shares)."""
        first = self.reports[0]
        trained = {name: spread([getattr(report, name) for report in self.reports]) for name in QUANTITIES}
        summary = {attention_label(first.variant, first.variant_options): trained}
        for index, score in enumerate(first.evaluated_as):
            scores = [report.evaluated_as[index] for report in self.reports]
            summary[f"scored as {score.label}"] = {
                "zero_shot": spread([each.zero_shot for each in scores]),
                "fine_tuned": spread([each.fine_tuned for each in scores]),
                "gap_closed": spread([report.gap_closed_as(each) for report, each in zip(self.reports, scores, strict=True)]),
                "gap_closed_vs_control": spread([report.gap_closed_as_vs_control(each)
                                                 for report, each in zip(self.reports, scores, strict=True)]),
            }
        return summary

    def to_dict(self) -> dict[str, Any]:
        summary = {attention: {name: None if value is None else {**asdict(value), "count": value.count}
                               for name, value in quantities.items()}
                   for attention, quantities in self.summary().items()}
        return {"seeds": list(self.seeds), "summary": summary, "reports": [report.to_dict() for report in self.reports]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedsReport:
        """A report from `to_dict`'s output (the summary is recomputed from the seeds' reports)."""
        return cls(list(data["seeds"]), [RecoveryReport.from_dict(report) for report in data["reports"]])

    def markdown(self) -> str:
        """A heading, the run's context, and one table row per attention and quantity."""
        first = self.reports[0]
        direction = "lower is better" if first.lower_is_better else "higher is better"
        lines = [f"## Recovery of {Path(first.model).name} over seeds {', '.join(map(str, self.seeds))}: "
                 f"{attention_label(first.variant, first.variant_options)}, {recipe_label(first)}, {first.steps} steps", "",
                 f"- metric: {first.metric} ({direction}); gap shares as in each seed's recovery.md",
                 "- std: sample standard deviation over the seeds; n: seeds with a value "
                 "(a gap share is missing where zero-shot was not worse than its target)", ""]
        seeds = [f"seed {seed}" for seed in self.seeds]
        lines += ["| attention | quantity | mean | std | min | max | n | " + " | ".join(seeds) + " |",
                  "|---|---|" + "---:|" * (5 + len(seeds))]
        controlled = any(report.control is not None for report in self.reports)
        for attention, quantities in self.summary().items():
            for name, value in quantities.items():
                if not controlled and "control" in name:
                    continue
                if value is None:
                    cells = ["n/a"] * 4 + ["0"] + ["n/a"] * len(seeds)
                else:
                    shown = _percent if name in SHARES else _score
                    cells = [shown(value.mean), shown(value.std), shown(value.min), shown(value.max), str(value.count),
                             *map(shown, value.values)]
                lines.append(f"| {attention} | {QUANTITIES[name]} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``recovery-seeds.json`` and ``recovery-seeds.md`` into ``out_dir``; return their paths."""
        return write_report(out_dir, NAMES, self.to_dict(), self.markdown())


def run_seeds(model: str, variant: str, variant_options: dict[str, Any], config: TrainConfig, seeds: Sequence[int], *,
              out_dir: str | Path | None = None, **recovery: Any) -> SeedsReport:
    """`run_recovery` once per seed of ``seeds`` (``config.seed`` is replaced), the baseline scored once.

    ``out_dir/seed-<n>`` receives each seed's report (and checkpoints, unless ``config.output_dir`` is
    set: then ``<output_dir>/seed-<n>``), ``out_dir`` the `SeedsReport`; ``recovery`` are
    `run_recovery`'s other keywords (``train_data``, ``evaluate_as``, ``control``, ``log``, ...). With
    ``config.resume`` a seed whose report of this same run is already written (`finished_report`) is not
    run again, and the others resume from their newest checkpoints.
    """
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds):
        raise TrainError(f"`seeds` must be distinct integers, such as 0 1 2; got {seeds!r}.")
    if "baseline" in recovery:
        raise TrainError("run_seeds scores the baseline itself, once; do not pass baseline=.")
    log = recovery.get("log", print)
    reports: list[RecoveryReport] = []
    for seed in seeds:
        if process_state().is_main_process:
            log(f"seed {seed} ({len(reports) + 1} of {len(seeds)})")
        folder = None if out_dir is None else Path(out_dir) / f"seed-{seed}"
        seeded = replace(config, seed=seed, output_dir=config.output_dir and str(Path(config.output_dir) / f"seed-{seed}"))
        finished = finished_report(folder, model, variant, variant_options, seeded, recovery) if config.resume else None
        if finished is not None:
            if process_state().is_main_process:
                log(f"seed {seed}: kept its finished report {folder / REPORT_NAMES['json']} (resume)")
            reports.append(finished)
            continue
        baseline = reports[0].baseline if reports else None
        reports.append(run_recovery(model, variant, variant_options, seeded, out_dir=folder, baseline=baseline, **recovery))
    report = SeedsReport(seeds, reports)
    if process_state().is_main_process:
        if out_dir is not None:
            paths = report.save(out_dir)
            log(f"seeds report: {', '.join(str(path) for path in paths.values())}")
        log(report.markdown())
    return report


def finished_report(folder: Path | None, model: str, variant: str, variant_options: dict[str, Any], config: TrainConfig,
                    recovery: dict[str, Any]) -> RecoveryReport | None:
    """The report a resumed seed already wrote in ``folder``, when it is of this very run (model, variant and
    options, training config, control and ``evaluate_as`` configurations); None otherwise, and the seed runs."""
    path = None if folder is None else folder / REPORT_NAMES["json"]
    if path is None or not path.is_file():
        return None
    report = RecoveryReport.from_dict(json.loads(path.read_text()))
    same_config = report.config == _as_json(recorded_config(replace(config, resume=bool(report.config.get("resume")))))
    same = (
        report.model == str(model) and report.variant == variant
        and report.variant_options == _as_json(dict(variant_options)) and same_config
        and (report.control is not None) == bool(recovery.get("control", False))
        and [score.label for score in report.evaluated_as] == [
            attention.label for attention in attention_configs(recovery.get("evaluate_as", ()))]
    )
    return report if same else None


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON report (tuples as lists)."""
    return json.loads(json.dumps(value))


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
