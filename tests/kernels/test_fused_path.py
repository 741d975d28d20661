"""The fused path inside patched models: `flash`, `sliding` and `sparse` on the Triton kernels.

Each test runs a tiny model (head size 32, which the kernels support) with ``backend="triton"`` and
compares it with the unpatched model or with the same variant on ``backend="reference"``, which the
variant tests check against float64 definitions. On the CPU the kernels run in Triton's interpreter;
with CUDA the models run there.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch

import hf_efficient_attn.dispatch as dispatch
import hf_efficient_attn.fused_path as fused_path
from hf_efficient_attn import FusedPathError, FusedPathFallbackWarning, VariantError, patch_model
from hf_efficient_attn import kernels as kernel_module
from hf_efficient_attn.context import build_context

sys.path.insert(0, str(Path(__file__).parent.parent))

from tiny_models import tiny_llama, tiny_mistral, tiny_vit, tiny_whisper, vit_pixels, whisper_features  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_SHAPE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2)
TOLERANCE = 2e-5


def kernel_llama(**overrides):
    return tiny_llama(**{**KERNEL_SHAPE, **overrides}).to(DEVICE)


def token_ids(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=generator).to(DEVICE)


def logits_and_grads(model, **inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    logits.float().pow(2).mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def assert_close_outputs(first, second, tolerance=TOLERANCE):
    (logits_a, grads_a), (logits_b, grads_b) = first, second
    torch.testing.assert_close(logits_a, logits_b, atol=tolerance, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=tolerance, rtol=1e-4, msg=name)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of each kernel entry point, so a test can prove which path ran (the dense kernels:
    the launches a plan makes, `ops.DenseLaunch`; the decode kernel: each launch, `decode.run_decode`)."""
    calls = {"fused_attention": 0, "fused_attention_varlen": 0, "decode_attention": 0}
    entry_points = {
        "fused_attention": (kernel_module.ops.DenseLaunch, "__call__"),
        "fused_attention_varlen": (kernel_module.ops, "fused_attention_varlen"),  # as the ops module calls it
        "decode_attention": (kernel_module.decode, "run_decode"),  # every decode launch, planned or not
    }
    for name, (owner, attribute) in entry_points.items():
        original = getattr(owner, attribute)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, counting)
    return calls


def test_flash_matches_unpatched_model_on_logits_and_gradients(kernel_calls):
    model = kernel_llama()
    ids = token_ids(model, batch=2, length=40)
    expected = logits_and_grads(model, input_ids=ids)
    patched = patch_model(copy.deepcopy(model), "flash", backend="triton")
    assert_close_outputs(logits_and_grads(patched, input_ids=ids), expected)
    assert kernel_calls["fused_attention"] == KERNEL_SHAPE["num_hidden_layers"]


@pytest.mark.parametrize("variant, options", [("flash", {}), ("sliding", {"window": 4})])
def test_a_gradient_the_value_alone_needs_reaches_it_on_short_sequences(variant, options, kernel_calls):
    """LoRA on the value projection only: the first layer's query and key come from frozen weights and
    need no gradient, its value does. A training call short enough for the decode kernel (forward only)
    must still take the kernels with a backward, and give the unpatched model's gradient."""
    model = kernel_llama(num_hidden_layers=1)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.model.layers[0].self_attn.v_proj.weight.requires_grad_(True)
    ids = token_ids(model, batch=2, length=8)
    reference = patch_model(copy.deepcopy(model), variant, backend="reference", **options)
    patched = patch_model(copy.deepcopy(model), variant, backend="triton", **options)
    assert_close_outputs(logits_and_grads(patched, input_ids=ids), logits_and_grads(reference, input_ids=ids))
    assert kernel_calls["decode_attention"] == 0 and kernel_calls["fused_attention"] == 1


