"""Recovery fine-tuning end to end: how much of the quality that patching costs a short fine-tune gives back.

`run_recovery` loads a model, scores it (the **baseline**), patches it, scores it again (**zero-shot**),
fine-tunes it with `train` (scoring it every ``eval_every`` steps and at the end: **fine-tuned**) and,
if asked, fine-tunes the unpatched model with the same recipe, data, steps and teacher (the **control**:
fine-tuning on in-domain data moves the baseline too, and the honest comparison shows by how much).
``evaluate_as`` lists more attention configurations (`evaluate_as`; ``"unpatched"`` is the model's own
attention) under which the original weights and the fine-tuned ones are scored too, as LongLoRA trains
with shifted groups and scores with full attention. The result is a `RecoveryReport`; ``save`` writes
``recovery.json``, ``recovery.md`` (one table row per model, and one per configuration scored as) and
``recovery.png`` (the metric over training steps, the baseline and the control's end point as
horizontal lines, the fine-tuned scores under the other configurations as points at the last step).

The share of the gap closed is ``(zero_shot - fine_tuned) / (zero_shot - baseline)``: 1 when the
fine-tuned model is back at the baseline, 0 when it is no better than zero-shot, above 1 when it beats
the baseline, negative when it got worse. The ratio reads the same for metrics where lower is better
(perplexity, WER) and higher is better (accuracy); when the patched model is not worse than the
baseline there is no gap, and it is None. Under another configuration, the gap is that configuration's:
from its own zero-shot (the original weights under it) to its fine-tuned score, so scoring as
``"unpatched"`` has no gap (its zero-shot is the baseline) and reads against the baseline and control.

Under ``accelerate launch`` every process loads the model, evaluates and trains (evaluation is
deterministic, so all get the same numbers; FSDP needs all processes in every forward), and only the
main process prints and writes files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, training_folder
from .evaluate_as import (
    UNPATCHED,
    AttentionConfig,
    AttentionScore,
    attention_configs,
    attention_label,
    score_as,
    switch_attention,
)

NAMES = {"json": "recovery.json", "markdown": "recovery.md", "plot": "recovery.png"}


def gap_closed(baseline: float, zero_shot: float, fine_tuned: float, lower_is_better: bool) -> float | None:
    """Share of the baseline-to-zero-shot gap that fine-tuning closed; None when zero-shot is not worse."""
    worse_by = zero_shot - baseline if lower_is_better else baseline - zero_shot
    if not worse_by > 0:
        return None
    return (zero_shot - fine_tuned) / (zero_shot - baseline)


@dataclass
class RecoveryReport:
    """One recovery run: the model versions' scores, the training curve, and where and how it ran.

    ``history`` holds `TrainResult.history` rows (``step``, ``loss``, ``metric``, ``learning_rate``);
    ``control`` and ``control_history`` are None when no control run was made; ``evaluated_as`` holds
    the scores under the ``evaluate_as`` configurations, in their order; ``augmented`` says whether
    training images were moved at random (`augment`).
    """

    model: str
    task: str
    variant: str
    variant_options: dict[str, Any]
    recipe: str
    steps: int
    metric: str
    lower_is_better: bool
    baseline: float
    zero_shot: float
    fine_tuned: float
    control: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    control_history: list[dict[str, Any]] | None = None
    evaluated_as: list[AttentionScore] = field(default_factory=list)
    transfer_losses: list[float] = field(default_factory=list)
    augmented: bool = False
    train_seconds: float = 0.0
    device: str = ""
    processes: int = 1
    config: dict[str, Any] = field(default_factory=dict)  # as it ran: the launcher's mixed precision filled in
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def gap_closed(self) -> float | None:
        """Share of the baseline gap closed (see the module docstring)."""
        return gap_closed(self.baseline, self.zero_shot, self.fine_tuned, self.lower_is_better)

    @property
    def gap_closed_vs_control(self) -> float | None:
        """The same share with the fine-tuned unpatched model as the target; None without a control."""
        if self.control is None:
            return None
        return gap_closed(self.control, self.zero_shot, self.fine_tuned, self.lower_is_better)

    def gap_closed_as(self, score: AttentionScore) -> float | None:
        """Share of the gap closed under another configuration: from its zero-shot to the baseline."""
        return gap_closed(self.baseline, score.zero_shot, score.fine_tuned, self.lower_is_better)

    def gap_closed_as_vs_control(self, score: AttentionScore) -> float | None:
        """The same share with the control as the target; None without a control."""
        if self.control is None:
            return None
        return gap_closed(self.control, score.zero_shot, score.fine_tuned, self.lower_is_better)

    def to_dict(self) -> dict[str, Any]:
        """Every field, with the derived gap shares, also on each ``evaluated_as`` entry."""
        data = asdict(self)
        data["evaluated_as"] = [{**asdict(score), "gap_closed": self.gap_closed_as(score),
                                 "gap_closed_vs_control": self.gap_closed_as_vs_control(score)} for score in self.evaluated_as]
        return {**data, "gap_closed": self.gap_closed, "gap_closed_vs_control": self.gap_closed_vs_control}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoveryReport:
        """A report from `to_dict`'s output (the derived gap fields are recomputed)."""
        values = {key: value for key, value in data.items() if not key.startswith("gap_closed")}
        values["evaluated_as"] = [AttentionScore(**{key: value for key, value in row.items() if not key.startswith("gap_closed")})
                                  for row in data.get("evaluated_as", [])]
        return cls(**values)

    def markdown(self) -> str:
        """A heading, the run's context, and the table: the model's row, then one per configuration scored as
        (rows of several models stack into one table)."""
        direction = "lower is better" if self.lower_is_better else "higher is better"
        options = ", ".join(f"{key}={value}" for key, value in self.variant_options.items())
        lines = [f"## Recovery of {Path(self.model).name}: {self.variant} ({options or 'defaults'}), {recipe_label(self)}, "
                 f"{self.steps} steps", ""]
        lines += [f"- metric: {self.metric} ({direction})", f"- device: {self.device}, {self.processes} process(es)",
                  f"- training time: {self.train_seconds:.0f} s (periodic evaluations included)",
                  "- versions: " + ", ".join(f"{name} {version}" for name, version in self.versions.items()), ""]
        lines += [markdown_header(), *markdown_rows(self)]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``recovery.json``, ``recovery.md`` and ``recovery.png`` into ``out_dir``; return their paths."""
        paths = write_report(out_dir, NAMES, self.to_dict(), self.markdown())
        plot_recovery(self, paths["plot"])
        return paths


def write_report(out_dir: str | Path, names: dict[str, str], data: dict[str, Any], markdown: str) -> dict[str, Path]:
    """``data`` as JSON and ``markdown`` into ``out_dir`` under ``names["json"]`` and ``names["markdown"]``;
    the paths of every name (others, such as the plot, are the caller's to write)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in names.items()}
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown)
    return paths


