"""What every variant is made of: an options dataclass, a per-layer module, and where it may run.

A variant is registered once (`register_variant`) as a name, an options dataclass and an
`AttentionVariant` subclass. `patch_model` builds one instance of that subclass per patched attention
module and attaches it there as a submodule, so the variant's own parameters (Linformer projections,
feature maps) train, save and load like any other weight. At call time the instance receives
``query``, ``key``, ``value`` and the call's `AttentionContext`, and returns the attention output.
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..context import AttentionContext
from ..errors import VariantError


class Role(str, enum.Enum):
    """Where an attention module sits, which decides the patterns that make sense there."""

    CAUSAL = "causal self-attention"
    BIDIRECTIONAL = "bidirectional self-attention"
    CROSS = "cross-attention"


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one attention module, gathered by the model adapter at patch time.

    Attributes:
        role: causal self-, bidirectional self- or cross-attention.
        target: the adapter's name for the stack the layer is in ("decoder", "encoder", "cross").
        layer_index: index of the layer within its stack.
        num_heads / num_kv_heads / head_dim: the attention shape.
        sequence_length: fixed key length where the architecture has one (ViT patches + CLS, Whisper's
            1500 encoder frames), else None.
        max_length: the most positions a call of a layer without a fixed length can hold (the model's
            position embeddings), where the adapter knows it; else None.
        grid: ``(rows, cols)`` of the patch grid for vision models, else None.
        prefix_tokens: tokens before the grid (ViT's CLS), always global in a 2-D neighbourhood.
        native_window: the model's own sliding window on this layer (what transformers passes its attention
            as ``sliding_window``), where the adapter knows it; else None.
    """

    role: Role
    target: str
    layer_index: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sequence_length: int | None = None
    grid: tuple[int, int] | None = None
    max_length: int | None = None
    prefix_tokens: int = 0
    native_window: int | None = None


class ExactPatternWarning(UserWarning):
    """Options under which a layer of fixed length gets exact attention: the pattern leaves out no pair
    there, so the variant changes nothing but its cost (warned at `patch_model`)."""


def warn_exact_pattern(layer: LayerInfo, option: str, value: int, what: str, advice: str) -> None:
    """Warn (`ExactPatternWarning`) where ``option=value`` covers every token a call of ``layer`` can hold
    (its fixed length, or the most positions the model takes); nothing where neither is known."""
    if layer.sequence_length is not None:
        tokens = f"all {layer.sequence_length} tokens of this model's {layer.target} layers"
    elif layer.max_length is not None:
        tokens = f"all {layer.max_length} positions this model's {layer.target} layers take"
    else:
        return
    if value < (layer.sequence_length or layer.max_length):
        return
    warnings.warn(f"{option}={value} {what} {tokens}, so attention there is exact and the pattern has no effect. "
                  f"{advice}", ExactPatternWarning, stacklevel=4)


@dataclass(frozen=True)
class VariantOptions:
    """Base of every variant's options; subclasses are frozen dataclasses with documented defaults."""

    def validate(self) -> None:
        """Raise `VariantError` for values that can never work, whatever the model."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, recorded in the model config so a saved model can be re-patched."""
        return dataclasses.asdict(self)


_PLAN_GROUPS: dict[tuple, int] = {}
"""Small ids for the signatures of variants that share plans (`AttentionVariant.share_plans`)."""


