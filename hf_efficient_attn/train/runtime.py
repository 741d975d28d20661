"""The `accelerate.Accelerator` a run uses: the caller's, or one built from the config."""

from __future__ import annotations

from accelerate import Accelerator

from .config import TrainConfig, TrainError


def accelerator_for(config: TrainConfig, accelerator: Accelerator | None = None) -> Accelerator:
    """``accelerator`` checked against ``config``, or a new one with its mixed precision and accumulation.

    A new one also reads the user's ``accelerate config`` / ``accelerate launch`` settings (processes,
    DDP or FSDP), so the same code runs on one CPU, one GPU or several GPUs.
    """
    if accelerator is None:
        return Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
    if accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
        raise TrainError(
            f"The accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches but "
            f"gradient_accumulation_steps={config.gradient_accumulation_steps}; build the Accelerator with "
            "gradient_accumulation_steps equal to the config's, or pass accelerator=None."
        )
    return accelerator
