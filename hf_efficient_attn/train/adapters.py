"""Save a LoRA-trained model as an adapter, and load it back onto a freshly patched model.

PEFT's adapter folder holds the LoRA weights. The parameters the LoRA recipes train in full (norms,
embeddings, the variant's own parameters) are not LoRA weights, so they go next to it in
`FULL_WEIGHTS_FILE`, under their names in the unwrapped model. Loading patches nothing: the caller
patches a fresh model the same way first, then `load_adapters` restores both parts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from .config import TrainError

FULL_WEIGHTS_FILE = "trained_weights.safetensors"


def save_adapters(
    model: PeftModel,
    directory: str | os.PathLike,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
) -> None:
    """Write ``model``'s LoRA adapter and its fully trained non-LoRA parameters to ``directory``.

    ``state_dict`` is the PeftModel's full state dict when the live one is sharded (FSDP: pass
    ``accelerator.get_state_dict(model)``); only the main process writes.
    """
    if not isinstance(model, PeftModel):
        raise TrainError(
            f"save_adapters needs a PeftModel (recipes 'lora'/'transfer'), got {type(model).__name__}."
        )
    prefix = "base_model.model."
    trained = [name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name]
    source = state_dict if state_dict is not None else dict(model.named_parameters())
    tensors = {name.removeprefix(prefix): source[name].detach().cpu().contiguous() for name in trained}
    if not is_main_process:
        return
    model.save_pretrained(directory, state_dict=state_dict)
    save_file(tensors, str(Path(directory) / FULL_WEIGHTS_FILE))


def load_adapters(model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False) -> PeftModel:
    """Wrap ``model`` (patched like the trained one) with the adapter in ``directory`` and its full weights."""
    path = Path(directory)
    if not (path / "adapter_config.json").exists():
        raise TrainError(
            f"No adapter in {path}: adapter_config.json is missing; pass a folder saved by save_adapters."
        )
    full_weights = load_file(str(path / FULL_WEIGHTS_FILE)) if (path / FULL_WEIGHTS_FILE).exists() else {}
    own = dict(model.named_parameters())
    missing = sorted(set(full_weights) - set(own))
    if missing:
        raise TrainError(
            f"The adapter in {path} has weights for {', '.join(missing[:3])}, which this model lacks; patch it "
            "with the same variant, layers and options as the trained one before loading."
        )
    with torch.no_grad():
        for name, tensor in full_weights.items():
            own[name].copy_(tensor)
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)
