"""The new variants through `patch_model` on the tiny Llama, Whisper and ViT: training, exactness, padding, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_efficient_attn import VariantError, is_patched, patch_model
from hf_efficient_attn.variants import AttentionVariant

CAUSAL_PATCHES = [
    pytest.param("sparse", {"block_size": 4, "local_blocks": 2, "random_blocks": 1, "stride_blocks": 3}, id="sparse"),
    pytest.param("sparse", {"pattern": "shifted", "group_size": 8}, id="sparse-shifted"),
    pytest.param("performer", {"num_features": 16}, id="performer"),
    pytest.param("linear", {}, id="linear"),
    pytest.param("lsh", {"bucket_size": 4, "num_buckets": 4, "num_hashes": 2}, id="lsh"),
]
ENCODER_PATCHES = [
    pytest.param("sparse", {"block_size": 4, "local_blocks": 2, "global_blocks": 1}, id="sparse"),
    pytest.param("lowrank", {"rank": 8}, id="lowrank"),
    pytest.param("performer", {"num_features": 16}, id="performer"),
    pytest.param("nystrom", {"num_landmarks": 6}, id="nystrom"),
    pytest.param("linear", {"feature_dim": 4}, id="linear"),
    pytest.param("lsh", {"bucket_size": 4, "num_hashes": 2}, id="lsh"),
]


def token_ids(vocab: int, batch: int = 2, length: int = 24, seed: int = 2) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def train_step(model, inputs):
    """Forward and backward in training mode; returns the variant modules, which must all have run."""
    model.train()
    output = model(**inputs).logits
    assert torch.isfinite(output).all()
    output.float().square().mean().backward()
    variants = [module for module in model.modules() if isinstance(module, AttentionVariant)]
    assert variants
    for variant in variants:
        for name, parameter in variant.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    return variants


@pytest.mark.parametrize(("variant", "options"), CAUSAL_PATCHES)
def test_llama_trains(llama, variant, options):
    model = patch_model(copy.deepcopy(llama), variant, **options)
    train_step(model, {"input_ids": token_ids(llama.config.vocab_size)})


@pytest.mark.parametrize(("variant", "options"), ENCODER_PATCHES)
def test_vit_trains(vit, vit_inputs, variant, options):
    model = patch_model(copy.deepcopy(vit), variant, **options)
    train_step(model, vit_inputs)


@pytest.mark.parametrize(("variant", "options"), ENCODER_PATCHES)
def test_whisper_trains(whisper, whisper_inputs, variant, options):
    model = patch_model(copy.deepcopy(whisper), variant, **options)
    variants = train_step(model, whisper_inputs)
    assert "encoder" in {v.layer.target for v in variants}


@pytest.mark.parametrize("variant", ["lowrank", "nystrom"])
def test_whisper_cross_attention_trains(whisper, whisper_inputs, variant):
    options = {"rank": 8} if variant == "lowrank" else {"num_landmarks": 6}
    model = patch_model(copy.deepcopy(whisper), variant, targets=["cross"], **options)
    variants = train_step(model, whisper_inputs)
    assert {v.layer.target for v in variants} == {"cross"}


def outputs_and_grads(model, inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    logits.float().sin().mean().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(baseline, patched):
    assert (patched[0] - baseline[0]).abs().max() < 1e-5
    assert baseline[1].keys() == patched[1].keys()
    assert max((patched[1][n] - baseline[1][n]).abs().max().item() for n in baseline[1]) < 1e-5


DENSE_LAYOUT = {"block_size": 4, "local_blocks": 64, "global_blocks": 0}


def test_dense_layout_matches_unpatched_llama(llama):
    inputs = {"input_ids": token_ids(llama.config.vocab_size, length=40)}
    assert_same(outputs_and_grads(llama, inputs), outputs_and_grads(patch_model(copy.deepcopy(llama), "sparse", **DENSE_LAYOUT), inputs))


def test_dense_layout_matches_unpatched_whisper(whisper, whisper_inputs):
    patched = patch_model(copy.deepcopy(whisper), "sparse", **DENSE_LAYOUT)
    assert_same(outputs_and_grads(whisper, whisper_inputs), outputs_and_grads(patched, whisper_inputs))


def test_dense_layout_matches_unpatched_vit(vit, vit_inputs):
    patched = patch_model(copy.deepcopy(vit), "sparse", **DENSE_LAYOUT)
    assert_same(outputs_and_grads(vit, vit_inputs), outputs_and_grads(patched, vit_inputs))


def test_sparse_layout_changes_outputs(llama):
    """The control for the exactness tests: a real sparse layout is not exact."""
    inputs = {"input_ids": token_ids(llama.config.vocab_size, length=40)}
    patched = patch_model(copy.deepcopy(llama), "sparse", block_size=4, local_blocks=1, global_blocks=0)
    assert (patched(**inputs).logits - llama(**inputs).logits).abs().max() > 1e-3


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("variant", "options"), [p for p in CAUSAL_PATCHES if p.id != "sparse-shifted"])
def test_padding_does_not_change_real_tokens(llama, side, variant, options):
    model = patch_model(copy.deepcopy(llama), variant, **options)
    long = token_ids(llama.config.vocab_size, batch=1, length=24, seed=5)[0]
    short = token_ids(llama.config.vocab_size, batch=1, length=15, seed=6)[0]
    gap = long.shape[0] - short.shape[0]
    pad = torch.zeros(gap, dtype=long.dtype)
    real = torch.ones(long.shape[0], dtype=torch.long)
    if side == "left":
        padded, real[:gap] = torch.cat([pad, short]), 0
    else:
        padded, real[-gap:] = torch.cat([short, pad]), 0
    ids, mask = torch.stack([long, padded]), torch.stack([torch.ones_like(real), real])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    alone = model(input_ids=short[None]).logits[0]
    rows = batched[1, gap:] if side == "left" else batched[1, : short.shape[0]]
    assert (rows - alone).abs().max() < 1e-5
    assert (batched[0] - model(input_ids=long[None]).logits[0]).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("model_name", "variant", "options", "message"),
    [
        ("llama", "lowrank", {}, "Variant 'lowrank' cannot run on any attention of this model (causal self-attention)"),
        ("llama", "nystrom", {}, "Variants that can: flash, full, linear, lsh, performer, sliding, sparse"),
        ("vit", "lowrank", {"rank": 40}, "rank 40 exceeds the sequence length 37 of encoder layers; choose rank <= 37"),
        ("whisper", "nystrom", {"num_landmarks": 30}, "num_landmarks 30 exceeds the sequence length 24"),
        ("whisper", "lowrank", {"rank": 8, "targets": ["decoder"]}, "cannot run on causal self-attention"),
        ("llama", "sparse", {"block_size": 0}, "`block_size` must be an integer >= 1, got 0"),
        ("llama", "sparse", {"pattern": "shifted", "group_size": 9}, "`group_size` must be even"),
        ("llama", "sparse", {"layout": torch.ones(3, 2, 2, dtype=torch.bool)}, "has 3 heads but decoder layer 0 has 4"),
        ("vit", "performer", {"num_features": -1}, "`num_features` must be an integer >= 1, got -1"),
        ("vit", "linear", {"feature_dim": 0}, "`feature_dim` must be an integer >= 1, got 0"),
        ("vit", "lsh", {}, "bucket_size=64 is larger than the 37 tokens of this model's encoder layers"),
        ("llama", "lsh", {"num_hashes": 0}, "`num_hashes` must be an integer >= 1"),
        ("whisper", "lsh", {"bucket_size": 4, "targets": ["cross"]}, "Variant 'lsh' cannot run on cross-attention"),
    ],
)
def test_bad_options_and_roles_leave_model_unpatched(request, model_name, variant, options, message):
    model = request.getfixturevalue(model_name)
    implementation = model.config._attn_implementation
    with pytest.raises(VariantError) as raised:
        patch_model(model, variant, **options)
    assert message in str(raised.value)
    assert not is_patched(model)
    assert model.config._attn_implementation == implementation


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("performer", {"num_features": 16}),
        ("lowrank", {"rank": 8}),
        ("linear", {}),
        ("sparse", {"block_size": 4, "layout": [[abs(i - j) < 3 for j in range(6)] for i in range(6)]}),
    ],
    ids=["performer", "lowrank", "linear", "sparse-own-layout"],
)
def test_save_and_reload_give_the_same_outputs(whisper, whisper_inputs, tmp_path, variant, options):
    """On Whisper, every variant's state (learned weights, random features, own layouts) survives a reload."""
    from hf_efficient_attn import from_pretrained

    model = patch_model(copy.deepcopy(whisper), variant, **options)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AttentionVariant):
                for parameter in module.parameters():
                    parameter.add_(0.01)
    model.save_pretrained(tmp_path)
    reloaded = from_pretrained(tmp_path)
    assert (reloaded(**whisper_inputs).logits - model(**whisper_inputs).logits).abs().max() < 1e-6