TABLE_COLUMNS = ("model", "variant", "recipe", "steps", "metric", "baseline", "patched zero-shot", "patched + fine-tuned",
                 "gap closed", "control: unpatched + fine-tuned", "gap closed vs control")


def markdown_header() -> str:
    """The header and separator lines of the recovery table."""
    return "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * 5 + "---:|" * (len(TABLE_COLUMNS) - 5)


def markdown_row(report: RecoveryReport) -> str:
    """One model's row of the recovery table."""
    return _row(report, attention_label(report.variant, report.variant_options), report.zero_shot, report.fine_tuned,
                report.gap_closed, report.gap_closed_vs_control)


def markdown_rows(report: RecoveryReport) -> list[str]:
    """The model's row, then one per configuration it was scored as: ``"sparse (...) → scored as unpatched"``."""
    trained = attention_label(report.variant, report.variant_options)
    return [markdown_row(report)] + [
        _row(report, f"{trained} → scored as {score.label}", score.zero_shot, score.fine_tuned,
             report.gap_closed_as(score), report.gap_closed_as_vs_control(score))
        for score in report.evaluated_as
    ]


def _row(report: RecoveryReport, attention: str, zero_shot: float, fine_tuned: float, gap: float | None,
         gap_vs_control: float | None) -> str:
    def share(value: float | None) -> str:
        return "n/a (zero-shot not worse)" if value is None else f"{value:.1%}"

    cells = [Path(report.model).name, attention, recipe_label(report), str(report.steps), report.metric,
             f"{report.baseline:.4g}", f"{zero_shot:.4g}", f"{fine_tuned:.4g}", share(gap),
             "-" if report.control is None else f"{report.control:.4g}", "-" if report.control is None else share(gap_vs_control)]
    return "| " + " | ".join(cells) + " |"


def recipe_label(report: RecoveryReport) -> str:
    """The recipe and what was added to it: ``"full + distill 0.5, augmented"``."""
    weight = report.config.get("distill_weight", 0)
    return report.recipe + (f" + distill {weight:g}" if weight else "") + (", augmented" if report.augmented else "")


