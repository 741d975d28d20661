"""Recovery fine-tuning of patched models: LoRA (LongLoRA-style), attention transfer then LoRA, or full.

    from hf_efficient_attn import patch_model
    from hf_efficient_attn.train import TrainConfig, train

    model = patch_model(model, "linear")
    result = train(model, samples, TrainConfig(recipe="transfer", steps=500))

Runs under ``accelerate launch`` on one CPU, one GPU or several GPUs without code changes. Needs the
``train`` extra (accelerate, peft).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC_NAMES: dict[str, str] = {
    "RECIPES": "config",
    "TrainConfig": "config",
    "TrainError": "config",
    "TrainResult": "loop",
    "attention_transfer": "transfer",
    "load_adapters": "adapters",
    "prepare_model": "recipes",
    "save_adapters": "adapters",
    "train": "loop",
}
"""Each public name and its module, imported on first use: the ``recover`` command builds its parser
from `config` and `arguments` without importing torch, accelerate or PEFT."""

__all__ = ["RECIPES", "TrainConfig", "TrainError", "TrainResult", "attention_transfer", "load_adapters", "prepare_model",
           "save_adapters", "train"]

if TYPE_CHECKING:
    from .adapters import load_adapters, save_adapters
    from .config import RECIPES, TrainConfig, TrainError
    from .loop import TrainResult, train
    from .recipes import prepare_model
    from .transfer import attention_transfer


def __getattr__(name: str):
    module = _PUBLIC_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
