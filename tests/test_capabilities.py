"""The capability table: what each call needs, that the rule obeys the table, and that the docs show it.

Calls are built as a model builds them (`build_context` over a `make_layout` layout). The table's rows are
checked against the rule's behaviour: a call with a need SDPA lacks never takes the SDPA route, and
forcing cuDNN or the Triton kernels onto a call with a need they lack raises an error naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama

from hf_efficient_attn import capabilities, dispatch, library_routes, patch_model
from hf_efficient_attn.backends import cudnn_sdpa, fa4, operands
from hf_efficient_attn.capabilities import CUDNN, FA4, SDPA, TRITON, Need, call_needs
from hf_efficient_attn.context import build_context
from hf_efficient_attn.fused_path import FusedPathError, KernelMask
from hf_efficient_attn.kernels import checks, neighbourhood_function
from hf_efficient_attn.layout import make_layout
from hf_efficient_attn.variants import block_layout as layouts

DOCS = Path(__file__).resolve().parents[1] / "docs" / "kernels-and-backends.md"


def tensors(q_len: int, k_len: int, *, kv_heads: int = 2, grad: bool = False):
    generator = torch.Generator().manual_seed(q_len * 31 + k_len)
    q = torch.randn(1, 4, q_len, 8, generator=generator).requires_grad_(grad)
    k, v = (torch.randn(1, kv_heads, k_len, 8, generator=generator) for _ in range(2))
    return q, k, v


def context_for(q, k, *, causal=True, padding=None, static_start=None, dense_mask=None, dropout=0.0,
                cache_window=None, tokens=None, position_ids=None, native_window=None):
    mask = dense_mask
    if padding is not None or static_start is not None or tokens is not None:
        mask = make_layout(tokens=tokens if tokens is not None else k.shape[-2], padding=padding,
                           query_start=None if static_start is None else torch.tensor(static_start),
                           query_length=q.shape[-2])
    return build_context(query=q, key=k, attention_mask=mask, causal=causal, scaling=0.3, dropout=dropout,
                         cache_window=cache_window, position_ids=position_ids, native_window=native_window)


NO_PATTERN = KernelMask()


def needs_of(q, k, pattern=NO_PATTERN, v=None, **context) -> frozenset[Need]:
    return call_needs(q, k, k if v is None else v, context_for(q, k, **context), pattern).needs


def test_a_pattern_that_covers_the_call_needs_nothing_of_a_backend():
    q, k, _ = tensors(12, 12, kv_heads=4)
    assert needs_of(q, k, causal=False) == frozenset()
    assert needs_of(q, k) == {Need.CAUSAL}
    # a window reaching every key, with sinks, needs neither the window nor the sinks
    assert needs_of(q, k, KernelMask(window=(12, None), sink_tokens=2)) == {Need.CAUSAL}
    # with two sinks, a window of 10 reaches every key the sinks do not cover
    assert needs_of(q, k, KernelMask(window=(10, None), sink_tokens=2)) == {Need.CAUSAL}
    assert needs_of(q, k, KernelMask(window=(9, None), sink_tokens=2)) == {Need.CAUSAL, Need.WINDOW, Need.SINKS}
    # bidirectional: the right side counts too
    assert needs_of(q, k, KernelMask(window=(None, 4), global_tokens=1), causal=False) == {Need.WINDOW, Need.GLOBALS}


def test_layouts_neighbourhoods_and_native_windows_are_needs_of_their_own():
    q, k, _ = tensors(12, 12, kv_heads=4)
    layout = layouts.register_layout("capabilities-test", lambda blocks, causal: torch.ones(1, blocks, blocks,
                                                                                              dtype=torch.bool))
    assert needs_of(q, k, KernelMask(block_layout=layout, layout_is_dense=True)) == {Need.CAUSAL}
    assert needs_of(q, k, KernelMask(block_layout=layout, layout_is_dense=False, sink_tokens=1)) == {
        Need.CAUSAL, Need.BLOCK_LAYOUT, Need.SINKS}
    assert needs_of(q, k, native_window=12) == {Need.CAUSAL}
    assert needs_of(q, k, native_window=8) == {Need.CAUSAL, Need.NATIVE_WINDOW}


def test_context_and_tensors_give_the_other_needs():
    q, k, _ = tensors(3, 12, kv_heads=2, grad=True)
    padding = torch.ones(1, 12, dtype=torch.bool)
    padding[0, 0] = False
    assert needs_of(q, k, padding=padding, dropout=0.1) == {
        Need.CAUSAL, Need.DECODE, Need.KEY_PADDING, Need.GROUPED_HEADS, Need.BACKWARD, Need.DROPOUT}
    with torch.no_grad():
        assert Need.BACKWARD not in needs_of(q, k)
    q, k, v = tensors(3, 12)
    assert Need.BACKWARD not in needs_of(q, k, v=v)
    assert Need.BACKWARD in needs_of(q, k, v=v.requires_grad_())  # the value alone may need a gradient
    q, k, _ = tensors(1, 16, kv_heads=4)
    assert Need.STATIC_CACHE in needs_of(q, k, static_start=5)
    # a bounded cache returned its 2 kept keys and a window of 8 (7 earlier tokens and the new one)
    q, k, _ = tensors(1, 10, kv_heads=4)
    assert Need.TRIMMED_CACHE in needs_of(q, k, tokens=40, cache_window=8)
    q, k, _ = tensors(6, 6, kv_heads=4)
    assert needs_of(q, k, dense_mask=torch.ones(1, 1, 6, 6, dtype=torch.bool)) == {Need.CAUSAL, Need.CALLER_MASK}
    documents = torch.tensor([[0, 1, 2, 0, 1, 2]])
    assert Need.PACKED_DOCUMENTS in needs_of(q, k, position_ids=documents)


def test_refusals_name_the_first_missing_need_then_device_then_dtype():
    call = capabilities.CallNeeds(frozenset({Need.CAUSAL, Need.KEY_PADDING, Need.DROPOUT}), torch.float32, "cpu")
    assert CUDNN.refusal(call) == "cuDNN attention cannot run a padding mask"
    assert TRITON.refusal(call) == "the Triton kernels cannot run attention dropout"
    assert SDPA.refusal(call) is None
    plain = dataclasses.replace(call, needs=frozenset({Need.CAUSAL}))
    assert CUDNN.refusal(plain) == "cuDNN attention runs on cuda only, not on cpu"
    assert CUDNN.refusal(dataclasses.replace(plain, device_type="cuda")) == (
        "torch.float32: cuDNN attention runs float16 and bfloat16 only; cast to one of them")
    assert CUDNN.refusal(dataclasses.replace(plain, device_type="cuda", dtype=torch.bfloat16)) is None


@pytest.mark.parametrize("case", ["window", "padding", "static", "caller mask", "dropout", "native window"])
def test_the_rule_obeys_the_table(case, monkeypatch):
    """A call with one need: SDPA's route only where SDPA runs it; forcing cuDNN or Triton onto it raises
    the table's refusal exactly where their rows say no."""
    q, k, v = tensors(1 if case == "static" else 8, 16 if case == "static" else 8, kv_heads=4)
    pattern = KernelMask(window=(3, None) if case == "window" else (None, None))
    padding = torch.ones(1, 8, dtype=torch.bool)
    padding[0, :2] = False
    context = context_for(
        q, k,
        padding=padding if case == "padding" else None,
        static_start=7 if case == "static" else None,
        dense_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool).tril() if case == "caller mask" else None,
        dropout=0.1 if case == "dropout" else 0.0,
        native_window=4 if case == "native window" else None,
    )
    needs = call_needs(q, k, v, context, pattern)
    need = next(need for need in Need if need in needs.needs - {Need.CAUSAL, Need.DECODE})  # the case's own
    route, _ = dispatch.choose(q, k, v, context, "auto", pattern, "sliding")
    assert (route == "sdpa") == (SDPA.refusal(needs) is None)

    # cuDNN 'available' on this CPU and its float32 tensors: only the table can refuse
    on_cpu = dataclasses.replace(CUDNN, devices=frozenset({"cpu"}), dtypes=frozenset({torch.float32}))
    monkeypatch.setattr(cudnn_sdpa, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cudnn_sdpa, "supports", lambda *args, **kwargs: None)
    monkeypatch.setattr(library_routes, "CUDNN", on_cpu)
    for backend, row in (("sdpa", SDPA), ("cudnn", on_cpu), ("triton", TRITON)):
        refusal = row.refusal(needs)
        if need not in row.runs:
            assert refusal == f"{row.title} cannot run {need.value}"
            with pytest.raises(FusedPathError, match=re.escape(refusal)):
                dispatch.choose(q, k, v, context, backend, pattern, "sliding")
        elif backend != "triton":
            assert dispatch.choose(q, k, v, context, backend, pattern, "sliding")[0] == backend