def test_a_forward_plans_its_launch_once_and_checks_its_inputs_once(monkeypatch):
    counts = {"plan": 0, "dense_launch": 0}
    for owner, name in ((fused_path, "plan"), (kernel_module.ops, "dense_launch")):
        original = getattr(owner, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)
    model = kernel_llama(num_hidden_layers=3)
    ids = token_ids(model, batch=2, length=40)
    patched = patch_model(copy.deepcopy(model), "sliding", window=8, backend="triton")
    reference = patch_model(copy.deepcopy(model), "sliding", window=8, backend="reference")
    with torch.no_grad():
        for length in (40, 40, 24):  # a new forward plans again, a new length checks again
            got = patched(input_ids=ids[:, :length]).logits
            torch.testing.assert_close(got, reference(input_ids=ids[:, :length]).logits, atol=TOLERANCE, rtol=0)
    assert counts == {"plan": 3, "dense_launch": 3}


def test_a_kept_launch_checks_again_for_other_shapes():
    launch = kernel_module.ops.DenseLaunch(
        scale=0.25, causal=True, window=(4, None), sink_tokens=0, global_tokens=0, layout=None, layout_blocks=0,
        layout_block_size=64, key_padding=None, documents=None,
    )
    q, k, v = (torch.randn(1, 2, 20, 32, device=DEVICE) for _ in range(3))
    expected = kernel_module.fused_attention(q, k, v, scale=0.25, causal=True, window=(4, None))
    torch.testing.assert_close(launch(q, k, v), expected)
    with pytest.raises(kernel_module.KernelInputError, match="head_dim=16"):
        launch(q[..., :16], k[..., :16], v[..., :16])


