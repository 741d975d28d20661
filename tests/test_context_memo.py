"""One context per forward: derived in the first layer, shared by the others, never across forwards or
inputs it was not derived from; the dispatch rule's remembered routes likewise.

Counts come from wrapping `context_memo.build_context`; outputs are compared with the unpatched model.
"""

from __future__ import annotations

import gc

import pytest
import torch
from tiny_models import tiny_llama

from hf_efficient_attn import context_memo, dispatch, patch_model
from hf_efficient_attn.context_memo import ContextMemo
from hf_efficient_attn.layout import make_layout


@pytest.fixture
def derivations(monkeypatch):
    """How many contexts were derived (not found in the memo)."""
    calls = []
    original = context_memo.build_context

    def counted(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(context_memo, "build_context", counted)
    return calls


def _get(memo: ContextMemo, query, key, mask, position_ids=None, causal=True, scaling=0.5):
    return memo.get(query=query, key=key, attention_mask=mask, causal=causal, scaling=scaling, dropout=0.0,
                    cache_window=None, position_ids=position_ids, native_window=None)


def test_layers_of_one_forward_share_one_context_and_match_the_unpatched_model(derivations):
    model = tiny_llama(num_hidden_layers=4)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        patch_model(model, "flash")
        derivations.clear()
        got = model(input_ids=ids, attention_mask=mask).logits
    assert len(derivations) == 1  # four layers, one derivation
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_each_decoding_step_derives_its_own_context(derivations):
    model = patch_model(tiny_llama(num_hidden_layers=3), "sliding", window=4)
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(1))
    derivations.clear()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert len(derivations) == 5  # the prompt and four decoding steps, each once for three layers


def test_different_inputs_get_different_contexts():
    memo = ContextMemo()
    query, key = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
    layout = make_layout(tokens=5, padding=None)
    first = _get(memo, query, key, layout)
    assert _get(memo, query, key, layout) is first
    assert _get(memo, query, key, make_layout(tokens=5, padding=None)) is not first  # another forward
    assert _get(memo, query, key, layout, scaling=0.25) is not first
    assert _get(memo, query, key, layout, causal=False) is not first
    assert _get(memo, query, torch.randn(1, 2, 6, 4), layout) is not first
    with torch.no_grad():
        assert _get(memo, query, key, layout) is not first


def test_an_entry_goes_with_its_layout():
    memo = ContextMemo()
    query, key = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    layout = make_layout(tokens=3, padding=torch.ones(1, 3, dtype=torch.bool))
    _get(memo, query, key, layout)
    assert len(memo) == 1
    del layout
    gc.collect()
    assert len(memo) == 0


def test_a_callers_mask_and_unbound_position_ids_are_not_remembered(derivations):
    memo = ContextMemo()
    query, key = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    dense = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    _get(memo, query, key, dense)
    _get(memo, query, key, dense)
    ids = torch.arange(3)[None]
    _get(memo, query, key, None, position_ids=ids)
    ids[0, 2] = 0  # a caller may reuse its position ids in place: a new document starts
    context = _get(memo, query, key, None, position_ids=ids)
    assert len(derivations) == 4 and len(memo) == 0
    assert context.query_documents is not None and context.query_documents[0].tolist() == [0, 0, 1]


def test_position_ids_of_a_forward_key_its_documents():
    memo = ContextMemo()
    query, key = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    layout = make_layout(tokens=4, padding=None)
    plain = _get(memo, query, key, layout, position_ids=torch.arange(4)[None])
    packed = _get(memo, query, key, layout, position_ids=torch.tensor([[0, 1, 0, 1]]))
    assert plain.query_documents is None
    assert packed.query_documents[0].tolist() == [0, 0, 1, 1]


def test_a_remembered_route_is_the_route_the_rule_takes():
    from hf_efficient_attn.fused_path import KernelMask

    memo = ContextMemo()
    query, key = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    layout = make_layout(tokens=6, padding=None)
    context = _get(memo, query, key, layout)
    first = dispatch.choose(query, key, key, context, "auto", KernelMask(), "flash")
    assert context.routes and first == ("sdpa", None)
    assert dispatch.choose(query, key, key, context, "auto", KernelMask(), "flash") == first
    narrow = KernelMask(window=(2, None))
    assert dispatch.choose(query, key, key, context, "auto", narrow, "sliding")[0] == "chunked"
    assert len(context.routes) == 2
