"""Public entry points: patch a model in place, undo it, list variants, reload a saved patched model.

`patch_model` checks everything first (variant, options, architecture, targets, layers, each layer's
role) and only then changes the model, so a call that raises leaves the model as it was. The patch is
recorded in ``model.config.efficient_attention``, which ``save_pretrained`` writes with the config. When
transformers loads such a checkpoint (``AutoModel*.from_pretrained`` or the model class's own), the
hooks of `model_hooks` call `restore_recorded_patch` before the weights load, so the variant's weights
load like the model's; they also keep ``set_attn_implementation`` from switching a patched model away.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import transformers
from torch import nn

from . import interface
from .cache import BoundedCacheInstaller
from .model_hooks import CONFIG_RECORD
from .patches import AttentionSite, UnsupportedModelError, adapter_for
from .variants import VARIANTS, AttentionVariant, VariantError, VariantOptions

ModelT = TypeVar("ModelT", bound=nn.Module)


class PatchError(ValueError):
    """A patch request that cannot be carried out; the model was left unchanged."""


def list_variants() -> dict[str, str]:
    """Registered variant names with a one-line description of each."""
    return {name: spec.summary for name, spec in sorted(VARIANTS.items())}


def patch_model(
    model: ModelT,
    variant: str | VariantOptions,
    *,
    layers: Iterable[int] | None = None,
    targets: Sequence[str] | str | None = None,
    **options: Any,
) -> ModelT:
    """Switch ``model``'s attention to an efficient variant, in place, and return it.

    Args:
        model: a supported transformers model (`supported_model_types`: Llama-like decoders, Whisper, ViT).
        variant: a name from `list_variants()` (options then come as keyword arguments), or an options
            instance such as ``SlidingOptions(window=1024)``.
        layers: indices of the layers to patch within each target stack (negative indices count from
            the end); the others keep exact attention. Default: all.
        targets: for models with several attention stacks, which to patch: ``"encoder"``,
            ``"decoder"`` (self-attention) and/or ``"cross"``. Default: every self-attention stack on
            which the variant can run; cross-attention stays exact unless named.
        **options: the variant's options (see its options dataclass).

    Raises:
        PatchError / VariantError / UnsupportedModelError: with what was wrong and how to fix it; the
        model is unchanged. A model wrapped by PEFT (a ``PeftModel``, or its ``LoraModel``) is refused:
        patch the plain model before ``get_peft_model`` or ``PeftModel.from_pretrained``, so that the
        adapter finds the variant's modules (to train and save their weights, or to load them).
    """
    _refuse_peft_wrapper(model)
    spec, resolved = _resolve_variant(variant, options)
    adapter = adapter_for(model)
    if patched_variants(model):
        state = ("is already patched" if is_patched(model) else "carries the variant modules of an earlier patch "
                 f"but runs {model.config._attn_implementation!r} attention now")
        raise PatchError(f"This model {state}; call unpatch_model(model) before patching it again.")
    sites = adapter.sites(model)
    if not sites:
        raise UnsupportedModelError(
            f"Found no attention layers in this {type(model).__name__} (model_type="
            f"{model.config.model_type!r}). Pass the whole model (as AutoModel* loads it) or one of its "
            f"stacks the adapter knows, and pick stacks with targets= ({', '.join(adapter.targets)})."
        )
    chosen_targets = _choose_targets(spec.variant_class, resolved, adapter.targets, sites, targets)
    chosen_sites = _choose_layers(sites, chosen_targets, layers)
    for site in chosen_sites:
        spec.variant_class.check_layer(resolved, site.layer)
    modules = [_build_variant(spec.variant_class, resolved, site) for site in chosen_sites]

    interface.register()
    previous = model.config._attn_implementation
    if previous == interface.IMPLEMENTATION_NAME:  # switched to ours without a patch: exact attention
        previous = None
    model.set_attn_implementation(interface.IMPLEMENTATION_NAME)
    bounded: dict[str, list[nn.Module]] = {}
    for site, module in zip(chosen_sites, modules, strict=True):
        site.module.add_module(interface.VARIANT_ATTRIBUTE, module)
        if module.cache_window() is not None:
            bounded.setdefault(site.layer.target, []).append(site.module)
    for stack in bounded.values():
        installer = BoundedCacheInstaller(stack)
        installer.first.register_forward_pre_hook(installer, with_kwargs=True)
    setattr(
        model.config,
        CONFIG_RECORD,
        {
            "variant": spec.name,
            "options": resolved.to_dict(),
            "targets": list(chosen_targets),
            "layers": sorted({site.layer.layer_index for site in chosen_sites}),
            "previous_attn_implementation": previous,
        },
    )
    return model


def unpatch_model(model: ModelT) -> ModelT:
    """Remove a patch: restore the model's previous attention implementation and drop variant state.

    Works on a ``PeftModel`` too; a variant that PEFT trains as a module to save goes with its wrapper.
    """
    if not carries_patch(model):
        raise PatchError("This model is not patched; nothing to undo.")
    record = getattr(model.config, CONFIG_RECORD, None) or {}
    for module in list(model.modules()):
        attached = module._modules.get(interface.VARIANT_ATTRIBUTE)
        if attached is not None and any(isinstance(inner, AttentionVariant) for inner in attached.modules()):
            del module._modules[interface.VARIANT_ATTRIBUTE]
            for hook_id, hook in list(module._forward_pre_hooks.items()):
                if isinstance(hook, BoundedCacheInstaller):
                    del module._forward_pre_hooks[hook_id]
                    module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
    model.set_attn_implementation(record.get("previous_attn_implementation") or "sdpa")
    if hasattr(model.config, CONFIG_RECORD):
        delattr(model.config, CONFIG_RECORD)
    return model


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` currently runs a variant of this library: variant modules are attached and its
    attention implementation is this library's. Neither a model switched to it without a patch
    (``attn_implementation="hf_efficient_attn"``: exact attention) nor a patched model switched away
    (``set_attn_implementation("sdpa")``: transformers' attention) is patched."""
    config = getattr(model, "config", None)
    running = getattr(config, "_attn_implementation", None) == interface.IMPLEMENTATION_NAME
    return running and bool(patched_variants(model))


