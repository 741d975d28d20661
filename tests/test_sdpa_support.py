"""Masked grouped-query calls go to SDPA with the key/value heads as they are where SDPA fuses them.

The probe itself needs CUDA (`sdpa_support.fuses_masked_call` is False on the CPU); here it is forced
on, and static-cache generation (whose every step is a masked call) must still give the unpatched
model's tokens, through SDPA calls with ``enable_gqa`` under a mask and without the decode kernel.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_llama

from hf_efficient_attn import dispatch, fused_path, patch_model, sdpa_support


def test_on_the_cpu_no_masked_call_counts_as_fused():
    query, key = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 16, 8)
    assert not sdpa_support.fuses_masked_call(query, key, torch.ones(1, 1, 1, 16, dtype=torch.bool))


def test_the_probe_stays_a_constant_when_compiled_lengths_change(monkeypatch):
    """Under torch.compile a length that changed between calls becomes a symbol; the probe's sizes stay
    constants (lengths fixed), so a masked call traces in one graph for every length and asks the probe
    about one query or several, the heads and the mask's broadcast only."""
    asked = []
    monkeypatch.setattr(sdpa_support, "_probe_cached", lambda *args: asked.append(args[2]) or True)

    def masked_call(query, key, mask):
        fused = sdpa_support._probe(0, query.dtype, sdpa_support.probe_sizes(query, key, mask), mask.dtype, False)
        return query * (2.0 if fused else 3.0)

    compiled = torch.compile(masked_call, fullgraph=True)
    for queries, keys in ((5, 7), (9, 13), (1, 20), (1, 31)):
        query, key = torch.randn(1, 4, queries, 8), torch.randn(1, 2, keys, 8)
        mask = torch.ones(1, 1, queries, keys, dtype=torch.bool)
        torch.testing.assert_close(compiled(query, key, mask), query * 2.0)
    several = (4, sdpa_support.PROBE_QUERIES, 8, 2, sdpa_support.PROBE_KEYS, 1, sdpa_support.PROBE_QUERIES,
               sdpa_support.PROBE_KEYS)
    one = (4, 1, 8, 2, sdpa_support.PROBE_KEYS, 1, 1, sdpa_support.PROBE_KEYS)
    assert set(asked) == {several, one}


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every SDPA call's (key/value heads < query heads, under a mask, enable_gqa) from our paths."""
    calls = []
    original = F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        mask = kwargs.get("attn_mask", args[0] if args else None)
        calls.append((key.shape[1] < query.shape[1], mask is not None, bool(kwargs.get("enable_gqa", False))))
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)  # the one function every path calls
    return calls


@pytest.mark.parametrize(("variant", "options"), [("flash", {}), ("sliding", {"window": 5, "sink_tokens": 2}),
                                                  ("sparse", {"block_size": 4, "local_blocks": 2})])
def test_forced_fused_masked_gqa_keeps_static_generation_exact(variant, options, sdpa_calls, monkeypatch):
    model = tiny_llama()
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation="static")
    reference = patch_model(copy.deepcopy(model), variant, backend="reference", **options)
    expected = reference.generate(ids, **settings) if variant != "flash" else model.generate(ids, **settings)
    decode_kernel_calls = []
    monkeypatch.setattr(sdpa_support, "fuses_masked_call", lambda *args: True)
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)  # the CUDA rule, in the CPU run
    monkeypatch.setattr(fused_path, "DECODE_UNDER_MASK_MIN_KEYS", 0)
    monkeypatch.setattr(fused_path, "decode_under_key_mask", lambda *args: decode_kernel_calls.append(1))
    monkeypatch.setattr(fused_path, "plan", lambda *args: "forced chunked in this test")
    sdpa_calls.clear()
    patched = patch_model(copy.deepcopy(model), variant, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fused_path.FusedPathFallbackWarning)  # the forced chunked route says why
        got = patched.generate(ids, **settings)
    assert torch.equal(got, expected)
    assert not decode_kernel_calls
    grouped_masked = [call for call in sdpa_calls if call[0] and call[1]]
    assert grouped_masked and all(enable_gqa for _, _, enable_gqa in grouped_masked)



def test_the_probe_is_a_constant_of_a_fullgraph_trace(monkeypatch):
    """Under torch.compile the probe runs once while tracing and its answer is baked into the graph."""
    answers = []

    def probe(*args):
        answers.append(args)
        return True

    monkeypatch.setattr(sdpa_support, "_probe_cached", probe)

    def step(x):
        fused = sdpa_support._probe(0, torch.bfloat16, (4, 1, 8, 2, 16, 1, 1, 16), torch.bool, False)
        return x * 2 if fused else x * 3

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))
    assert len(answers) == 1


@pytest.mark.parametrize("cudnn_before", [True, False])
def test_without_cudnn_switches_cudnn_off_for_the_call_only(cudnn_before):
    seen = []

    def attend(query, key, value):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return query + key + value

    torch.backends.cuda.enable_cudnn_sdp(cudnn_before)
    try:
        ones = torch.ones(2)
        assert torch.equal(sdpa_support.without_cudnn(attend)(ones, ones, ones), torch.full((2,), 3.0))
        assert seen == [False] and torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)


def test_without_cudnn_keeps_cudnn_where_the_caller_left_sdpa_nothing_else():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seen = []

    def attend(query, key, value):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return query

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        sdpa_support.without_cudnn(attend)(torch.ones(1), None, None)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]):
        sdpa_support.without_cudnn(attend)(torch.ones(1), None, None)
    assert seen == [True, False]