def plot_recovery(report: RecoveryReport, path: Path) -> None:
    """The metric over training steps (patched, and the control if any), baseline and control end as lines."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as missing:
        raise ImportError("Plotting the recovery needs matplotlib: pip install matplotlib (or the 'train' extra).") from missing
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for history, label, style in ((report.history, f"patched ({report.variant}) + {report.recipe}", "o-"),
                                  (report.control_history or [], f"control: unpatched + {report.recipe}", "s--")):
        points = [(row["step"], row["metric"]) for row in history if row.get("metric") is not None]
        if points:
            axes.plot(*zip(*points, strict=True), style, markersize=4, label=label)
    axes.scatter([0], [report.zero_shot], marker="x", color="red", zorder=3, label="patched, zero-shot")
    for score in report.evaluated_as:
        axes.scatter([report.steps], [score.fine_tuned], marker="D", zorder=3, label=f"fine-tuned, scored as {score.label}")
    axes.axhline(report.baseline, color="black", linestyle="--", label="baseline (unpatched)")
    if report.control is not None:
        axes.axhline(report.control, color="grey", linestyle=":", label="control, end of training")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(f"{report.metric} ({'lower' if report.lower_is_better else 'higher'} is better)")
    axes.set_title(f"Recovery of {Path(report.model).name}: {report.variant}, {report.recipe}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)


@dataclass
class TaskSetup:
    """What training and scoring a task needs: samples, their collate function, and the metric."""

    train_data: Any
    collate_fn: Callable
    metric: Any


def task_setup(loaded, train_data: Any = None, eval_data: Any = None, *, seq_len: int | None = None,
               augment: bool = False, eval_options: dict[str, Any] | None = None) -> TaskSetup:
    """The `TaskSetup` of a loaded model (`eval.models.EvalModel`): data of `data`, metric of `evaluators`.

    ``seq_len`` (text) defaults to the smaller of 1024 and the model's context, as does the evaluation's
    ``max_length``; ``augment`` (vision) moves training images at random (`augment`); ``eval_options``
    go to the task's metric builder (``max_tokens``, ``max_samples``, ``batch_size``, ...).
    """
    from . import data, evaluators
    from .config import TrainError

    if augment and loaded.task != "vision":
        raise TrainError(f"augment moves training images; this is a {loaded.task} model. Drop augment (--augment).")
    options = dict(eval_options or {})
    if loaded.task == "text":
        context = min(1024, getattr(loaded.model.config, "max_position_embeddings", 1024))
        texts = data.text_documents(eval_data, split="test") if eval_data is not None else None
        options.setdefault("max_length", context)
        chunks = data.causal_lm_chunks(loaded.tokenizer, data.text_documents(train_data), seq_len or context)
        return TaskSetup(chunks, data.collate_causal_lm, evaluators.text_metric(loaded.tokenizer, texts, **options))
    if loaded.task == "speech":
        samples = data.speech_training_set(loaded.feature_extractor, loaded.tokenizer, train_data)
        collate = data.SpeechCollator(loaded.model.config.decoder_start_token_id)
        return TaskSetup(samples, collate, evaluators.speech_metric(loaded.feature_extractor, loaded.tokenizer, eval_data, **options))
    samples = data.image_training_set(loaded.image_processor, loaded.model.config, train_data, augment=augment)
    metric = evaluators.vision_metric(loaded.image_processor, loaded.model.config, eval_data, **options)
    return TaskSetup(samples, data.collate_images, metric)


def recorded_config(config: TrainConfig) -> dict[str, Any]:
    """``config`` as a report records it: as the run trains, the launcher's mixed precision filled in."""
    from .runtime import mixed_precision_of

    return asdict(replace(config, mixed_precision=mixed_precision_of(config)))