def carries_patch(model: nn.Module) -> bool:
    """Whether ``model`` holds a patch's state, running or not: variant modules (which `patch_model`
    refuses to patch over) or the config record, running or not (a model whose implementation was set
    behind ``set_attn_implementation``'s guard); `unpatch_model` removes both."""
    return bool(patched_variants(model)) or hasattr(getattr(model, "config", None), CONFIG_RECORD)


def patched_variants(model: nn.Module) -> list[AttentionVariant]:
    """The variant modules attached to ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, AttentionVariant)]


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a saved model with the class its config names (``config.architectures``), as
    ``AutoModel*.from_pretrained`` would: a model saved after `patch_model` comes back patched, with the
    variant's weights (`restore_recorded_patch`), one saved without a patch unpatched. Keyword arguments
    go to the model class's ``from_pretrained`` (``dtype``, ``device_map``, ...)."""
    config = transformers.AutoConfig.from_pretrained(path)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        raise PatchError(f"Cannot tell which model class to load from {path}: config.architectures={config.architectures}.")
    return model_class.from_pretrained(path, **kwargs)


def restore_recorded_patch(model: nn.Module) -> None:
    """Re-apply the patch recorded in ``model.config`` (a checkpoint saved after `patch_model`) to a model
    transformers has built but not yet loaded weights into, so that the variant's weights load with the
    rest. Called by `model_hooks` from transformers' loading; after the load,
    `finish_restored_patch` completes the variants.

    Raises:
        PatchError: the record names a patch this installation cannot apply; the model is unchanged.
    """
    record = getattr(getattr(model, "config", None), CONFIG_RECORD, None)
    if not record or patched_variants(model):
        return
    delattr(model.config, CONFIG_RECORD)
    try:
        patch_model(model, record["variant"], layers=record["layers"], targets=record["targets"], **record["options"])
    except (ValueError, TypeError, KeyError) as error:
        setattr(model.config, CONFIG_RECORD, record)
        raise PatchError(
            f"This checkpoint was saved patched with hf_efficient_attn ({record.get('variant')!r}), which this "
            f"installation cannot restore: {error} Install the release it was saved with, or remove "
            f"{CONFIG_RECORD!r} from its config.json to load it unpatched."
        ) from error


def finish_restored_patch(model: nn.Module) -> None:
    """At the end of transformers' loading (`model_hooks`): recompute the derived buffers of the model's
    variants (those `restore_recorded_patch` attached), which the loader re-creates uninitialised."""
    for variant in patched_variants(model):
        variant.remake_derived_buffers()


def refuse_switch_away(model: nn.Module, attn_implementation: str | dict) -> None:
    """`PatchError` when ``set_attn_implementation(attn_implementation)`` would switch a patched model to
    other attention: the variant would stop running while the model still carries it (and saves its
    record). Called by `model_hooks` before transformers' ``set_attn_implementation``."""
    requested = (attn_implementation if not isinstance(attn_implementation, dict)
                 else attn_implementation.get("", model.config._attn_implementation))
    if requested == interface.IMPLEMENTATION_NAME or not is_patched(model):
        return
    record = getattr(model.config, CONFIG_RECORD, None) or {}
    previous = record.get("previous_attn_implementation") or "sdpa"
    raise PatchError(
        f"This model runs hf_efficient_attn's {record.get('variant')!r} attention; set_attn_implementation"
        f"({requested!r}) would leave the variant unused while the model still carries (and saves) it. Call "
        f"hf_efficient_attn.unpatch_model(model) first: it restores {previous!r} attention, after which any "
        "implementation can be set."
    )


