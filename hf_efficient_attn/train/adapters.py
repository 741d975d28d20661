"""Save a LoRA-trained model as a PEFT adapter, and load it back onto a freshly patched model.

The folder is PEFT's own: ``adapter_config.json`` and ``adapter_model.safetensors`` hold the LoRA
weights and, through ``modules_to_save`` (`recipes`), every module the recipe trained in full (norms,
embeddings, the variant's own parameters). The adapter holds weights, not the patch, so the model it
loads onto must be patched the same way first; `PATCH_RECORD_FILE` beside PEFT's files records that
patch (`patch_model`'s record in the model config), for the user to read and for `load_adapters` to
check. Reloading is two lines, with or without this library's helper::

    model = patch_model(AutoModelForCausalLM.from_pretrained(base), "linear")  # as the recipe's model was
    model = PeftModel.from_pretrained(model, folder)  # or load_adapters(model, folder)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from torch import nn

from ..api import CONFIG_RECORD
from ..interface import VARIANT_ATTRIBUTE
from .config import TrainError

PATCH_RECORD_FILE = f"{CONFIG_RECORD}.json"
"""The trained model's patch (variant, options, targets, layers), written next to the adapter."""


def save_adapters(
    model: PeftModel,
    directory: str | os.PathLike,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
) -> None:
    """Write ``model``'s adapter (LoRA weights and the modules trained in full) to ``directory`` with
    PEFT's ``save_pretrained``, and the model's patch, if any, to `PATCH_RECORD_FILE`.

    ``state_dict`` is the PeftModel's full state dict when the live one is sharded (FSDP: pass
    ``accelerator.get_state_dict(model)``); only the main process writes.
    """
    if not isinstance(model, PeftModel):
        raise TrainError(
            f"save_adapters needs a PeftModel (recipes 'lora'/'transfer'), got {type(model).__name__}."
        )
    if not is_main_process:
        return
    model.save_pretrained(directory, state_dict=state_dict)
    record = getattr(model.get_base_model().config, CONFIG_RECORD, None)
    if record:
        (Path(directory) / PATCH_RECORD_FILE).write_text(json.dumps(_patch(record), indent=1))


def load_adapters(model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False) -> PeftModel:
    """``PeftModel.from_pretrained(model, directory)``, after checking that ``model`` can take the adapter.

    An adapter that holds a variant's trained weights needs ``model`` patched as the trained one was
    (`PATCH_RECORD_FILE`); `TrainError` says how otherwise, and ``model`` is left unchanged. One without
    (a variant that has no parameters) loads onto the model patched any way, or unpatched, to score the
    fine-tuned weights under other attention.
    """
    path = Path(directory)
    if not (path / "adapter_config.json").exists():
        raise TrainError(
            f"No adapter in {path}: adapter_config.json is missing; pass a folder saved by save_adapters."
        )
    trained_variants = [
        name
        for name in PeftConfig.from_pretrained(str(path)).modules_to_save or []
        if name.rpartition(".")[2] == VARIANT_ATTRIBUTE
    ]
    if trained_variants and (path / PATCH_RECORD_FILE).exists():
        _check_patch(model, path, json.loads((path / PATCH_RECORD_FILE).read_text()))
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def _check_patch(model: nn.Module, path: Path, saved: dict[str, Any]) -> None:
    """`TrainError` unless ``model`` is patched as ``saved`` (a `PATCH_RECORD_FILE`) records."""
    record = getattr(getattr(model, "config", None), CONFIG_RECORD, None)
    current = _patch(record) if record else None
    if current == saved:
        return
    options = "".join(f", {key}={value!r}" for key, value in saved["options"].items())
    call = f"patch_model(model, {saved['variant']!r}, layers={saved['layers']}, targets={saved['targets']}{options})"
    found = f"patched as {current}" if current else "not patched"
    raise TrainError(
        f"The adapter in {path} holds trained weights of the {saved['variant']!r} variant, and this model is "
        f"{found}; patch it with the same variant, layers and options as the trained one before loading: {call}."
    )


def _patch(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a patch record that decides which variant weights a model holds, as JSON gives it back."""
    return json.loads(json.dumps({key: record[key] for key in ("variant", "options", "targets", "layers")}))