def run_recovery(
    model: str,
    variant: str,
    variant_options: dict[str, Any],
    config: TrainConfig,
    *,
    train_data: Any = None,
    eval_data: Any = None,
    seq_len: int | None = None,
    augment: bool = False,
    eval_options: dict[str, Any] | None = None,
    control: bool = False,
    evaluate_as: Sequence[tuple[str, dict[str, Any]] | str] = (),
    baseline: float | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> RecoveryReport:
    """Baseline, zero-shot, fine-tuned (and control) scores of ``model`` patched with ``variant``.

    Args:
        model: a checkpoint folder or Hub name of a causal LM, Whisper model or image classifier.
        variant, variant_options: what `patch_model` gets (``window``, ``targets``, ...).
        config: the training run; its ``output_dir`` (checkpoints in ``checkpoints/``, trackers' files)
            defaults to ``out_dir/training``; the control's run goes next to it, in ``<output_dir>-control``.
        train_data, eval_data: data sources (see `data`); None: the task's default assets.
        seq_len, augment, eval_options: see `task_setup`.
        control: also fine-tune the unpatched model.
        evaluate_as: more attention configurations to score the original and the fine-tuned weights
            with: ``(variant, options)`` pairs, or ``"unpatched"`` (the model's own attention), e.g.
            ``["unpatched", ("sliding", {"window": 1024, "sink_tokens": 4})]``. Checked before the model
            is loaded (`evaluate_as.attention_configs`); each is patched onto the original weights once
            before training, so what does not fit the model also fails before training starts.
        baseline: the unpatched model's score when it is already known (`seeds.run_seeds` scores it
            once: same weights, same data); None scores it.
        out_dir: where the main process saves the report; None saves nothing.
        log: receives progress lines on the main process.
    """
    import torch

    from ..eval.models import load_eval_model
    from .loop import train
    from .runtime import mixed_precision_of

    configs = attention_configs(evaluate_as)
    state = process_state()
    say = log if state.is_main_process else (lambda line: None)
    checkpoints = config.output_dir or training_folder(out_dir)
    # Scores outside training under the autocast that training's evaluations run under, so all compare alike.
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision_of(config))

    def autocast():
        return torch.autocast(state.device.type, dtype=half, enabled=half is not None)

    def load():
        return load_eval_model(model, device=state.device, dtype=torch.float32)

    # Distillation's teacher is the unpatched model, loaded once more.
    teacher = load().model if config.distill_weight > 0 else None

    def fine_tune(net, setup: TaskSetup, folder: str | None) -> tuple[Any, float]:
        start = time.perf_counter()
        result = train(net, setup.train_data, replace(config, output_dir=folder), collate_fn=setup.collate_fn,
                       evaluate=setup.metric, teacher=teacher)
        return result, time.perf_counter() - start

    loaded = load()
    setup = task_setup(loaded, train_data, eval_data, seq_len=seq_len, augment=augment, eval_options=eval_options)
    unpatched, trained_as = AttentionConfig(UNPATCHED), AttentionConfig(variant, dict(variant_options))
    say(f"{len(setup.train_data)} training samples; scoring {setup.metric.name} of the unpatched model")
    with autocast():
        baseline = setup.metric(loaded.model) if baseline is None else baseline
        zero_shots = score_as(loaded.model, configs, setup.metric, current=unpatched, seed=config.seed, current_score=baseline)
        # The seed makes variants with random state the same on every process.
        switch_attention(loaded.model, trained_as, config.seed)
        zero_shot = setup.metric(loaded.model)
    say(f"{setup.metric.name}: baseline {baseline:.4g}, patched zero-shot {zero_shot:.4g}; fine-tuning ({config.recipe}, {config.steps} steps)")
    result, seconds = fine_tune(loaded.model, setup, checkpoints)
    fine_tuned = _final_metric(result.history, setup.metric, result.model)
    with autocast():
        fine_tuned_as = score_as(result.model, configs, setup.metric, current=trained_as, seed=config.seed)
    report = RecoveryReport(
        model=str(model), task=loaded.task, variant=variant, variant_options=dict(variant_options), recipe=config.recipe,
        steps=config.steps, metric=setup.metric.name, lower_is_better=setup.metric.lower_is_better, baseline=baseline,
        zero_shot=zero_shot, fine_tuned=fine_tuned, history=result.history, transfer_losses=list(result.transfer_losses),
        evaluated_as=[AttentionScore(attention.variant, attention.options, before, after)
                      for attention, before, after in zip(configs, zero_shots, fine_tuned_as, strict=True)],
        augmented=augment,
        train_seconds=seconds, device=_device_name(state.device), processes=state.num_processes,
        config=recorded_config(config), versions=_versions(),
    )
    say(f"{setup.metric.name} fine-tuned: {fine_tuned:.4g}")
    for score in report.evaluated_as:
        say(f"{setup.metric.name} scored as {score.label}: zero-shot {score.zero_shot:.4g}, fine-tuned {score.fine_tuned:.4g}")
    del loaded, result
    if control:
        say("control: fine-tuning the unpatched model with the same recipe and steps")
        unpatched = load()
        control_result, _ = fine_tune(unpatched.model, setup, checkpoints and f"{checkpoints}-control")
        report.control = _final_metric(control_result.history, setup.metric, control_result.model)
        report.control_history = control_result.history
    if out_dir is not None and state.is_main_process:
        paths = report.save(out_dir)
        say(f"report: {', '.join(str(path) for path in paths.values())}")
    say(report.markdown())
    return report


def process_state():
    """The process's `accelerate.PartialState` (device, rank, number of processes).

    The first state built is shared by the whole process; like an Accelerator, it must honour
    ACCELERATE_USE_CPU, or several CPU ranks under torchrun would each run alone.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _final_metric(history: list[dict[str, Any]], metric, model) -> float:
    """The metric `train` recorded at the end, or the model scored now if it recorded none."""
    scored = [row["metric"] for row in history if row.get("metric") is not None]
    return scored[-1] if scored else metric(model)


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)


def _versions() -> dict[str, str]:
    import importlib.metadata

    from .. import __version__

    versions = {"hf-efficient-attn": __version__}
    for name in ("torch", "transformers", "accelerate", "peft"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
