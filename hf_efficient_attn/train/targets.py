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
from ..variants import AttentionVariant
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


def trained_in_full(model: nn.Module, *, norms: bool, embeddings: bool) -> list[str]:
    """Full names of the modules the LoRA recipes train whole, for PEFT's ``modules_to_save``: the variants
    that have parameters, and the normalization layers and embeddings when ``norms``/``embeddings`` say so.

    A module inside another listed one is left out: PEFT wraps the outer one, and its copy holds it.
    """
    chosen = variant_modules(model)
    chosen += norm_modules(model) if norms else []
    chosen += embedding_modules(model) if embeddings else []
    chosen = list(dict.fromkeys(chosen))
    return [name for name in chosen if not any(name.startswith(outer + ".") for outer in chosen)]


def variant_modules(model: nn.Module) -> list[str]:
    """Full names of the variant modules attached by `patch_model` that have parameters of their own."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, AttentionVariant) and next(module.parameters(), None) is not None
    ]


def norm_modules(model: nn.Module) -> list[str]:
    """Full names of the normalization layers that have parameters (LayerNorm, RMSNorm and kin)."""
    return [
        name
        for name, module in model.named_modules()
        if (isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm"))
        and next(module.parameters(recurse=False), None) is not None
    ]


def embedding_modules(model: nn.Module) -> list[str]:
    """Full names of the token, positional and patch embeddings: every ``nn.Embedding`` and every module
    transformers names ``embed*`` (ViT's ``embeddings``, which holds the CLS token and positions)."""
    return [
        name
        for name, module in model.named_modules()
        if name
        and (isinstance(module, nn.Embedding) or name.rpartition(".")[2].startswith("embed"))
        and next(module.parameters(), None) is not None
    ]


def ties_output_to_input_embedding(model: nn.Module) -> bool:
    """Whether the model's output head uses its input embedding's weight (Whisper's ``proj_out``, Llamas
    with ``tie_word_embeddings``)."""
    weight = getattr(model.get_output_embeddings(), "weight", None)
    return weight is not None and weight is getattr(model.get_input_embeddings(), "weight", None)


def _sites(model: nn.Module):
    try:
        return adapter_for(model).sites(model)
    except UnsupportedModelError as error:
        raise TrainError(
            f"LoRA recipes need to know where attention is: {error} Use recipe='full' instead."
        ) from None


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}