def cudnn_by_forward(model, monkeypatch):
    """Run ``model`` under the CUDA rule (forced) and note, for each of its forwards, whether cuDNN was on
    during each SDPA call: returns the list of forwards, filled as the model runs."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    monkeypatch.setattr(fused_path, "plan", lambda *args: "forced off the kernels in this test")
    monkeypatch.setattr(dispatch, "_PLANNED_SHAPES", sdpa_support.ShapeTally())
    forwards = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        forwards[-1].append(torch.backends.cuda.cudnn_sdp_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model.register_forward_pre_hook(lambda module, args: forwards.append([]))
    return forwards


@pytest.mark.parametrize(("variant", "options"), [("flash", {}), ("sliding", {"window": 64}),
                                                  ("sparse", {"block_size": 4, "local_blocks": 1, "global_blocks": 1})])
def test_new_shapes_run_sdpa_without_cudnn(variant, options, monkeypatch):
    """Where the kernels run (the CUDA rule, forced here), SDPA runs with cuDNN switched off (cuDNN would
    build a graph for a shape it has not met) for every decoding step over a dynamic cache and for a prompt
    whose shape is planned for the first time; a prompt met before and a static cache's steps (under a
    mask, which only cuDNN fuses with grouped heads) keep cuDNN. Tokens equal the unpatched model's (or, for the approximate pattern, the reference
    backend's), and the flag is restored."""
    model = tiny_llama()
    ids = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    reference = model if variant == "flash" else patch_model(copy.deepcopy(model), variant, backend="reference",
                                                               **options)
    expected = {cache: reference.generate(ids, **settings, cache_implementation=cache) for cache in ("dynamic", "static")}
    patched = patch_model(copy.deepcopy(model), variant, **options)
    forwards = cudnn_by_forward(patched, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fused_path.FusedPathFallbackWarning)
        # the static prompt's keys past its tokens are dropped: the same SDPA call as the dynamic prompt's
        for cache, prompt_cudnn in (("dynamic", False), ("dynamic", True), ("static", True)):
            forwards.clear()
            assert torch.equal(patched.generate(ids, **settings, cache_implementation=cache), expected[cache])
            assert len(forwards) == settings["max_new_tokens"] and all(forwards)
            steps = [set(calls) for calls in forwards[1:]]
            if cache == "dynamic":
                assert steps == [{False}] * len(steps)
            if variant == "sparse":
                continue  # its prompt and static steps are no SDPA route (the chunked engine here, Triton on CUDA)
            assert set(forwards[0]) == {prompt_cudnn}, cache  # the prompt: cuDNN once its shape was met
            if cache == "static":  # a static step is under a mask (its slots by position): cuDNN takes it
                assert steps == [{True}] * len(steps)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_long_prompts_keep_cudnn_even_when_new(monkeypatch):
    """Past `UNSEEN_PROMPT_MAX_TOKENS` cuDNN's speed outweighs its graph: a new long prompt keeps it."""
    model = tiny_llama()
    patched = patch_model(copy.deepcopy(model), "flash")
    forwards = cudnn_by_forward(patched, monkeypatch)
    monkeypatch.setattr(dispatch, "UNSEEN_PROMPT_MAX_TOKENS", 24)
    with torch.no_grad():
        for length, cudnn in ((24, False), (25, True)):  # longer than a decoding step's 16 queries
            forwards.clear()
            patched(torch.randint(3, 97, (1, length)))
            assert set(forwards[0]) == {cudnn}


def test_a_padded_prompt_keeps_cudnn_even_when_new(monkeypatch):
    """A prompt under a padding mask keeps cuDNN (the one fused kernel for grouped heads under a mask)."""
    patched = patch_model(copy.deepcopy(tiny_llama()), "flash")
    forwards = cudnn_by_forward(patched, monkeypatch)
    ids = torch.randint(3, 97, (2, 20))
    padding = torch.ones_like(ids)
    padding[0, :3] = 0
    with torch.no_grad():
        patched(ids, attention_mask=padding)
    assert set(forwards[0]) == {True}


def test_the_shape_tally_counts_and_forgets_the_oldest_past_its_capacity():
    tally = sdpa_support.ShapeTally(capacity=2)
    assert [tally.count("a"), tally.count("a"), tally.count("b"), tally.count("c"), tally.count("a")] == [1, 2, 1, 1, 1]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_rows_that_see_no_key_are_zeroed(compiled):
    """Rows whose query sees no key come out as zeros and every other row as it was, eager and compiled for
    the CPU (where the keys are counted by a matrix product instead of an ``any``)."""
    generator = torch.Generator().manual_seed(0)
    output = torch.randn(2, 4, 3, 8, generator=generator)
    visible = torch.rand(2, 1, 3, 20, generator=generator) > 0.5
    visible[0, 0, 1] = False
    visible[1, 0, 2] = False
    zero = sdpa_support.zero_rows_without_keys
    if compiled:
        torch._dynamo.reset()
        zero = torch.compile(zero, fullgraph=True)
    expected = output.double() * visible.double().sum(-1, keepdim=True).clamp(max=1)
    got = zero(output, visible)
    assert torch.equal(got.double(), expected)
    assert got[0, :, 1].abs().sum() == 0 and got[1, :, 2].abs().sum() == 0 and got[0, :, 0].abs().sum() > 0
