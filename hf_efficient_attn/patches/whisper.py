"""Whisper: bidirectional encoder over 1500 audio frames, causal decoder, and cross-attention between them."""

from __future__ import annotations

from torch import nn

from ..variants.base import LayerInfo, Role
from .base import AttentionSite, ModelAdapter


class WhisperAdapter(ModelAdapter):
    """Encoder self-attention, decoder self-attention and decoder cross-attention (``encoder_attn``), in a
    whole model or in a standalone ``WhisperEncoder`` or ``WhisperDecoder``."""

    model_types = ("whisper",)
    targets = ("encoder", "decoder", "cross")

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        config = model.config
        base = model.base_model
        frames = config.max_source_positions
        sites: list[AttentionSite] = []
        encoder = getattr(base, "encoder", None)
        if encoder is None and base.__class__.__name__ == "WhisperEncoder":
            encoder = base
        if encoder is not None:
            heads = config.encoder_attention_heads
            for index, layer in enumerate(encoder.layers):
                info = LayerInfo(
                    Role.BIDIRECTIONAL, "encoder", index, heads, heads, config.d_model // heads, sequence_length=frames
                )
                sites.append(AttentionSite(layer.self_attn, info))
        decoder = getattr(base, "decoder", None)
        if decoder is None and base.__class__.__name__ == "WhisperDecoder":
            decoder = base
        if decoder is not None:
            heads = config.decoder_attention_heads
            head_dim = config.d_model // heads
            for index, layer in enumerate(decoder.layers):
                info = LayerInfo(Role.CAUSAL, "decoder", index, heads, heads, head_dim,
                                 max_length=config.max_target_positions)
                sites.append(AttentionSite(layer.self_attn, info))
                cross = LayerInfo(Role.CROSS, "cross", index, heads, heads, head_dim, sequence_length=frames)
                sites.append(AttentionSite(layer.encoder_attn, cross))
        return sites
