"""Scoring a model under attention configurations other than the one it trained with (``evaluate_as``).

LongLoRA trains with shifted sparse attention and scores the result with full attention; more
generally, a model fine-tuned under one variant can be scored under another. An `AttentionConfig` is
a variant name with its `patch_model` keywords, or `UNPATCHED`: the model's own attention, the patch
removed. `attention_configs` checks a list of them before any model is loaded, with errors that say
what to pass; `score_as` scores a model under each, removing and re-applying the patch in between.

A LoRA fine-tune is a `peft.PeftModel`. `unpatch_model` sees through it, but `patch_model` needs the
transformers model inside (`get_base_model()`), which is where the adapters sit, in the attention
projections: the adapters and the trained norms and embeddings stay in place whatever attention runs.
A variant with its own parameters (``linear``, ``lowrank``) keeps its trained state only in the
configuration the model was trained with; under any other it starts from its initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import TrainError

UNPATCHED = "unpatched"
"""The configuration name that means the model's own attention (no patch)."""


@dataclass
class AttentionConfig:
    """One attention configuration: ``variant`` (a registered name, or `UNPATCHED`) and its `patch_model` keywords."""

    variant: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``"sliding (window=1024, sink_tokens=4)"``, ``"full"``, ``"unpatched"``."""
        return attention_label(self.variant, self.options)

    def same_as(self, other: AttentionConfig) -> bool:
        """Whether both patch the same way (options compared after the variant's defaults are filled in)."""
        return _normalized(self) == _normalized(other)


@dataclass
class AttentionScore:
    """A recovery run's scores under one `AttentionConfig`: the original weights (``zero_shot``) and the
    fine-tuned ones (``fine_tuned``: LoRA adapters, trained norms and embeddings kept)."""

    variant: str
    options: dict[str, Any]
    zero_shot: float
    fine_tuned: float

    @property
    def label(self) -> str:
        return attention_label(self.variant, self.options)


def attention_label(variant: str, options: dict[str, Any]) -> str:
    """A variant and its options as the reports show them: ``"sliding (window=256)"``, or the bare name."""
    shown = ", ".join(f"{key}={value}" for key, value in options.items())
    return f"{variant} ({shown})" if shown else variant


def option_names(variant: str) -> set[str]:
    """The `patch_model` keywords ``variant`` takes: its options class's fields, ``layers`` and ``targets``."""
    from dataclasses import fields

    from ..eval.cli import PATCH_ARGUMENTS
    from ..variants import VARIANTS

    return {option.name for option in fields(VARIANTS[variant].options_class)} | set(PATCH_ARGUMENTS)


def attention_configs(evaluate_as: Iterable[tuple[str, dict[str, Any]] | str]) -> list[AttentionConfig]:
    """``evaluate_as`` checked: ``(variant, options)`` pairs (a bare name means no options), or ``"unpatched"``.

    Raises `TrainError` naming the entry, what is wrong with it and what to pass. What only a model
    can tell (``targets`` it lacks, ``layers`` out of range) is checked when `score_as` patches it.
    """
    from ..variants import VARIANTS

    configs: list[AttentionConfig] = []
    for entry in evaluate_as:
        config = _config(entry)
        name, options = config.variant, config.options
        if name == UNPATCHED:
            if options:
                raise TrainError(f"evaluate_as {UNPATCHED!r} is the model's own attention and takes no options, got "
                                 f"{options}; drop them, or name the variant they belong to.")
        elif name not in VARIANTS:
            raise TrainError(f"evaluate_as names {name!r}, which is not a variant; choose from {', '.join(sorted(VARIANTS))}, "
                             f"or {UNPATCHED!r} for the model's own attention.")
        else:
            unknown = sorted(set(options) - option_names(name))
            if unknown:
                raise TrainError(f"evaluate_as {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                                 f"{', '.join(sorted(option_names(name)))}.")
            try:
                _normalized(config)
            except (TypeError, ValueError) as error:
                raise TrainError(f"evaluate_as {config.label}: {error}") from error
        if any(config.same_as(earlier) for earlier in configs):
            raise TrainError(f"evaluate_as lists {config.label} twice; list each configuration once.")
        configs.append(config)
    return configs


def _config(entry: Any) -> AttentionConfig:
    """One ``evaluate_as`` entry as an `AttentionConfig`, or `TrainError` showing what an entry looks like."""
    if isinstance(entry, str):
        return AttentionConfig(entry)
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict):
        return AttentionConfig(entry[0], dict(entry[1]))
    raise TrainError(f"evaluate_as entries are (variant, options) pairs such as ('sliding', {{'window': 1024}}), "
                     f"or {UNPATCHED!r}; got {entry!r}.")


def switch_attention(model: nn.Module, config: AttentionConfig, seed: int) -> None:
    """Remove ``model``'s patch, if any, then patch it as ``config`` says after ``torch.manual_seed(seed)``
    (so variants with random state get the same on every process); `UNPATCHED` leaves it unpatched."""
    import torch
    from peft import PeftModel

    from ..api import carries_patch, patch_model, unpatch_model

    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    if carries_patch(inner):
        unpatch_model(inner)
    if config.variant != UNPATCHED:
        torch.manual_seed(seed)
        patch_model(inner, config.variant, **config.options)


def score_as(model: nn.Module, configs: list[AttentionConfig], metric: Callable[[nn.Module], float], *,
             current: AttentionConfig, seed: int, current_score: float | None = None) -> list[float]:
    """``metric(model)`` under each of ``configs``, in their order.

    ``model`` (a transformers model, or a PeftModel around one) runs ``current`` now. Configurations
    the same as ``current`` are scored first, on the model as it is (a trained variant keeps its
    state), or take ``current_score`` where it is given; for each other one `switch_attention` moves
    the model to it. The model is left in the last configuration scored. A patch that does not fit
    the model (a target it lacks, a layer out of range) raises `TrainError` naming the configuration.
    """
    scores: dict[int, float] = {}
    order = sorted(range(len(configs)), key=lambda index: not configs[index].same_as(current))
    for index in order:
        config = configs[index]
        if config.same_as(current) and current_score is not None:
            scores[index] = current_score
            continue
        if not config.same_as(current):
            try:
                switch_attention(model, config, seed)
            except (TypeError, ValueError) as error:
                raise TrainError(f"evaluate_as {config.label} does not fit this model: {error}") from error
            current, current_score = config, None
        scores[index] = metric(model)
    return [scores[index] for index in range(len(configs))]


def _normalized(config: AttentionConfig) -> str:
    """``config`` with the variant's defaults filled in and checked (`VariantError` for a bad value), as text."""
    from ..eval.cli import PATCH_ARGUMENTS
    from ..variants import VARIANTS

    if config.variant == UNPATCHED:
        return UNPATCHED
    own = {key: value for key, value in config.options.items() if key not in PATCH_ARGUMENTS}
    resolved = VARIANTS[config.variant].options_class(**own)
    resolved.validate()
    keywords = {key: config.options.get(key) for key in PATCH_ARGUMENTS}
    return json.dumps([config.variant, resolved.to_dict(), keywords], sort_keys=True, default=str)
