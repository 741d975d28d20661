"""`train`: recovery fine-tuning of a patched model under `accelerate`, one recipe from `TrainConfig`.

The same code runs on one CPU, one GPU or several (DDP, FSDP) under ``accelerate launch``: the
accelerator prepares the model, optimizer, data and schedule, accumulates gradients, clips them and
mixes precision. The schedule is a linear warm-up over ``warmup_steps`` then a cosine decay to 0 at
``steps``. Only the main process prints and writes files; every process calls ``evaluate`` (so that
a sharded model can run it) and every process returns the same `TrainResult`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import RunState, checkpoints, load_newest, save_checkpoint
from .config import TrainConfig, TrainError
from .distill import check_teacher, distilled_loss
from .loader import training_loader
from .recipes import check_recipe, prepare_model
from .runtime import accelerator_for
from .transfer import attention_transfer


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        history: one row per log or evaluation point: ``{"step", "loss", "metric", "learning_rate"}``;
            ``loss`` is the mean training loss (the mixed loss under distillation) since the previous
            logged step (None on rows that only evaluate, such as step 0), ``metric`` what
            ``evaluate`` returned (None where it did not run), ``learning_rate`` the rate the step was
            taken with.
        transfer_losses: the attention-matching loss of each transfer step ("transfer" recipe).
        model: the trained model, unwrapped from the accelerator (a PeftModel for LoRA recipes), in
            eval mode.
        checkpoint: the final checkpoint folder, when ``output_dir`` was set.
    """

    history: list[dict]
    transfer_losses: list[float]
    model: nn.Module
    checkpoint: str | None


def train(
    model: nn.Module,
    train_data: object,
    config: TrainConfig,
    *,
    collate_fn: Callable | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    accelerator: Accelerator | None = None,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Fine-tune ``model`` (patched by `patch_model`) on ``train_data`` following ``config``.

    Args:
        model: the model to train; for "lora"/"transfer" a plain model, wrapped here by PEFT.
        train_data: a torch Dataset / datasets.Dataset / list of dict samples (batched with
            ``collate_fn``, in a seeded order) or a DataLoader (used as given). Each batch is a dict
            passed as ``model(**batch)``; the model must return ``.loss`` (HF models do given labels).
        config: the run's options.
        collate_fn: how samples become a batch (default: torch's default collation).
        evaluate: ``evaluate(model) -> float``, called with the unwrapped model in eval mode before
            training (step 0), every ``eval_every`` steps and at the end; logged as "metric".
        accelerator: an `accelerate.Accelerator` to use; by default one is built from the config and
            the user's accelerate settings.
        teacher: the unpatched model, for ``config.distill_weight > 0`` (see `distill`); it is moved
            to the training device and frozen (each process holds a full copy).
    """
    check_recipe(model, config)
    check_teacher(teacher, config.distill_weight)
    accelerator = accelerator_for(config, accelerator)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    set_seed(config.seed)
    loader = accelerator.prepare(training_loader(train_data, config, collate_fn, accelerator.num_processes))
    resumable = config.resume and bool(checkpoints(config.output_dir))
    transfer_losses: list[float] = []
    if config.recipe == "transfer" and not resumable:
        transfer_losses = attention_transfer(model, loader, config, accelerator)
    model = prepare_model(model, config)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config, accelerator.num_processes)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = RunState(
        step=0, micro_batches=0, history=[], transfer_losses=transfer_losses, recipe=config.recipe
    )
    if config.report_to:
        accelerator.init_trackers(TRACKER_PROJECT, config=tracker_settings(config))
    if resumable:
        state = load_newest(accelerator, config.output_dir, config.recipe) or state
    elif evaluate is not None:
        _record(
            accelerator,
            state,
            {"step": 0, "loss": None, "metric": _evaluate(accelerator, model, evaluate)},
            scheduler.get_last_lr()[0],
        )

    bar = tqdm(
        total=config.steps, initial=state.step, disable=not (config.progress and accelerator.is_main_process)
    )
    checkpoint = None
    pending: list[torch.Tensor] = []
    window: list[float] = []
    model.train()
    epoch_length = len(loader)
    if epoch_length == 0:
        raise TrainError("train_data gives no batch; pass more samples or a smaller batch_size.")
    while state.step < config.steps:
        epoch, consumed = divmod(state.micro_batches, epoch_length)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, consumed) if consumed else loader
        for batch in batches:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                if teacher is not None:
                    loss = distilled_loss(outputs, batch, teacher, config.distill_weight, accelerator.autocast())
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                step_learning_rate = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            pending.append(loss.detach())
            state.micro_batches += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            window.append(accelerator.reduce(torch.stack(pending).mean(), reduction="mean").item())
            pending = []
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.4g}")
            row = _step_row(accelerator, config, state.step, window, model, evaluate)
            if row is not None:
                _record(accelerator, state, row, step_learning_rate)
                window = []
            last = state.step == config.steps
            if config.output_dir and (last or (config.save_every and state.step % config.save_every == 0)):
                checkpoint = save_checkpoint(accelerator, state, model=model if last else None)
            if last:
                break
    bar.close()
    if config.report_to:
        accelerator.end_training()
    trained = accelerator.unwrap_model(model).eval()
    return TrainResult(
        history=state.history, transfer_losses=state.transfer_losses, model=trained, checkpoint=checkpoint
    )


TRACKER_PROJECT = "hf-efficient-attn"
"""The project (run group) name trackers file a run under."""


def tracker_settings(config: TrainConfig) -> dict[str, int | float | str | bool]:
    """The config as trackers take hyperparameters: numbers, text and flags (others as text)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in dataclasses.asdict(config).items()}


def _step_row(
    accelerator: Accelerator,
    config: TrainConfig,
    step: int,
    window: list[float],
    model: nn.Module,
    evaluate: Callable[[nn.Module], float] | None,
) -> dict | None:
    """The history row of this step, or None when it neither logs nor evaluates."""
    last = step == config.steps
    logs = last or step % config.log_every == 0
    evaluates = evaluate is not None and (last or (config.eval_every and step % config.eval_every == 0))
    if not (logs or evaluates):
        return None
    loss = sum(window) / len(window) if logs and window else None
    metric = _evaluate(accelerator, model, evaluate) if evaluates else None
    return {"step": step, "loss": loss, "metric": metric}


def _record(accelerator: Accelerator, state: RunState, row: dict, learning_rate: float) -> None:
    """Add the step's learning rate to ``row``, store it in the history and print it on the main process."""
    row["learning_rate"] = learning_rate
    state.history.append(row)
    if accelerator.is_main_process:
        shown = ", ".join(f"{key}={value:.5g}" for key, value in row.items() if isinstance(value, float))
        tqdm.write(f"step {row['step']}: {shown}")
    if accelerator.trackers:
        accelerator.log({key: value for key, value in row.items() if value is not None}, step=row["step"])


def _evaluate(accelerator: Accelerator, model: nn.Module, evaluate: Callable[[nn.Module], float]) -> float:
    """``evaluate`` on the unwrapped model in eval mode, without gradients; training mode is restored."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    with torch.no_grad():
        value = float(evaluate(unwrapped))
    unwrapped.train(was_training)
    return value


def _warmup_cosine(config: TrainConfig, num_processes: int) -> Callable[[int], float]:
    """Learning-rate factor per scheduler step: linear warm-up, then cosine decay to 0 at ``steps``.

    A prepared scheduler steps once per process at each optimizer step (accelerate's convention), so
    scheduler steps are divided by the number of processes to count optimizer steps.
    """

    def factor(scheduler_step: int) -> float:
        step = scheduler_step / num_processes
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
