"""Streaming perplexity and positions inside the cache, against forwards of the unpatched model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_llama, tiny_qwen2

from hf_efficient_attn import patch_model
from hf_efficient_attn.eval.errors import EvalInputError
from hf_efficient_attn.eval.streaming import StreamingResult, streaming_perplexity
from hf_efficient_attn.streaming import CachePositionedLayer, rotate, streaming_cache
from hf_efficient_attn.variants.base import VariantError

WINDOW, SINKS = 12, 2


def stream(length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed))


def full_nll(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1]
    return F.cross_entropy(logits.double(), ids[1:], reduction="none")


def position_sensitive(model):
    """Sharper attention (queries and keys scaled up), so that scores depend visibly on positions."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model


def recomputed_nll(model, ids: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """NLL of tokens ``begin + 1 .. end`` from one fresh forward of the unpatched model over the tokens the
    chunk ``[begin, end)`` sees (its sinks, the window before it and the chunk itself) at positions
    ``0, 1, ...`` of that sequence, under a 4-D mask of the sliding pattern by position in the text. With
    one decoder layer a token's key and value depend on the token and its position only, so these are
    the very keys the cache holds, placed where StreamingLLM places them."""
    tail_start = max(SINKS, begin - (WINDOW - 1))
    kept = list(range(min(SINKS, end))) + list(range(tail_start, end))
    text_positions = torch.tensor(kept)
    distance = text_positions[:, None] - text_positions[None, :]
    visible = (distance >= 0) & ((distance < WINDOW) | (text_positions[None, :] < SINKS))
    with torch.no_grad():
        logits = model(ids[kept][None], attention_mask=visible[None, None]).logits[0, -(end - begin) :]
    targets = ids[begin + 1 : end + 1]
    return F.cross_entropy(logits[: targets.numel()].double(), targets, reduction="none")


@pytest.mark.parametrize("chunk", [1, 5])
def test_streaming_scores_every_token_once_and_equals_one_forward_where_nothing_drops(chunk):
    model = tiny_llama().eval()
    ids = stream(40, model.config.vocab_size)
    reference = full_nll(model, ids)
    unpatched = streaming_perplexity(model, ids, chunk, progress=False)
    assert unpatched.tokens == ids.numel() - 1
    torch.testing.assert_close(unpatched.token_nll.double(), reference, atol=1e-5, rtol=1e-5)
    patch_model(model, "sliding", window=64, sink_tokens=SINKS)
    for positions in ("text", "cache"):
        patched = streaming_perplexity(model, ids, chunk, positions, progress=False)
        torch.testing.assert_close(patched.token_nll.double(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("architecture", [tiny_llama, tiny_qwen2])
def test_positions_inside_the_cache_match_a_recomputed_forward_over_the_visible_keys(chunk, architecture):
    """Past the window, each chunk's scores equal one forward over its sinks, window and itself at
    positions counted inside that sequence, whatever the position in the text."""
    model = position_sensitive(architecture(num_hidden_layers=1))
    ids = stream(60, model.config.vocab_size, seed=1)
    baseline = position_sensitive(architecture(num_hidden_layers=1))
    patch_model(model, "sliding", window=WINDOW, sink_tokens=SINKS)
    result = streaming_perplexity(model, ids, chunk, "cache", progress=False)
    assert result.tokens == ids.numel() - 1
    expected = torch.cat(
        [recomputed_nll(baseline, ids, begin, min(begin + chunk, ids.numel() - 1)) for begin in range(0, 59, chunk)]
    )
    torch.testing.assert_close(result.token_nll.double(), expected, atol=1e-4, rtol=1e-4)
    assert max(result.held_tokens) == SINKS + WINDOW - 1 + chunk  # flat: the kept tokens and one chunk


def test_text_positions_differ_from_cache_positions_once_tokens_drop():
    """The two position rules agree while nothing is dropped and differ after (the rule is not a no-op)."""
    model = position_sensitive(tiny_llama())
    ids = stream(40, model.config.vocab_size, seed=2)
    patch_model(model, "sliding", window=WINDOW, sink_tokens=SINKS)
    text = streaming_perplexity(model, ids, 1, "text", progress=False).token_nll
    cache = streaming_perplexity(model, ids, 1, "cache", progress=False).token_nll
    kept = SINKS + WINDOW - 1
    torch.testing.assert_close(text[:kept], cache[:kept])
    assert (text[kept + 1 :] - cache[kept + 1 :]).abs().max() > 1e-3


def test_rotation_by_a_position_and_back_is_the_identity_and_composes():
    states = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    frequencies = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    positions = torch.tensor([0, 3, 7, 100, 4096])
    there = rotate(states, positions, frequencies)
    torch.testing.assert_close(rotate(there, -positions, frequencies), states, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotate(there, positions, frequencies), rotate(states, 2 * positions, frequencies),
                               rtol=1e-6, atol=1e-6)
    # what transformers' Llama rotary embedding gives for the same positions
    angles = positions[:, None].double() * frequencies[None, :]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    half = torch.cat([-states[..., 4:], states[..., :4]], -1)
    torch.testing.assert_close(there, states * cos + half * sin)


def test_streaming_cache_needs_sliding_in_every_layer_and_bad_arguments_are_refused():
    model = tiny_llama().eval()
    ids = stream(10, model.config.vocab_size)
    with pytest.raises(VariantError, match="every decoder layer patched with causal 'sliding'"):
        streaming_cache(model)
    patch_model(model, "sliding", window=WINDOW, layers=[0])
    with pytest.raises(VariantError, match="every decoder layer"):
        streaming_perplexity(model, ids, 1, "cache", progress=False)
    with pytest.raises(EvalInputError, match="positions must be one of"):
        streaming_perplexity(model, ids, 1, "absolute", progress=False)
    with pytest.raises(EvalInputError, match="chunk_size"):
        streaming_perplexity(model, ids, 0, progress=False)
    with pytest.raises(EvalInputError, match="at least 2 tokens"):
        streaming_perplexity(model, ids[:1], 1, progress=False)


def test_a_cache_positioned_layer_stores_keys_unrotated():
    frequencies = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    layer = CachePositionedLayer(window=3, prefix=1, inverse_frequencies=frequencies)
    raw = torch.randn(1, 1, 6, 8)
    arriving = rotate(raw, torch.arange(6), frequencies)
    keys, _ = layer.update(arriving, torch.randn(1, 1, 6, 8))
    torch.testing.assert_close(keys, arriving)  # nothing dropped yet: indices are text positions
    assert layer.next_position == 1 + 3 - 1
    new = torch.randn(1, 1, 1, 8)
    keys, _ = layer.update(rotate(new, torch.tensor([3]), frequencies), torch.randn(1, 1, 1, 8))
    kept = torch.cat([raw[..., :1, :], raw[..., 4:6, :], new], dim=-2)  # the sink, the last two, the new one
    torch.testing.assert_close(keys, rotate(kept, torch.arange(4), frequencies), atol=1e-6, rtol=1e-5)


def test_tokens_per_second_by_stretch_counts_each_chunk_in_the_stretch_of_its_last_position():
    # 10 chunks of 4 over a stream of 38 tokens (37 scored); chunk k ends at second k + 1 (the last one,
    # 2 tokens, at 12): stretches of 12 positions hold chunks 0-2, 3-5, 6-8 and 9.
    result = StreamingResult(token_nll=torch.zeros(37), chunk_size=4, seconds=12.0,
                             chunk_ends=[1, 2, 3, 4, 5, 6, 7, 8, 9, 12])
    assert result.stretch_tokens_per_second(12) == pytest.approx([12 / 3, 12 / 3, 12 / 3, 2 / 3])
    assert StreamingResult(token_nll=torch.zeros(5), chunk_size=4, seconds=1.0).stretch_tokens_per_second(4) == []
