"""`axial` against its float64 definition (rows for half the heads, columns for the others, prefix global),
on the chunked engine and through `dispatch`, and where it is refused."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from spec import axial_mask, dense_attention
from tiny_models import tiny_vit, vit_pixels
from variant_helpers import context, qkv

from hf_efficient_attn import VariantError, is_patched, patch_model
from hf_efficient_attn.variants import AxialAttention, AxialOptions, LayerInfo, Role
from hf_efficient_attn.variants.axial import GridLines


def grid_layer(grid: tuple[int, int], prefix: int = 1, heads: int = 4, kv_heads: int | None = None) -> LayerInfo:
    length = prefix + grid[0] * grid[1]
    return LayerInfo(Role.BIDIRECTIONAL, "encoder", 0, heads, kv_heads or heads, 8, sequence_length=length,
                     grid=grid, prefix_tokens=prefix)


GRIDS = [
    pytest.param((4, 5), 1, 4, 4, id="4x5-cls"),
    pytest.param((3, 3), 1, 5, 5, id="3x3-odd-heads"),
    pytest.param((6, 2), 2, 4, 2, id="6x2-two-prefix-gqa"),
    pytest.param((4, 4), 1, 6, 3, id="4x4-groups-split-by-the-halves"),
    pytest.param((5, 3), 0, 2, 1, id="5x3-no-prefix-mqa"),
    pytest.param((1, 7), 1, 4, 4, id="one-row"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize(("grid", "prefix", "heads", "kv_heads"), GRIDS)
def test_matches_definition(grid, prefix, heads, kv_heads, backend):
    layer = grid_layer(grid, prefix, heads, kv_heads)
    n = layer.sequence_length
    query, key, value = qkv(q_heads=heads, kv_heads=kv_heads, q_len=n, seed=n, scale=2.0)
    ctx = context(n, n, causal=False)
    expected = dense_attention(query, key, value, axial_mask(grid, prefix, heads), ctx.scaling)
    got = AxialAttention(AxialOptions(backend=backend), layer)(query, key, value, ctx)
    assert (got - expected).abs().max() < 1e-12


def test_padding_and_a_caller_mask_follow_the_permutation():
    layer = grid_layer((4, 5), 1, 4, 2)
    query, key, value = qkv(q_heads=4, kv_heads=2, q_len=21, seed=1, scale=2.0)
    padding = torch.ones(2, 21, dtype=torch.bool)
    padding[1, [3, 10, 11]] = False
    ctx = context(21, 21, causal=False, padding=padding)
    expected = dense_attention(query, key, value, axial_mask((4, 5), 1, 4) & padding[:, None, None, :], ctx.scaling)
    assert (AxialAttention(AxialOptions(), layer)(query, key, value, ctx) - expected).abs().max() < 1e-12

    caller = torch.rand(2, 4, 21, 21, generator=torch.Generator().manual_seed(2)) > 0.3
    masked = dataclasses.replace(context(21, 21, causal=False), dense_mask=caller)
    expected = dense_attention(query, key, value, axial_mask((4, 5), 1, 4) & caller, masked.scaling)
    assert (AxialAttention(AxialOptions(), layer)(query, key, value, masked) - expected).abs().max() < 1e-12


def test_lines_are_one_layout_block_each_with_the_prefix_global():
    lines = GridLines.register(3, 4, 2)  # 3 lines of 4 tokens, then 2 prefix tokens: blocks 0, 1, 2 and 3
    positions = torch.arange(14)
    allowed = lines.allowed(context(14, 14, causal=False), positions, positions)[0, 0]
    line = positions // 4
    expected = (line[:, None] == line[None, :]) | (positions[:, None] >= 12) | (positions[None, :] >= 12)
    assert torch.equal(allowed, expected)
    assert lines.candidate_ranges(context(14, 14, causal=False), 4, 7) == [(4, 8), (12, 16)]
    assert not lines.kernel_mask().layout_is_dense and GridLines.register(1, 4, 1).kernel_mask().layout_is_dense


def test_patched_vit_gives_the_definition_in_every_layer():
    """The tiny ViT (6×6 patches and CLS, 4 heads), patched: each layer's attention output is the float64
    definition's for the query, key and value it was given."""
    vit = tiny_vit()
    model = patch_model(copy.deepcopy(vit), "axial")
    seen = []

    def record(module, args, output):
        query, key, value, ctx = args
        expected = dense_attention(query, key, value, axial_mask((6, 6), 1, 4), ctx.scaling)
        seen.append((output.double() - expected).abs().max().item())

    for module in model.modules():
        if isinstance(module, AxialAttention):
            module.register_forward_hook(record)
    pixels = vit_pixels(vit)
    logits = model(pixel_values=pixels).logits
    assert len(seen) == vit.config.num_hidden_layers and max(seen) < 1e-5
    assert (logits - vit(pixel_values=pixels).logits).abs().max() > 1e-4  # axial is not exact attention


def test_patched_vit_trains():
    model = patch_model(tiny_vit(), "axial").train()
    pixels = vit_pixels(model)
    model(pixel_values=pixels).logits.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("model_name", "options", "message"),
    [
        ("llama", {}, "Variant 'axial' cannot run on any attention of this model (causal self-attention)."),
        ("whisper", {}, "Variant 'axial' needs a patch grid (rows and columns of image patches), which encoder "
                        "layers of this model do not have. Variants that can run there: flash, full, linear, "
                        "lowrank, lsh, nystrom, performer, sliding, sparse."),
        ("vit", {"backend": "fast"}, "`backend` must be one of 'auto', 'sdpa', 'triton', 'cudnn', 'fa4', 'reference', got "
                                     "'fast'."),
        ("vit", {"backend": "cudnn"}, "backend='cudnn' cannot run axial attention (it takes no block layout); use "
                                      "backend='auto' or 'triton'."),
        ("vit", {"backend": "sdpa"}, "backend='sdpa' cannot run axial attention (it takes no block layout); use "
                                     "backend='auto' or 'triton'."),
    ],
)
def test_refused_where_it_cannot_run_and_the_model_is_unchanged(request, model_name, options, message):
    model = request.getfixturevalue(model_name)
    implementation = model.config._attn_implementation
    with pytest.raises(VariantError) as raised:
        patch_model(model, "axial", **options)
    assert message in str(raised.value)
    assert not is_patched(model) and model.config._attn_implementation == implementation


def test_one_head_and_a_grid_of_another_size_are_refused():
    with pytest.raises(VariantError, match="gives half the heads to rows and half to columns, but encoder layer 0 "
                                           "has 1 head; use 'sliding' with neighbourhood='2d'"):
        AxialAttention.check_layer(AxialOptions(), grid_layer((3, 3), heads=1))
    variant = AxialAttention(AxialOptions(), grid_layer((3, 3)))
    query, key, value = qkv(q_heads=4, kv_heads=4, q_len=12, seed=3)
    with pytest.raises(VariantError, match=r"expects 1 \+ 3×3 tokens but got 12"):
        variant(query, key, value, context(12, 12, causal=False))
