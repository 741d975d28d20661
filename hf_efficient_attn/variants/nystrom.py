"""`nystrom`: Nyströmformer (Xiong et al., 2021), softmax attention through a Nyström approximation.

With ``m = num_landmarks`` landmarks ``Q̃, K̃`` (means of ``m`` contiguous segments of the real,
non-padded queries and keys of each row),

    out = softmax(Q K̃ᵀ s) · pinv(softmax(Q̃ K̃ᵀ s)) · softmax(Q̃ Kᵀ s) · V          (s = scaling)

where ``pinv`` is the Moore-Penrose pseudo-inverse computed by ``pinv_iterations`` steps of the
Newton-Schulz-type iteration of the paper (``Z ← ¼ Z (13I - AZ(15I - AZ(7I - AZ))))``, started from
``Aᵀ / (‖A‖₁‖A‖∞)``). Cost O(N·m). It is an approximation, for bidirectional and cross-attention only
(causal layers are refused: segment means mix future tokens into the past).

Few keys: when a call has no more keys than landmarks, every key would be its own landmark and the
approximation has nothing to save, so exact softmax attention is computed. A padded row with at most
``m`` real tokens (in a longer batch) also gets one landmark per real token, leaving the other
landmarks empty and ignored; it is then exact up to the convergence of the pseudo-inverse iteration.
Attention dropout does not apply (there is no single probability matrix to drop from).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AttentionContext
from ..masked import masked_attention
from .base import (
    AttentionVariant,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    positive_int,
    register_variant,
)


@dataclass(frozen=True)
class NystromOptions(VariantOptions):
    """Options of `nystrom`.

    Attributes:
        num_landmarks: segment-mean landmarks per row (``m``). Default 64.
        pinv_iterations: Newton-Schulz steps of the pseudo-inverse. Default 6.
    """

    num_landmarks: int = 64
    pinv_iterations: int = 6

    def validate(self) -> None:
        positive_int("num_landmarks", self.num_landmarks)
        positive_int("pinv_iterations", self.pinv_iterations)


@register_variant("Nyströmformer: segment-mean landmarks and an iterative pseudo-inverse (bidirectional, cross)")
class NystromAttention(AttentionVariant):
    """Nyström-approximated softmax attention; see the module docstring."""

    name = "nystrom"
    options_class = NystromOptions
    roles = frozenset({Role.BIDIRECTIONAL, Role.CROSS})
    options: NystromOptions

    @classmethod
    def check_layer(cls, options: NystromOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        if layer.sequence_length is not None and options.num_landmarks > layer.sequence_length:
            raise VariantError(
                f"num_landmarks {options.num_landmarks} exceeds the sequence length {layer.sequence_length} of "
                f"{layer.target} layers; choose num_landmarks <= {layer.sequence_length}."
            )

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        if context.dense_mask is not None:
            raise VariantError("'nystrom' cannot apply a 4-D attention mask; pass a 2-D padding mask instead.")
        landmarks = self.options.num_landmarks
        if key.shape[-2] <= landmarks:
            return masked_attention(query, key, value, context)
        compute_dtype = torch.promote_types(query.dtype, torch.float32)
        batch, q_heads, q_len, head_dim = query.shape
        kv_heads = key.shape[1]
        grouped = query.to(compute_dtype).reshape(batch, kv_heads, q_heads // kv_heads, q_len, head_dim)
        key, value = key.to(compute_dtype), value.to(compute_dtype)

        key_real = context.key_padding
        self_attention = self.layer.role is Role.BIDIRECTIONAL and q_len == key.shape[-2]
        query_real = key_real if self_attention else None
        key_pool, key_present = segment_pooling(key_real, key.shape[-2], landmarks, compute_dtype, key.device)
        query_pool, query_present = segment_pooling(query_real, q_len, landmarks, compute_dtype, key.device)
        key_landmarks = torch.einsum("bmn,bhnd->bhmd", key_pool, key)
        query_landmarks = torch.einsum("bmn,bhgnd->bhgmd", query_pool, grouped)

        scaling = context.scaling
        to_landmarks = _masked_softmax(
            torch.einsum("bhgqd,bhmd->bhgqm", grouped, key_landmarks) * scaling, key_present[:, None, None, None, :]
        )
        between = _masked_softmax(
            torch.einsum("bhgld,bhmd->bhglm", query_landmarks, key_landmarks) * scaling,
            key_present[:, None, None, None, :],
        ) * query_present[:, None, None, :, None].to(compute_dtype)
        key_visible = None if key_real is None else key_real[:, None, None, None, :]
        from_landmarks = _masked_softmax(
            torch.einsum("bhgld,bhkd->bhglk", query_landmarks, key) * scaling, key_visible
        )
        landmark_values = torch.einsum("bhglk,bhkd->bhgld", from_landmarks, value)
        mixed = newton_schulz_pinv(between, self.options.pinv_iterations) @ landmark_values
        output = to_landmarks @ mixed
        return output.reshape(batch, q_heads, q_len, head_dim).to(query.dtype)


def segment_pooling(
    real: torch.Tensor | None, length: int, segments: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment-mean weights ``[b|1, segments, length]`` over the real tokens, and which segments are non-empty.

    The ``L`` real tokens of a row, in order, are cut into ``segments`` contiguous runs: the ``r``-th
    real token goes to segment ``r·segments // L`` (with ``L <= segments``, one token per segment).
    """
    if real is None:
        real = torch.ones(1, length, dtype=torch.bool, device=device)
    rank = real.long().cumsum(-1) - 1
    count = real.long().sum(-1, keepdim=True)
    segment = rank * segments // count.clamp(min=1)
    members = (segment[:, None, :] == torch.arange(segments, device=segment.device)[None, :, None]) & real[:, None, :]
    sizes = members.sum(-1, keepdim=True)
    pool = members.to(dtype) / sizes.clamp(min=1).to(dtype)
    return pool, sizes.squeeze(-1) > 0


def newton_schulz_pinv(matrix: torch.Tensor, iterations: int) -> torch.Tensor:
    """Iterative Moore-Penrose pseudo-inverse of the last two dimensions (Nyströmformer, eq. 16)."""
    scale = matrix.abs().sum(-2).amax(-1) * matrix.abs().sum(-1).amax(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    inverse = matrix.transpose(-1, -2) / scale[..., None, None]
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for _ in range(iterations):
        product = matrix @ inverse
        inverse = 0.25 * inverse @ (13 * identity - product @ (15 * identity - product @ (7 * identity - product)))
    return inverse


def _masked_softmax(scores: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dimension among ``visible`` entries; rows with none give zeros."""
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    maximum = scores.amax(-1, keepdim=True)
    weights = torch.exp(scores - torch.where(torch.isfinite(maximum), maximum, torch.zeros_like(maximum)))
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))
