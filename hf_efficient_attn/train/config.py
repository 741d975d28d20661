"""What a recovery fine-tuning run is asked to do: `TrainConfig`, its recipes, and `TrainError`.

Every field is checked when the config is built, so a bad value fails before any model is touched,
with a message that names the field, the value and what to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

RECIPES: tuple[str, ...] = ("lora", "transfer", "full")
MIXED_PRECISION: tuple[str | None, ...] = (None, "no", "bf16", "fp16")


class TrainError(ValueError):
    """A training request that cannot be carried out (bad config value, recipe, data or checkpoint)."""


@dataclass
class TrainConfig:
    """Options of `train` and `prepare_model`.

    Attributes:
        recipe: what trains. ``"lora"``: LoRA adapters on the attention projections (and the MLP with
            `lora_mlp`), plus norms and embeddings as LongLoRA does (`train_norms`,
            `train_embeddings`) and the variant's own per-layer parameters, if any. ``"transfer"``:
            first `attention_transfer` (only the variant's parameters learn to reproduce each layer's
            exact softmax attention, as in LoLCATs), then the ``"lora"`` recipe. ``"full"``: every
            parameter trains.
        steps: optimizer steps of the main stage (each after `gradient_accumulation_steps`
            micro-batches).
        learning_rate: peak learning rate of the main stage (AdamW).
        batch_size: samples per micro-batch on each process.
        data_workers: DataLoader worker processes that prepare samples (Whisper's log-mel features,
            image transforms) while the model trains; 0 prepares them in the training process.
        gradient_accumulation_steps: micro-batches whose gradients add up before one optimizer step.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``, given to `accelerate.Accelerator`; None
            (default) leaves it to the launcher (``accelerate launch --mixed_precision``, the user's
            ``accelerate config``), as accelerate does, and to ``"no"`` without one.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant) to save
            memory.
        lora_rank: rank ``r`` of the LoRA adapters.
        lora_alpha: LoRA scaling numerator (updates are scaled by ``lora_alpha / lora_rank``).
        lora_dropout: dropout on the LoRA branch input.
        lora_mlp: also put LoRA on the MLP projections of every layer.
        train_norms: LongLoRA: the normalization layers train alongside LoRA.
        train_embeddings: LongLoRA: token embeddings and, where the model has them, positional and
            patch embeddings train alongside LoRA.
        distill_weight: weight ``w`` of distillation from the unpatched model (`distill`): the loss
            is ``(1 - w)·task loss + w·KL(teacher || model)``; 0 trains on the labels alone, and any
            other value needs ``teacher=`` in `train`.
        transfer_steps: ``"transfer"`` recipe: optimizer steps of attention transfer before LoRA.
        transfer_learning_rate: learning rate of attention transfer (AdamW, constant).
        warmup_steps: linear warm-up from 0 to `learning_rate` over these steps, then cosine decay
            to 0 at `steps`.
        weight_decay: AdamW weight decay of the main stage.
        max_grad_norm: gradients are clipped to this total norm before each step; 0 turns clipping off.
        log_every: log the mean loss of the last steps every this many optimizer steps.
        eval_every: call ``evaluate`` every this many steps; 0: only before and after training.
        save_every: write a checkpoint every this many steps (needs `output_dir`); 0: only at the end.
        keep_checkpoints: how many of the newest checkpoints to keep in `output_dir` (accelerate's
            ``ProjectConfiguration.total_limit``).
        output_dir: folder of the run: checkpoints (``checkpoints/checkpoint_<step>``) and trackers'
            files; None writes nothing.
        resume: continue from the newest checkpoint in `output_dir` (start afresh when there is none).
        seed: seeds the data order, dropout and any random initialisation (`accelerate.utils.set_seed`).
        progress: show a tqdm progress bar on the main process.
        report_to: experiment trackers that receive the logged rows, by accelerate's names
            (``"tensorboard"``, ``"wandb"``, ``"mlflow"``, ... or ``"all"`` for every installed one);
            empty (default) reports to none. Trackers that keep files write them under `output_dir`.
    """

    recipe: str = "lora"
    steps: int = 200
    learning_rate: float = 2e-4
    batch_size: int = 8
    data_workers: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    train_norms: bool = True
    train_embeddings: bool = True
    distill_weight: float = 0.0
    transfer_steps: int = 100
    transfer_learning_rate: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    output_dir: str | None = None
    resume: bool = False
    seed: int = 0
    progress: bool = True
    report_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _one_of("recipe", self.recipe, RECIPES)
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        for name in (
            "steps",
            "batch_size",
            "gradient_accumulation_steps",
            "lora_rank",
            "log_every",
            "keep_checkpoints",
        ):
            _integer(name, getattr(self, name), minimum=1)
        for name in ("transfer_steps", "warmup_steps", "eval_every", "save_every", "lora_alpha", "seed", "data_workers"):
            _integer(name, getattr(self, name), minimum=0)
        if self.recipe == "transfer" and self.transfer_steps == 0:
            raise TrainError(
                "`transfer_steps` must be >= 1 for recipe 'transfer', got 0; or use recipe='lora'."
            )
        if self.warmup_steps > self.steps:
            raise TrainError(
                f"`warmup_steps` ({self.warmup_steps}) exceeds `steps` ({self.steps}); pass warmup_steps <= steps."
            )
        for name in ("learning_rate", "transfer_learning_rate"):
            _number(name, getattr(self, name), positive=True)
        for name in ("weight_decay", "max_grad_norm"):
            _number(name, getattr(self, name), positive=False)
        _number("lora_dropout", self.lora_dropout, positive=False)
        _number("distill_weight", self.distill_weight, positive=False)
        if self.distill_weight > 1:
            raise TrainError(f"`distill_weight` must be in [0, 1], got {self.distill_weight!r}.")
        if self.lora_dropout >= 1:
            raise TrainError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout!r}.")
        for field in fields(self):
            if field.type == "bool" and not isinstance(getattr(self, field.name), bool):
                raise TrainError(f"`{field.name}` must be True or False, got {getattr(self, field.name)!r}.")
        if isinstance(self.report_to, str):
            self.report_to = (self.report_to,)
        self.report_to = tuple(self.report_to)
        known = tracker_names() if self.report_to else set()
        for tracker in self.report_to:
            if tracker not in known:
                raise TrainError(f"`report_to` names an unknown tracker {tracker!r}; accelerate knows "
                                 f"{', '.join(sorted(known))} (or pass none).")
        if self.output_dir is not None and not isinstance(self.output_dir, str):
            raise TrainError(f"`output_dir` must be a folder path (str) or None, got {self.output_dir!r}.")
        if self.resume and self.output_dir is None:
            raise TrainError(
                "`resume=True` needs `output_dir`, the folder holding the checkpoints to resume from."
            )
        if self.save_every and self.output_dir is None:
            raise TrainError(
                f"`save_every={self.save_every}` needs `output_dir` to write checkpoints to; set output_dir or save_every=0."
            )


def training_folder(out_dir: str | Path | None) -> str | None:
    """The training run's folder (checkpoints, trackers' files) beside a recovery report in ``out_dir``:
    ``<out_dir>/training``; None without a report folder."""
    return None if out_dir is None else str(Path(out_dir) / "training")


def tracker_names() -> set[str]:
    """The tracker names accelerate accepts in ``log_with`` (built-in and registered ones), and ``"all"``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return {*LOGGER_TYPE_TO_CLASS, "all"}


def _one_of(name: str, value: object, allowed: tuple[str | None, ...]) -> None:
    if value not in allowed:
        raise TrainError(f"`{name}` must be one of {', '.join(map(repr, allowed))}, got {value!r}.")


def _integer(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TrainError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _number(name: str, value: object, positive: bool) -> None:
    bad = (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (positive and value == 0)
    )
    if bad:
        raise TrainError(f"`{name}` must be a number {'> 0' if positive else '>= 0'}, got {value!r}.")
