"""`performer`: FAVOR+ (Choromanski et al., 2021), an unbiased random-feature estimate of softmax attention.

With ``x = x·√scaling`` for queries and keys and ``M`` orthogonal Gaussian directions ``w_r`` (rows of
blocks of a random orthogonal matrix, each rescaled by the norm of an independent Gaussian vector),
the positive random features

    φ(x)_r = exp(w_r·x - |x|²/2)

give ``E[φ(q)·φ(k)] = exp(q·k·scaling)``, so softmax attention is approximated by feature-map attention
(see `kernelized`): linear in the sequence length, bidirectional or causal through chunked prefix sums.
It is approximate (exact only in expectation over the random directions); error shrinks as
``num_features`` grows. For numerical range each query's features are divided by their largest
value and all keys' by the largest over the (real) keys of a head: both factors cancel between
numerator and normaliser, as does the usual ``1/√M``, which is left out.

The directions are drawn once, from ``seed + layer index``, and stored as a persistent buffer, so a
saved model reloads the same features. The buffer stays float32 in a bf16 or fp16 model (casting the
model leaves it alone, see `AttentionVariant.float32_buffers`): the features are computed in float32
(float64 for float64 inputs) from queries and keys of any dtype, and directions rounded to bf16
(relative error up to 2⁻⁸ each) would move every feature's logit ``w·x`` by far more than the bf16
rounding of the output. Attention dropout does not apply (there is no probability matrix to drop from).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AttentionContext
from .base import AttentionVariant, LayerInfo, VariantOptions, positive_int, register_variant
from .kernelized import kernelized_attention


@dataclass(frozen=True)
class PerformerOptions(VariantOptions):
    """Options of `performer`.

    Attributes:
        num_features: random features per head (``M``). Default 256.
        seed: seed of the random directions (layer ``i`` uses ``seed + i``). Default 0.
    """

    num_features: int = 256
    seed: int = 0

    def validate(self) -> None:
        positive_int("num_features", self.num_features)
        positive_int("seed", self.seed, minimum=0)


@register_variant("FAVOR+ positive orthogonal random features (linear time, approximate)")
class PerformerAttention(AttentionVariant):
    """FAVOR+ attention; see the module docstring."""

    name = "performer"
    options_class = PerformerOptions
    float32_buffers = ("projection",)
    options: PerformerOptions

    def __init__(self, options: PerformerOptions, layer: LayerInfo):
        super().__init__(options, layer)
        generator = torch.Generator().manual_seed(options.seed + max(layer.layer_index, 0))
        self.register_buffer("projection", orthogonal_gaussian(options.num_features, layer.head_dim, generator))

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        compute_dtype = torch.promote_types(query.dtype, torch.float32)
        root = context.scaling**0.5
        query_logits = self._logits(query.to(compute_dtype) * root)
        key_logits = self._logits(key.to(compute_dtype) * root)
        query_features = torch.exp(query_logits - query_logits.amax(-1, keepdim=True).detach())
        key_features = torch.exp(key_logits - _key_maximum(key_logits, context).detach())
        chunk = max(64, query.shape[-1])
        output = kernelized_attention(query_features, key_features, value, context, chunk_size=chunk)
        return output.to(query.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``w_r·x - |x|²/2`` for every direction: ``[..., n, num_features]``."""
        projection = self.projection.to(x.dtype)
        return x @ projection.T - (x * x).sum(-1, keepdim=True) / 2


def orthogonal_gaussian(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``[rows, dim]``: blocks of orthonormal rows, each row scaled to the norm of a Gaussian vector."""
    blocks = []
    for start in range(0, rows, dim):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        orthonormal, _ = torch.linalg.qr(gaussian)
        blocks.append(orthonormal.T[: rows - start])
    norms = torch.randn(rows, dim, generator=generator, dtype=torch.float64).norm(dim=-1, keepdim=True)
    return (torch.cat(blocks) * norms).to(torch.float32)


def _key_maximum(key_logits: torch.Tensor, context: AttentionContext) -> torch.Tensor:
    """Largest logit over the real keys and features of each head, ``[b, h, 1, 1]`` (0 when none)."""
    if context.key_padding is not None:
        key_logits = key_logits.masked_fill(~context.key_padding[:, None, :, None], float("-inf"))
    maximum = key_logits.amax(dim=(-2, -1), keepdim=True)
    return torch.where(torch.isfinite(maximum), maximum, torch.zeros_like(maximum))
