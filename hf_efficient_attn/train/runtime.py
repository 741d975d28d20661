"""The `accelerate.Accelerator` a run uses: the caller's, or one built from the config."""

from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from .config import TrainConfig, TrainError


def accelerator_for(config: TrainConfig, accelerator: Accelerator | None = None) -> Accelerator:
    """``accelerator`` checked against ``config``, or a new one built from it.

    A new one also reads the user's ``accelerate config`` / ``accelerate launch`` settings (processes,
    DDP or FSDP, and the mixed precision unless the config sets one), so the same code runs on one
    CPU, one GPU or several GPUs. It reports to the config's trackers and keeps at most
    ``keep_checkpoints`` checkpoints in ``output_dir`` (accelerate's own rotation).
    """
    if accelerator is None:
        check_trackers_installed(config.report_to)
        return Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=list(config.report_to) or None,
            project_config=project_configuration(config),
        )
    if accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
        raise TrainError(
            f"The accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches but "
            f"gradient_accumulation_steps={config.gradient_accumulation_steps}; build the Accelerator with "
            "gradient_accumulation_steps equal to the config's, or pass accelerator=None."
        )
    project = accelerator.project_configuration
    if config.output_dir is not None and not (
        project.automatic_checkpoint_naming
        and project.project_dir is not None
        and Path(project.project_dir).resolve() == Path(config.output_dir).resolve()
    ):
        raise TrainError(
            "The accelerator does not write its checkpoints to output_dir; build it with "
            "project_config=hf_efficient_attn.train.runtime.project_configuration(config), or pass accelerator=None."
        )
    return accelerator


def project_configuration(config: TrainConfig) -> ProjectConfiguration:
    """accelerate's project settings of a run: checkpoints under ``output_dir`` by accelerate's automatic
    naming, the newest ``keep_checkpoints`` kept, trackers' files in ``output_dir``."""
    return ProjectConfiguration(
        project_dir=config.output_dir,
        logging_dir=config.output_dir,
        automatic_checkpoint_naming=config.output_dir is not None,
        total_limit=config.keep_checkpoints,
    )


def mixed_precision_of(config: TrainConfig) -> str:
    """The mixed precision a run of ``config`` trains in: the config's, else the launcher's (the
    ``ACCELERATE_MIXED_PRECISION`` that ``accelerate launch`` sets, as `accelerate.Accelerator` reads it),
    else ``"no"``."""
    return config.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def check_trackers_installed(names: tuple[str, ...]) -> None:
    """Raise `TrainError` for a built-in tracker whose package is not installed (accelerate would drop it
    without a word); ``"all"`` and registered custom trackers pass."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    available = {str(tracker) for tracker in get_available_trackers()}
    built_in = {str(tracker) for tracker in LoggerType} - {"all"}
    missing = [name for name in names if name in built_in and name not in available]
    if missing:
        raise TrainError(
            f"`report_to` names {', '.join(missing)}, whose package is not installed; install it (e.g. pip install "
            f"{missing[0].replace('_', '-')}) or leave it out."
        )
