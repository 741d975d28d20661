"""Which modules and parameters the recipes train, read off the model itself.

Attention projections are the linear layers directly inside each attention module that the model's
adapter lists (Llama ``q_proj/k_proj/v_proj/o_proj``, Whisper ``q_proj/k_proj/v_proj/out_proj``,
ViT's projections under whatever names the installed transformers gives them). MLP projections are
the other linear layers of the same transformer blocks. Nothing is matched by a guessed name except
embeddings, which transformers itself names ``embed*``/``embeddings``.
"""

from __future__ import annotations

from torch import nn

from ..api import patched_variants
from ..interface import VARIANT_ATTRIBUTE
from ..patches import UnsupportedModelError, adapter_for
from .config import TrainError


def attention_projections(model: nn.Module) -> list[str]:
    """Full names of the linear layers of every attention module of ``model`` (all stacks): its own, and
    those of the wrapper that holds its output projection where the model has one (ViT before 5.10)."""
    names = _module_names(model)
    found = []
    for site in _sites(model):
        owner = site.projections_owner
        for child_name, child in owner.named_modules():
            if isinstance(child, nn.Linear) and child_name.count(".") <= 1 and VARIANT_ATTRIBUTE not in child_name:
                found.append(f"{names[id(owner)]}.{child_name}")
    return found


def mlp_projections(model: nn.Module) -> list[str]:
    """Full names of the linear layers of each transformer block that are not attention projections."""
    names = _module_names(model)
    attention = {names[id(site.projections_owner)] for site in _sites(model)}
    blocks = {name.rpartition(".")[0] for name in attention}
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(name.startswith(block + ".") for block in blocks)
        and not any(name.startswith(prefix + ".") for prefix in attention)
    ]


def variant_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The variants' own per-layer parameters (Linformer projections, learned feature maps)."""
    return [parameter for variant in patched_variants(model) for parameter in variant.parameters()]


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the normalization layers (LayerNorm, RMSNorm and kin)."""
    return [
        parameter
        for module in model.modules()
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm))
        or type(module).__name__.endswith("Norm")
        for parameter in module.parameters(recurse=False)
    ]


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Token, positional and patch embeddings (every ``nn.Embedding`` and anything named ``embed*``)."""
    found = [p for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()]
    found += [
        p for name, p in model.named_parameters() if any(part.startswith("embed") for part in name.split("."))
    ]
    return list({id(parameter): parameter for parameter in found}.values())


def is_variant_parameter(name: str) -> bool:
    """Whether a parameter name belongs to a variant module attached by `patch_model`."""
    return f".{VARIANT_ATTRIBUTE}." in f".{name}"


def _sites(model: nn.Module):
    try:
        return adapter_for(model).sites(model)
    except UnsupportedModelError as error:
        raise TrainError(
            f"LoRA recipes need to know where attention is: {error} Use recipe='full' instead."
        ) from None


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}
