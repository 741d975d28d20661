"""Attention transfer (LoLCATs, Hedgehog): teach a variant to reproduce its layer's exact attention.

While `matching_exact_attention` is active, every variant module attached by `patch_model` also
computes exact softmax attention on the same query, key, value and `AttentionContext` (so the same
causality, padding and grouped heads), records how far its own output is from that target, and
hands the *target* to the rest of the layer. Later layers therefore see the exact model's
activations, as in LoLCATs, and one forward pass trains every layer at once. The loss of a layer is
a normalized squared error, ``‖output − target‖² / ‖target‖²`` (float32), so that layers whose
attention outputs differ in scale weigh the same; the loss of a step is its mean over layers.

`attention_transfer` trains only the variants' parameters this way; every other parameter stays
frozen and unchanged, and the model runs in eval mode (no dropout) during transfer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn
from tqdm.auto import tqdm

from ..api import patched_variants
from ..masked import masked_attention
from .config import TrainConfig, TrainError
from .recipes import require_variant_parameters
from .runtime import accelerator_for


@contextlib.contextmanager
def matching_exact_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, variant outputs are replaced by exact attention; yields the per-call losses."""
    losses: list[torch.Tensor] = []

    def record_and_substitute(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        query, key, value, context = args
        with torch.no_grad():
            target = masked_attention(query, key, value, context)
        losses.append(normalized_squared_error(output, target))
        return target.to(output.dtype)

    handles = [variant.register_forward_hook(record_and_substitute) for variant in patched_variants(model)]
    try:
        yield losses
    finally:
        for handle in handles:
            handle.remove()


def attention_transfer(
    model: nn.Module,
    batches: Iterable[dict],
    config: TrainConfig,
    accelerator: Accelerator | None = None,
) -> list[float]:
    """Stage 1 of the transfer recipe (LoLCATs / Hedgehog): train only the variant's own parameters so each patched
    layer's attention output matches the exact softmax attention of the same (frozen) layer on the same q/k/v;
    returns the per-step matching loss.

    Runs ``config.transfer_steps`` AdamW steps at ``config.transfer_learning_rate``, one batch each,
    cycling over ``batches`` (a re-iterable such as a DataLoader) when it runs out. The model is moved
    to the accelerator's device; with several processes the variants' gradients are averaged across
    them. Every other parameter keeps its value and its ``requires_grad`` flag.
    """
    parameters = require_variant_parameters(model)
    accelerator = accelerator_for(config, accelerator)
    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    was_training = model.training
    model.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    model.to(accelerator.device).eval()
    optimizer = torch.optim.AdamW(parameters, lr=config.transfer_learning_rate, weight_decay=0.0)
    losses: list[float] = []
    bar = tqdm(
        total=config.transfer_steps,
        desc="attention transfer",
        disable=not (config.progress and accelerator.is_main_process),
    )
    try:
        for batch in _cycle(batches, config.transfer_steps):
            with matching_exact_attention(model) as layer_losses, accelerator.autocast():
                model(**send_to_device(batch, accelerator.device))
            loss = torch.stack(layer_losses).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if accelerator.num_processes > 1:
                for parameter in parameters:
                    parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")
            optimizer.step()
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    finally:
        bar.close()
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
        model.train(was_training)
    return losses


def normalized_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖output − target‖² / ‖target‖²`` in float32 (0 for a zero target matched exactly)."""
    output, target = output.float(), target.float()
    return (output - target).square().sum() / target.square().sum().clamp_min(torch.finfo(torch.float32).tiny)


def _cycle(batches: Iterable[dict], count: int) -> Iterator[dict]:
    """``count`` batches from ``batches``, starting it again (next epoch) when it runs out."""
    produced, epoch = 0, 0
    while produced < count:
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        empty = True
        for batch in batches:
            empty = False
            yield batch
            produced += 1
            if produced == count:
                return
        if empty:
            raise TrainError(
                f"attention_transfer ran out of batches after {produced} of {count} steps; pass a re-iterable "
                "(a DataLoader or a list of batches) or fewer transfer_steps."
            )
        epoch += 1