def test_flash_matches_unpatched_with_right_padding():
    model = kernel_llama()
    ids = token_ids(model, batch=2, length=24)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    expected = model(input_ids=ids, attention_mask=mask).logits
    patched = patch_model(copy.deepcopy(model), "flash", backend="triton")
    got = patched(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[0], expected[0], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(got[1, :17], expected[1, :17], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("options", [dict(window=8), dict(window=8, sink_tokens=2), dict(window=64)])
def test_sliding_kernel_matches_reference_in_a_decoder(options):
    model = kernel_llama()
    ids = token_ids(model, batch=2, length=40)
    reference = patch_model(copy.deepcopy(model), "sliding", backend="reference", **options)
    fused = patch_model(copy.deepcopy(model), "sliding", backend="triton", **options)
    assert_close_outputs(logits_and_grads(fused, input_ids=ids), logits_and_grads(reference, input_ids=ids))


def test_sliding_kernel_matches_reference_in_an_encoder_with_global_tokens():
    model = tiny_vit(hidden_size=64, num_attention_heads=2).to(DEVICE)
    pixels = vit_pixels(model).to(DEVICE)
    options = dict(window=5, global_tokens=1)
    reference = patch_model(copy.deepcopy(model), "sliding", backend="reference", **options)
    fused = patch_model(copy.deepcopy(model), "sliding", backend="triton", **options)
    assert_close_outputs(logits_and_grads(fused, pixel_values=pixels), logits_and_grads(reference, pixel_values=pixels))


@pytest.mark.parametrize(
    "options",
    [
        dict(block_size=16, local_blocks=1, global_blocks=1, random_blocks=1, seed=3),
        dict(block_size=8, local_blocks=2, global_blocks=0, stride_blocks=3),
    ],
)
def test_sparse_kernel_matches_reference(options):
    model = kernel_llama()
    ids = token_ids(model, batch=2, length=48)
    reference = patch_model(copy.deepcopy(model), "sparse", backend="reference", **options)
    fused = patch_model(copy.deepcopy(model), "sparse", backend="triton", **options)
    assert_close_outputs(logits_and_grads(fused, input_ids=ids), logits_and_grads(reference, input_ids=ids))


def test_sparse_model_builds_tile_lists_once_per_layer(monkeypatch):
    """Every layer names the same layout and gets the same layout tensor in every call, so the layers, a
    second forward and the backward reuse the tile lists of the first call: one build in all, under
    inference mode too."""
    from hf_efficient_attn.kernels import function as kernel_function

    builds = []
    real = kernel_function.build_tile_lists
    monkeypatch.setattr(kernel_function, "build_tile_lists", lambda *a, **k: builds.append(1) or real(*a, **k))
    kernel_function.TILE_LISTS.clear()
    model = patch_model(kernel_llama(), "sparse", backend="triton", block_size=16, local_blocks=1, random_blocks=1)
    ids = token_ids(model, batch=1, length=40)
    with torch.inference_mode():
        model(input_ids=ids)
    logits_and_grads(model, input_ids=ids)
    assert len(builds) == 1


def test_shifted_groups_kernel_matches_reference_while_training():
    model = kernel_llama()
    ids = token_ids(model, batch=1, length=48)
    reference = patch_model(copy.deepcopy(model), "sparse", pattern="shifted", group_size=16, backend="reference")
    fused = patch_model(copy.deepcopy(model), "sparse", pattern="shifted", group_size=16, backend="triton")
    reference.train()
    fused.train()
    assert_close_outputs(logits_and_grads(fused, input_ids=ids), logits_and_grads(reference, input_ids=ids))


def test_whisper_encoder_and_decoder_on_kernels_match_unpatched():
    model = tiny_whisper(d_model=64, encoder_attention_heads=2, decoder_attention_heads=2).to(DEVICE)
    inputs = dict(
        input_features=whisper_features(model).to(DEVICE),
        decoder_input_ids=token_ids(model, batch=2, length=9),
    )
    expected = logits_and_grads(model, **inputs)
    patched = patch_model(copy.deepcopy(model), "flash", targets=["encoder", "decoder", "cross"], backend="triton")
    assert_close_outputs(logits_and_grads(patched, **inputs), expected)


def test_packed_documents_run_as_variable_length_sequences(kernel_calls):
    model = kernel_llama()
    ids = token_ids(model, batch=1, length=30)
    position_ids = torch.cat([torch.arange(12), torch.arange(18)])[None].to(DEVICE)
    reference = patch_model(copy.deepcopy(model), "sliding", window=6, backend="reference")
    fused = patch_model(copy.deepcopy(model), "sliding", window=6, backend="triton")
    expected = reference(input_ids=ids, position_ids=position_ids).logits
    got = fused(input_ids=ids, position_ids=position_ids).logits
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    assert kernel_calls["fused_attention_varlen"] == KERNEL_SHAPE["num_hidden_layers"]


@pytest.mark.parametrize("options", [dict(window=6), dict(window=6, sink_tokens=2)])
def test_generation_with_bounded_cache_uses_decode_kernel(options, kernel_calls):
    model = kernel_llama()
    prompt = token_ids(model, batch=2, length=10)
    settings = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    reference = patch_model(copy.deepcopy(model), "sliding", backend="reference", **options)
    fused = patch_model(copy.deepcopy(model), "sliding", backend="triton", **options)
    expected = reference.generate(prompt, **settings)
    got = fused.generate(prompt, **settings)
    assert torch.equal(got.sequences, expected.sequences)
    for step_got, step_expected in zip(got.scores, expected.scores, strict=True):
        torch.testing.assert_close(step_got, step_expected, atol=1e-4, rtol=0)
    assert kernel_calls["decode_attention"] >= KERNEL_SHAPE["num_hidden_layers"] * 7


def test_mistral_native_window_is_kept_on_the_kernel():
    model = tiny_mistral(**KERNEL_SHAPE, sliding_window=5).to(DEVICE)
    ids = token_ids(model, batch=2, length=24)
    expected = model(input_ids=ids).logits
    patched = patch_model(copy.deepcopy(model), "flash", backend="triton")
    torch.testing.assert_close(patched(input_ids=ids).logits, expected, atol=TOLERANCE, rtol=0)


def test_forced_kernel_refuses_left_padding_with_sinks():
    model = kernel_llama()
    ids = token_ids(model, batch=2, length=16)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    patched = patch_model(model, "sliding", window=6, sink_tokens=2, backend="triton")
    with pytest.raises(FusedPathError, match="left padding.*backend='auto'"):
        patched(input_ids=ids, attention_mask=mask)


def test_forced_kernel_refuses_unsupported_head_size():
    model = tiny_llama().to(DEVICE)  # head size 8
    patched = patch_model(model, "flash", backend="triton")
    with pytest.raises(FusedPathError, match="head_dim=8 is not supported"):
        patched(input_ids=token_ids(model, batch=1, length=8))


def test_forced_kernel_refuses_a_non_positive_softmax_scale():
    model = kernel_llama()
    for layer in model.model.layers:
        layer.self_attn.scaling = -0.25
    patched = patch_model(model, "flash", backend="triton")
    with pytest.raises(FusedPathError, match=r"scale must be positive and finite.*got -0\.25"):
        patched(input_ids=token_ids(model, batch=1, length=8))


@pytest.mark.parametrize("global_tokens", [0, 3])
def test_two_dimensional_neighbourhood_runs_on_its_kernel_like_the_reference(monkeypatch, global_tokens):
    """ViT's 6 x 6 grid with CLS, a reach of one cell (and CLS plus two grid cells global): the neighbourhood
    kernel, once per layer, gives the chunked engine's logits and gradients."""
    calls = []
    original = kernel_module.ops.neighbourhood_attention

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernel_module.ops, "neighbourhood_attention", counting)
    model = tiny_vit(hidden_size=64, num_attention_heads=2).to(DEVICE)
    pixels = vit_pixels(model).to(DEVICE)
    options = dict(window=2, neighbourhood="2d", global_tokens=global_tokens)
    expected = logits_and_grads(patch_model(copy.deepcopy(model), "sliding", **options, backend="reference"),
                                pixel_values=pixels)
    got = logits_and_grads(patch_model(copy.deepcopy(model), "sliding", **options, backend="triton"),
                           pixel_values=pixels)
    assert_close_outputs(got, expected)
    assert len(calls) == model.config.num_hidden_layers
    assert calls[0]["grid"] == (6, 6) and calls[0]["reach"] == 1 and calls[0]["prefix_tokens"] == 1
    assert calls[0]["global_queries"] == max(1, global_tokens) == calls[0]["leading_keys"]


def test_forced_kernel_refuses_a_neighbourhood_over_part_of_the_grid():
    """A sequence shorter than the grid (the chunked engine takes it by position) is not the kernel's."""
    pattern = fused_path.KernelMask(global_tokens=1, neighbourhood=fused_path.GridNeighbourhood(6, 6, 1, reach=1))
    query = torch.randn(1, 2, 20, 32, device=DEVICE)
    context = build_context(query=query, key=query, attention_mask=None, causal=False, scaling=0.2, dropout=0.0,
                            cache_window=None, position_ids=None, native_window=None)
    with pytest.raises(FusedPathError, match=r"whole grid \(37 tokens\), not 20"):
        dispatch.choose(query, query, query, context, "triton", pattern, "sliding")


def test_auto_falls_back_with_one_warning_and_exact_results(monkeypatch):
    """A window narrower than the sequence, which SDPA cannot take without a dense mask, on a head size the
    kernels refuse: one warning, then the exact chunked path, silently afterwards."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    monkeypatch.setattr(dispatch, "_WARNED", set())
    model = tiny_llama().to(DEVICE)  # head size 8: the kernels refuse it, the chunked engine takes over
    ids = token_ids(model, batch=2, length=12)
    expected = patch_model(copy.deepcopy(model), "sliding", window=4, backend="reference")(input_ids=ids).logits
    patched = patch_model(copy.deepcopy(model), "sliding", window=4)
    with pytest.warns(FusedPathFallbackWarning, match="head_dim=8") as caught:
        got = patched(input_ids=ids).logits
    assert len([w for w in caught if issubclass(w.category, FusedPathFallbackWarning)]) == 1
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedPathFallbackWarning)
        patched(input_ids=ids)


def test_auto_sends_exact_calls_to_sdpa_without_a_warning(monkeypatch, kernel_calls):
    """`flash` on a call SDPA computes exactly runs SDPA: no kernel, no fallback, whatever the head size."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    model = tiny_llama().to(DEVICE)
    ids = token_ids(model, batch=2, length=12)
    patched = patch_model(copy.deepcopy(model), "flash")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedPathFallbackWarning)
        got = patched(input_ids=ids).logits
    torch.testing.assert_close(got, model(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert sum(kernel_calls.values()) == 0


def test_auto_on_cpu_runs_the_reference_without_kernels(kernel_calls):
    model = tiny_llama(**KERNEL_SHAPE)
    patched = patch_model(copy.deepcopy(model), "sliding", window=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusedPathFallbackWarning)
        patched(input_ids=token_ids(model, batch=1, length=12).cpu())
    assert sum(kernel_calls.values()) == 0


@pytest.mark.parametrize("variant", ["flash", "sliding", "sparse"])
def test_unknown_backend_is_refused(variant):
    model = kernel_llama()
    with pytest.raises(VariantError, match="`backend` must be one of"):
        patch_model(model, variant, backend="cuda")


@pytest.mark.parametrize(
    "variant, options",
    [("flash", {}), ("sliding", dict(window=6)), ("sliding", dict(window=6, sink_tokens=2)),
     ("sparse", dict(block_size=4, local_blocks=1, global_blocks=1))],
)
def test_static_cache_steps_run_on_the_decode_kernel_under_their_mask(variant, options, kernel_calls, monkeypatch):
    """A static cache's decoding step needs a mask by position (and the pattern's): where the kernels are
    preferred (CUDA; here forced in the interpreter) it runs on the split-key decode kernel under that
    mask, with the tokens and scores of the chunked engine. Eager steps (transformers compiles static-cache
    decoding on CUDA by default; compiled steps are tested below), so every step's kernel calls count."""
    model = kernel_llama()
    prompt = token_ids(model, batch=2, length=10)
    settings = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True,
                    cache_implementation="static", disable_compile=True)
    reference = patch_model(copy.deepcopy(model), variant, backend="reference", **options)
    expected = reference.generate(prompt, **settings)
    assert kernel_calls["decode_attention"] == 0
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    monkeypatch.setattr(fused_path, "DECODE_UNDER_MASK_MIN_KEYS", 0)  # a tiny cache stands for a long one
    fused = patch_model(copy.deepcopy(model), variant, **options)
    got = fused.generate(prompt, **settings)
    assert torch.equal(got.sequences, expected.sequences)
    for step_got, step_expected in zip(got.scores, expected.scores, strict=True):
        torch.testing.assert_close(step_got, step_expected, atol=1e-4, rtol=0)
    assert kernel_calls["decode_attention"] >= KERNEL_SHAPE["num_hidden_layers"] * 5


@pytest.mark.parametrize(
    "variant, options", [("sliding", dict(window=6, sink_tokens=2)), ("sparse", dict(block_size=4, local_blocks=1))]
)
def test_compiled_static_steps_on_the_decode_kernel_equal_the_chunked_engine(variant, options, monkeypatch):
    from transformers import CompileConfig

    model = kernel_llama()
    prompt = token_ids(model, batch=2, length=10)
    settings = dict(max_new_tokens=6, do_sample=False, cache_implementation="static")
    expected = patch_model(copy.deepcopy(model), variant, backend="reference", **options).generate(prompt, **settings)
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    monkeypatch.setattr(fused_path, "DECODE_UNDER_MASK_MIN_KEYS", 0)
    fused = patch_model(copy.deepcopy(model), variant, **options)
    config = CompileConfig(fullgraph=True)
    config._compile_all_devices = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = fused.generate(prompt, **settings, compile_config=config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the decoding step was not compiled"
    assert torch.equal(got, expected)


def test_masked_decoding_over_fewer_keys_than_the_threshold_keeps_sdpa(kernel_calls, monkeypatch):
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    model = kernel_llama()
    prompt = token_ids(model, batch=1, length=10)
    fused = patch_model(copy.deepcopy(model), "flash")
    fused.generate(prompt, max_new_tokens=3, do_sample=False, cache_implementation="static", disable_compile=True)
    assert kernel_calls["decode_attention"] == 0