class AttentionVariant(nn.Module):
    """One patched attention module's variant: its options, its state and its forward.

    Subclasses set `name`, `options_class`, the roles they support, and implement `forward`.

    Dtypes: parameters are weights like the model's and follow its dtype (`patch_model` builds them in
    the model's dtype, ``model.to(torch.bfloat16)`` casts them). Buffers named in `float32_buffers` are
    constants that the variant computes with in float32, such as random features, which rounding to
    bf16 would distort: dtype casts leave them in float32, device moves still apply.
    """

    name: ClassVar[str]
    options_class: ClassVar[type[VariantOptions]]
    roles: ClassVar[frozenset[Role]] = frozenset(Role)
    float32_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: VariantOptions, layer: LayerInfo):
        super().__init__()
        self.options = options
        self.layer = layer
        self.plan_group: int | None = None  # equal for variants whose calls plan alike (`share_plans`)

    def share_plans(self, *facts: Any) -> None:
        """Declare that `plan` depends on the options, the layer (apart from its index) and ``facts`` only,
        so a forward's layers with equal ones share a call's plan (`replay`). Call from ``__init__``."""
        signature = (type(self), repr(self.options), dataclasses.replace(self.layer, layer_index=0), *facts)
        self.plan_group = _PLAN_GROUPS.setdefault(signature, len(_PLAN_GROUPS))

    def plan(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The call as a function of ``(query, key, value)`` alone (which `forward` runs), so that the later
        layers of a forward with the same `plan_group`, shapes and context run it without planning again
        (`replay`); None for variants that compute in `forward` itself (the default)."""
        return None

    @classmethod
    def check_layer(cls, options: VariantOptions, layer: LayerInfo) -> None:
        """Raise `VariantError` when these options cannot run on this layer (checked before patching)."""
        if layer.role not in cls.roles:
            able = variants_for_role(layer.role)
            raise VariantError(
                f"Variant '{cls.name}' cannot run on {layer.role.value} ({layer.target} layer "
                f"{layer.layer_index}). Variants that can: {', '.join(able)}. Or leave this layer out with "
                "`targets=`/`layers=`."
            )

    def cache_window(self) -> int | None:
        """The window of the bounded KV cache this variant keeps (`cache.SinkWindowCacheLayer`), or None to
        keep the model's own cache."""
        return None

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        """Attention output ``[batch, q_heads, q_len, head_dim]``: the call's `plan`, for variants that
        have one; the others override this."""
        plan = self.plan(query, key, value, context)
        if plan is None:
            raise NotImplementedError(f"Variant '{self.name}' has neither a plan nor a forward of its own.")
        return plan(query, key, value)

    def remake_derived_buffers(self) -> None:
        """Recompute the buffers this variant derives from its options and layer (registered non-persistent,
        so checkpoints do not hold them), in place, on each buffer's device.

        transformers' loader builds a model on the meta device and re-creates its non-persistent buffers
        uninitialised, leaving their values to the model's own init; a variant attached before the weights
        load (`api.restore_recorded_patch`) gets its values back here."""
        fresh = type(self)(self.options, self.layer)
        persistent = set(self.state_dict())
        with torch.no_grad():
            for name, value in fresh.named_buffers():
                if name not in persistent:
                    self.get_buffer(name).copy_(value)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> AttentionVariant:
        """`nn.Module._apply` (behind ``.to()``, ``.half()``...), leaving `float32_buffers` in float32."""
        kept = {name: self._buffers[name] for name in self.float32_buffers}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            applied = self._buffers[name]
            if applied.dtype != original.dtype:
                self._buffers[name] = original.to(device=applied.device)
        return self

    def extra_repr(self) -> str:
        return f"{self.name}: {self.options}"


@dataclass(frozen=True)
class VariantSpec:
    """A registered variant: its name, options dataclass, module class and a one-line summary."""

    name: str
    options_class: type[VariantOptions]
    variant_class: type[AttentionVariant]
    summary: str


VARIANTS: dict[str, VariantSpec] = {}


def register_variant(summary: str) -> Callable[[type[AttentionVariant]], type[AttentionVariant]]:
    """Class decorator adding an `AttentionVariant` subclass to the registry under its `name`."""

    def register(variant_class: type[AttentionVariant]) -> type[AttentionVariant]:
        VARIANTS[variant_class.name] = VariantSpec(
            name=variant_class.name,
            options_class=variant_class.options_class,
            variant_class=variant_class,
            summary=summary,
        )
        return variant_class

    return register


def variants_for_role(role: Role, excluding: Sequence[str] = ()) -> list[str]:
    """Names of the registered variants that run on attention of ``role``, but those ``excluding`` (for
    the messages that say which variants can run where one cannot)."""
    return sorted(name for name, spec in VARIANTS.items() if name not in excluding and role in spec.variant_class.roles)


def positive_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise `VariantError` unless ``value`` is an int >= ``minimum`` (shared option check)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VariantError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