def test_head_sizes_in_the_table_are_the_backends_own_limits():
    assert ", ".join(map(str, checks.SUPPORTED_HEAD_DIMS)) in TRITON.head_dims
    assert f"1 to {neighbourhood_function.MAX_HEAD_DIM}" in TRITON.head_dims
    assert f"up to {cudnn_sdpa.MAX_HEAD_DIM} ({cudnn_sdpa.MAX_HEAD_DIM_HOPPER} on Hopper)" in CUDNN.head_dims
    assert ", ".join(map(str, fa4.HEAD_DIMS)) in FA4.head_dims
    assert CUDNN.dtypes == FA4.dtypes == set(operands.DTYPES) and TRITON.dtypes == set(checks.SUPPORTED_DTYPES)


def test_the_docs_show_the_current_table():
    assert capabilities.capability_table() in DOCS.read_text(), (
        "docs/kernels-and-backends.md must hold capabilities.capability_table() as printed")


def test_backend_sdpa_runs_what_sdpa_computes_exactly_and_refuses_the_rest():
    base = tiny_llama()
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(ids).logits
        for name, options in (("flash", {}), ("sliding", {"window": 12})):
            model = patch_model(copy.deepcopy(base), name, backend="sdpa", **options)
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
        settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        static = patch_model(copy.deepcopy(base), "flash", backend="sdpa").generate(
            ids, cache_implementation="static", **settings)
        assert torch.equal(static, base.generate(ids, **settings))
        narrow = patch_model(copy.deepcopy(base), "sliding", window=4, backend="sdpa")
        with pytest.raises(FusedPathError, match="backend='sdpa' cannot run this call on torch SDPA exactly: "
                                                 "torch SDPA without a pattern mask cannot run a window band"):
            narrow(ids)
