"""Recovery fine-tuning of patched models: LoRA (LongLoRA-style), attention transfer then LoRA, or full.

    from hf_efficient_attn import patch_model
    from hf_efficient_attn.train import TrainConfig, train

    model = patch_model(model, "linear")
    result = train(model, samples, TrainConfig(recipe="transfer", steps=500))

Runs under ``accelerate launch`` on one CPU, one GPU or several GPUs without code changes. Needs the
``train`` extra (accelerate, peft).
"""

from .adapters import load_adapters, save_adapters
from .config import RECIPES, TrainConfig, TrainError
from .loop import TrainResult, train
from .recipes import prepare_model
from .transfer import attention_transfer

__all__ = [
    "RECIPES",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "attention_transfer",
    "load_adapters",
    "prepare_model",
    "save_adapters",
    "train",
]
