"""torch.compile(fullgraph=True) on patched models: no graph break, and the same numbers as eager.

Dynamo's ``explain`` counts graph breaks of a forward; a compiled training step (forward and backward
through AOT autograd) must give the eager step's loss and gradients. These run the CPU paths (SDPA and the
chunked engine); `tests/kernels/test_compile_kernels.py` does the same on the fused kernels.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from packaging.version import Version
from tiny_models import tiny_llama, tiny_vit, tiny_whisper, vit_pixels, whisper_features

from hf_efficient_attn import patch_model

DECODER_VARIANTS = {
    "flash": {},
    "sliding": {"window": 4},
    "sliding-sinks": {"window": 4, "sink_tokens": 2},
    "sparse": {"block_size": 4, "local_blocks": 2},
    "lsh": {"bucket_size": 4, "num_hashes": 2, "sink_tokens": 0},
    "lsh-sinks": {"bucket_size": 4, "num_hashes": 2, "sink_tokens": 2},
}
VIT_VARIANTS = {
    "flash": {},
    "sliding": {"window": 4},
    "sliding-2d": {"window": 2, "neighbourhood": "2d"},
    "sparse": {"block_size": 8, "local_blocks": 1},
    "lsh": {"bucket_size": 8, "num_hashes": 2},
    "lsh-sinks": {"bucket_size": 8, "num_hashes": 2, "sink_tokens": 1},
    "axial": {},
}


def graph_breaks(fn) -> int:
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._dynamo.explain(fn)().graph_break_count


def variant_of(name: str) -> str:
    return name.split("-")[0]


def llama_inputs(padded: bool) -> dict:
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "use_cache": False}
    if padded:
        mask = torch.ones_like(ids)
        mask[1, :2] = 0
        inputs["attention_mask"] = mask
    return inputs


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name", sorted(DECODER_VARIANTS))
def test_llama_forward_has_no_graph_break(name, padded):
    model = patch_model(tiny_llama(), variant_of(name), **DECODER_VARIANTS[name])
    inputs = llama_inputs(padded)
    assert graph_breaks(lambda: model(**inputs).logits) == 0


def test_a_partly_patched_model_compiles_in_a_fresh_process(monkeypatch):
    """Unpatched layers run the shared exact variant, built when the model is patched, not in the first
    call (which `torch.compile` may be tracing: building a variant there broke the graph)."""
    from hf_efficient_attn import interface

    monkeypatch.setattr(interface, "_EXACT", [])  # as in a process that has run no attention call yet
    model = patch_model(tiny_llama(), "sliding", window=4, layers=[0])
    assert graph_breaks(lambda: model(**llama_inputs(padded=False)).logits) == 0


@pytest.mark.parametrize("name", ["flash", "sliding", "sparse", "lsh", "lsh-sinks"])
def test_whisper_forward_has_no_graph_break(name):
    """No break of ours: as many as the unpatched model's, none where transformers' Whisper traces whole
    (with torch 2.11, Dynamo breaks on the `copy.deepcopy` in transformers 5.17's Whisper decoder)."""
    whisper = tiny_whisper()
    features = whisper_features(whisper)
    decoder_ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(1))
    unpatched = graph_breaks(lambda: whisper(input_features=features, decoder_input_ids=decoder_ids).logits)
    model = patch_model(copy.deepcopy(whisper), variant_of(name), **DECODER_VARIANTS[name])
    assert graph_breaks(lambda: model(input_features=features, decoder_input_ids=decoder_ids).logits) == unpatched
    if Version(torch.__version__).release >= (2, 13):
        assert unpatched == 0, "transformers' Whisper traces whole on this torch"


@pytest.mark.parametrize("name", sorted(VIT_VARIANTS))
def test_vit_forward_has_no_graph_break(name):
    vit = tiny_vit()
    model = patch_model(vit, variant_of(name), **VIT_VARIANTS[name])
    pixels = vit_pixels(vit)
    assert graph_breaks(lambda: model(pixel_values=pixels).logits) == 0


def training_step(model: torch.nn.Module, call, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = call(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name", sorted(DECODER_VARIANTS))
def test_compiled_training_step_equals_eager(name, padded):
    model = patch_model(tiny_llama(), variant_of(name), **DECODER_VARIANTS[name]).train()
    inputs = llama_inputs(padded)
    eager_loss, eager_grads = training_step(model, model, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    loss, grads = training_step(model, compiled, inputs)
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=0)
    assert grads.keys() == eager_grads.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], eager_grads[key], atol=1e-6, rtol=1e-4, msg=key)


def test_compiled_vit_equals_eager():
    vit = tiny_vit()
    pixels = vit_pixels(vit)
    for name, options in VIT_VARIANTS.items():
        model = patch_model(copy.deepcopy(vit), variant_of(name), **options)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(pixel_values=pixels).logits, model(pixel_values=pixels).logits,
                                   atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("name", sorted(DECODER_VARIANTS))
def test_prompts_of_new_lengths_recompile_with_dynamic_sizes_and_equal_eager(name):
    """A compiled forward met with a second prompt length recompiles with the length as a symbol
    (torch.compile's automatic dynamic shapes); every host fact the path reads must still be a constant
    there (no symbol may reach `torch.compiler.assume_constant_result`), and the logits stay eager's.

    What is tested is the trace, so the graphs run through AOTAutograd without inductor's code
    generation: on the CPU inductor's vectorizer simplifies the symbolic indices of the LSH buckets'
    reshapes for many minutes on a cold cache (the other tests compile with inductor at fixed sizes)."""
    torch._dynamo.reset()
    model = patch_model(tiny_llama(), variant_of(name), **DECODER_VARIANTS[name]).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for length in (12, 17, 23):
            ids = torch.randint(3, 97, (2, length), generator=torch.Generator().manual_seed(length))
            torch.testing.assert_close(compiled(input_ids=ids, use_cache=False).logits,
                                       model(input_ids=ids, use_cache=False).logits, rtol=1e-5, atol=1e-5)
