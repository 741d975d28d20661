"""A model switched to a row for the length of a block: its attention, training mode, float32 weights,
and the fused-path fallbacks it reported."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from benchmarks.whole_model.family import Family
from benchmarks.whole_model.rows import ConfigSpec, variant_options
from hf_efficient_attn import FusedPathFallbackWarning, patch_model, unpatch_model


@contextlib.contextmanager
def configured(family: Family, model: nn.Module, spec: ConfigSpec) -> Iterator[nn.Module]:
    """``model`` switched to row ``spec`` (an attention implementation, a patch or the Mistral twin)."""
    target = family.model_for(spec, model)
    if spec.variant is None:
        target.set_attn_implementation(spec.attn)
        try:
            yield target
        finally:
            target.set_attn_implementation("sdpa")
        return
    patch_model(target, spec.variant, **variant_options(spec.name, family))
    try:
        yield target
    finally:
        unpatch_model(target)


@contextlib.contextmanager
def training(model: nn.Module, checkpointing: bool) -> Iterator[None]:
    """``model`` in training mode (with gradient checkpointing when asked), back in eval, gradients dropped."""
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.zero_grad(set_to_none=True)
        model.eval()


@contextlib.contextmanager
def parameters_as(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run ``model`` with its parameters in ``dtype``; the original tensors (and their sharing) come back after."""
    saved = [(parameter, parameter.data) for parameter in model.parameters()]
    for parameter, data in saved:
        parameter.data = data.to(dtype)
    try:
        yield
    finally:
        for parameter, data in saved:
            parameter.data = data


def cast_inputs(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The floating-point inputs in ``dtype`` (token ids stay as they are)."""
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}


@contextlib.contextmanager
def fallbacks_recorded(into: set[str]) -> Iterator[None]:
    """Collect this library's fused-path fallback warnings raised inside the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FusedPathFallbackWarning)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, FusedPathFallbackWarning):
                    reason = re.search(r"exactly \((.*)\); using", str(warning.message))
                    into.add(reason.group(1) if reason else str(warning.message))
