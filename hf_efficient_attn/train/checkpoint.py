"""Checkpoints of a run: ``output_dir/checkpoints/checkpoint_<step>`` folders, the newest few kept, and resuming.

A checkpoint is `accelerate`'s full state (model, optimizer, scheduler, gradient scaler, random
number generators), written by ``Accelerator.save_state`` under its automatic checkpoint naming, whose
``total_limit`` keeps the newest ``keep_checkpoints`` (`runtime.project_configuration`), plus
`STATE_FILE`, a small JSON with where the run stood: the optimizer step, how many micro-batches it had
consumed (so a resumed run skips exactly those), the history so far and the transfer losses. A folder
is numbered by the optimizer step it was saved at. The final checkpoint also holds the trained model in
``model/`` (the adapter for LoRA recipes, a `save_pretrained` folder for ``"full"``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from peft import PeftModel
from torch import nn

from .adapters import save_adapters
from .config import TrainError

STATE_FILE = "trainer_state.json"
MODEL_FOLDER = "model"
CHECKPOINTS_FOLDER = "checkpoints"
_NAME = re.compile(r"checkpoint_(\d+)")


@dataclass
class RunState:
    """Where a run stood when it was saved."""

    step: int
    micro_batches: int
    history: list[dict]
    transfer_losses: list[float]
    recipe: str


def save_checkpoint(accelerator: Accelerator, state: RunState, model: nn.Module | None = None) -> str:
    """Write the checkpoint of ``state.step`` where the accelerator's project configuration says
    (``<project_dir>/checkpoints/checkpoint_<step>``; accelerate drops the oldest beyond its
    ``total_limit``); return its folder. With ``model`` (the prepared model), also write the trained
    model to ``<folder>/model``."""
    accelerator.project_configuration.iteration = state.step  # accelerate names the folder by it
    folder = Path(accelerator.save_state())
    if model is not None:
        _save_model(accelerator, model, folder / MODEL_FOLDER)
    if accelerator.is_main_process:
        (folder / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
    accelerator.wait_for_everyone()
    return str(folder)


def checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint folders of a run in ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_FOLDER
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.fullmatch(p.name)) and (p / STATE_FILE).exists()
    ]
    return [path for _, path in sorted(found)]


def load_newest(accelerator: Accelerator, output_dir: str, recipe: str) -> RunState | None:
    """Restore the newest checkpoint of ``output_dir`` into the prepared objects; None when there is none."""
    found = checkpoints(output_dir)
    if not found:
        return None
    state = RunState(**json.loads((found[-1] / STATE_FILE).read_text()))
    if state.recipe != recipe:
        raise TrainError(
            f"The checkpoint {found[-1]} was written by recipe {state.recipe!r}, not {recipe!r}; resume with "
            f"recipe={state.recipe!r} or choose another output_dir."
        )
    accelerator.load_state(str(found[-1]))
    return state


def _save_model(accelerator: Accelerator, model: nn.Module, folder: Path) -> None:
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, PeftModel):
        save_adapters(unwrapped, folder, state_dict=state_dict, is_main_process=accelerator.is_main_process)
    else:
        unwrapped.save_pretrained(
            folder,
            state_dict=state_dict,
            save_function=accelerator.save,
            is_main_process=accelerator.is_main_process,
        )