def _refuse_peft_wrapper(model: nn.Module) -> None:
    """`PatchError` for a model wrapped by PEFT: its adapter was set up without the variant's modules.

    Only a model built after PEFT was imported can be one, so PEFT is never imported here.
    """
    peft = sys.modules.get("peft")
    if peft is None or not isinstance(model, (peft.PeftModel, peft.tuners.tuners_utils.BaseTuner)):
        return
    raise PatchError(
        f"patch_model got a {type(model).__name__}, a model wrapped by PEFT. Patch the plain model first and wrap "
        "it after (patch_model(model, ...) before get_peft_model or PeftModel.from_pretrained), so that the "
        "adapter trains, saves and loads the variant's weights. To score a fine-tuned model under other "
        "attention, patch the model inside it: patch_model(peft_model.get_base_model(), ...)."
    )


def _resolve_variant(variant: str | VariantOptions, options: dict[str, Any]):
    if isinstance(variant, VariantOptions):
        if options:
            raise PatchError("Pass options either in the options object or as keyword arguments, not both.")
        matches = [spec for spec in VARIANTS.values() if isinstance(variant, spec.options_class)]
        if not matches:
            raise PatchError(f"{type(variant).__name__} is not the options class of a registered variant.")
        spec, resolved = matches[0], variant
    else:
        spec = VARIANTS.get(variant) if isinstance(variant, str) else None
        if spec is None:
            raise PatchError(f"Unknown variant {variant!r}. Available: {', '.join(sorted(VARIANTS))}.")
        known = {field.name for field in dataclasses.fields(spec.options_class)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PatchError(
                f"Unknown option(s) {', '.join(unknown)} for variant {spec.name!r}. "
                f"Its options: {', '.join(sorted(known)) or '(none)'}."
            )
        resolved = spec.options_class(**options)
    resolved.validate()
    return spec, resolved


def _choose_targets(
    variant_class: type[AttentionVariant],
    options: VariantOptions,
    available: tuple[str, ...],
    sites: list[AttentionSite],
    targets: Sequence[str] | str | None,
) -> tuple[str, ...]:
    if targets is None:
        chosen = tuple(
            target
            for target in available
            if target != "cross"
            and any(site.layer.target == target and site.layer.role in variant_class.roles for site in sites)
        )
        if not chosen:
            roles = sorted({site.layer.role.value for site in sites})
            able = sorted(name for name, spec in VARIANTS.items() if spec.variant_class.roles & {s.layer.role for s in sites})
            raise VariantError(
                f"Variant {variant_class.name!r} cannot run on any attention of this model ({', '.join(roles)}). "
                f"Variants that can: {', '.join(able)}."
            )
        return chosen
    requested = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [target for target in requested if target not in available]
    if unknown or not requested:
        raise PatchError(f"Unknown target(s) {unknown or requested}; this model has: {', '.join(available)}.")
    return tuple(dict.fromkeys(requested))


def _choose_layers(
    sites: list[AttentionSite], targets: tuple[str, ...], layers: Iterable[int] | None
) -> list[AttentionSite]:
    in_targets = [site for site in sites if site.layer.target in targets]
    if layers is None:
        return in_targets
    requested = list(layers)
    chosen: list[AttentionSite] = []
    for target in targets:
        stack = [site for site in in_targets if site.layer.target == target]
        for index in requested:
            if isinstance(index, bool) or not isinstance(index, int) or not -len(stack) <= index < len(stack):
                raise PatchError(
                    f"Layer index {index!r} is out of range for the {target} stack, which has {len(stack)} layers."
                )
        wanted = {index % len(stack) for index in requested}
        chosen.extend(site for site in stack if site.layer.layer_index in wanted)
    if not chosen:
        raise PatchError("`layers=` selected no layer; pass at least one index.")
    return chosen


def _build_variant(
    variant_class: type[AttentionVariant], options: VariantOptions, site: AttentionSite
) -> AttentionVariant:
    """The variant module of one site, cast like a weight of the attention module it joins and in its
    mode (training or evaluation: LongLoRA's shifted groups apply in training only).

    It goes through the same ``.to()`` as ``model.to(...)``: parameters take the model's float dtype,
    buffers the variant keeps in float32 (`AttentionVariant.float32_buffers`) stay float32.
    """
    module = variant_class(options, site.layer)
    module.train(site.module.training)
    reference = next(site.module.parameters(), None)
    if reference is not None:
        module.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
    return module
