"""The cuDNN backend where no GPU is needed: availability, `supports`' refusals, the window mapping against
cuDNN's documented band semantics (brute-force masks in float64), the rows that see no key, and the custom
ops' fake and autograd registration, traced on the CPU. The GPU run is `.gpu/cudnn_check.py`'s."""

from __future__ import annotations

import random
import sys
import types

import pytest
import torch
from band_spec import our_mask
from torch.fx.experimental.proxy_tensor import make_fx

from hf_efficient_attn import op_window
from hf_efficient_attn.backends import cudnn_sdpa
from hf_efficient_attn.backends.cudnn_sdpa import Band, cudnn_band, supports, visible_rows

INF = float("inf")


# ---------------------------------------------------------------------------------------------- availability


@pytest.fixture
def probe(monkeypatch):
    """A fresh availability probe with the package present (a stand-in module) and CUDA present, each of which
    a test may take away; the kept answer is cleared before and after."""
    fake = types.ModuleType("cudnn")
    fake.backend_version = lambda: 91900
    monkeypatch.setitem(sys.modules, "cudnn", fake)
    monkeypatch.setattr(cudnn_sdpa, "_find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn_sdpa.unavailable_reason.cache_clear()
    yield fake
    cudnn_sdpa.unavailable_reason.cache_clear()


def test_a_recent_backend_with_cuda_is_available(probe):
    assert cudnn_sdpa.available() is True
    assert cudnn_sdpa.unavailable_reason() is None


def test_without_the_package_it_is_unavailable_and_says_how_to_install(probe, monkeypatch):
    monkeypatch.setattr(cudnn_sdpa, "_find_spec", lambda name: None)
    assert cudnn_sdpa.available() is False
    reason = cudnn_sdpa.unavailable_reason()
    assert "nvidia-cudnn-frontend is not installed" in reason and "hf-efficient-attn[cudnn]" in reason


def test_without_cuda_it_is_unavailable_before_loading_the_library(probe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    probe.backend_version = lambda: pytest.fail("the library was asked for its version without CUDA")
    assert cudnn_sdpa.available() is False
    assert "CUDA is not available" in cudnn_sdpa.unavailable_reason()


def test_an_old_backend_is_refused_with_both_versions(probe):
    probe.backend_version = lambda: 90800
    assert cudnn_sdpa.available() is False
    reason = cudnn_sdpa.unavailable_reason()
    assert "9.8.0" in reason and "9.10.2" in reason


def test_the_probe_never_raises(probe):
    def broken():
        raise RuntimeError("libcudnn.so.9: cannot open shared object file")

    probe.backend_version = broken
    assert cudnn_sdpa.available() is False
    assert "RuntimeError: libcudnn.so.9" in cudnn_sdpa.unavailable_reason()


# ---------------------------------------------------------------------------------------------- supports


def tensors(q_len=16, k_len=16, q_heads=4, kv_heads=2, dim=64, batch=2, dtype=torch.bfloat16):
    q = torch.zeros(batch, q_heads, q_len, dim, dtype=dtype)
    k = torch.zeros(batch, kv_heads, k_len, dim, dtype=dtype)
    return q, k, k.clone()


VALID_CALLS = {
    "causal": (tensors(), dict(causal=True)),
    "causal window": (tensors(), dict(causal=True, window_left=4)),
    "bidirectional band": (tensors(), dict(causal=False, window_left=3, window_right=3)),
    "cache, key lengths": (tensors(q_len=2, k_len=16), dict(causal=True, key_lengths=torch.tensor([16, 5]))),
    "gqa 16 / 4, training": (tensors(q_heads=16, kv_heads=4, dim=128), dict(causal=True, needs_grad=True)),
}


@pytest.mark.parametrize("name", sorted(VALID_CALLS))
def test_a_call_it_runs_is_refused_on_the_cpu_only_for_the_device(name):
    (q, k, v), flags = VALID_CALLS[name]
    assert supports(q, k, v, **flags) == "the tensors are on 'cpu'; cuDNN attention runs CUDA tensors only"


def _refusal(change):
    q, k, v = tensors()
    flags = dict(causal=True)
    return change(q, k, v, flags)


REFUSALS = {
    "float32": (lambda q, k, v, f: (q.float(), k.float(), v.float(), f), "runs float16 and bfloat16"),
    "mixed dtypes": (lambda q, k, v, f: (q, k.half(), v, f), "must share a dtype"),
    "head dim 60": (lambda q, k, v, f: (*tensors(dim=60), f), "head_dim=60: cuDNN attention needs a multiple of 8"),
    "head dim 136": (lambda q, k, v, f: (*tensors(dim=136), f), "multiple of 8 up to 128"),
    "6 heads over 4": (lambda q, k, v, f: (*tensors(q_heads=6, kv_heads=4), f), "must be a multiple of key/value"),
    "3-D query": (lambda q, k, v, f: (q[0], k, v, f), "query must be a 4-D tensor"),
    "batch differs": (lambda q, k, v, f: (q, k[:1], v[:1], f), "batch sizes differ"),
    "value length differs": (lambda q, k, v, f: (q, k, v[:, :, :3], f), "differ in heads or length"),
    "negative window": (lambda q, k, v, f: (q, k, v, {**f, "window_left": -2}), "window_left must be None or an int"),
    "more queries than keys": (lambda q, k, v, f: (*tensors(q_len=8, k_len=4), f), "more queries (8) than keys (4)"),
    "left 0": (lambda q, k, v, f: (q, k, v, {**f, "window_left": 0}), "window=(0, None) causal"),
    "right 0, bidirectional": (lambda q, k, v, f: (q, k, v, {"causal": False, "window_right": 0}),
                               "window=(None, 0) bidirectional"),
    "cache window under key lengths": (
        lambda q, k, v, f: (*tensors(q_len=4, k_len=10), {**f, "window_left": 3, "key_lengths": torch.tensor([10, 7])}),
        "needs left bound -3 and right bound 6; bottom-right is out with key_lengths"),
    "band, more queries": (lambda q, k, v, f: (*tensors(q_len=8, k_len=4), {"causal": False, "window_left": 2}),
                           "sliding windows and bottom-right alignment with q_len <= k_len"),
    "key lengths shape": (lambda q, k, v, f: (q, k, v, {**f, "key_lengths": torch.tensor([3])}),
                          "key_lengths must be an int tensor of shape [batch] = [2], got (1,)"),
    "key lengths dtype": (lambda q, k, v, f: (q, k, v, {**f, "key_lengths": torch.tensor([3.0, 4.0])}),
                          "key_lengths.dtype=torch.float32"),
    "1 x 1 backward": (lambda q, k, v, f: (*tensors(q_len=1, k_len=1), {**f, "needs_grad": True}), "s_q = s_kv = 1"),
    "no keys": (lambda q, k, v, f: (*tensors(k_len=0), {"causal": False}), "0 keys"),
    "devices differ": (lambda q, k, v, f: (q, k, v, {**f, "key_lengths": torch.tensor([3, 4], device="meta")}),
                       "different devices"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_each_refusal_says_why(name):
    change, expected = REFUSALS[name]
    q, k, v, flags = _refusal(change)
    reason = supports(q, k, v, **flags)
    assert reason is not None and expected in reason, reason


def test_attention_raises_the_reason():
    q, k, v = tensors(dtype=torch.float32)
    with pytest.raises(ValueError, match="cannot run this call: query.dtype=torch.float32"):
        cudnn_sdpa.attention(q, k, v, scale=0.125, causal=True)
    with pytest.raises(ValueError, match="runs CUDA tensors only"):
        cudnn_sdpa.attention(*tensors(), scale=0.125, causal=True, window_left=4)


# ---------------------------------------------------------------------------------------------- the mapping


def cudnn_mask(band: Band, q_len, k_len, seq_len_kv, padded) -> torch.Tensor:
    """float64 ``[batch, q_len, k_len]`` under cuDNN's documented semantics (Attention.md and the reference
    of its test_mhas.py): the right bound masks ``j > d + r``, the left bound ``j <= d - l``, with ``d = i``
    top-left and ``d = i + s_kv - s_q`` bottom-right (each row's lengths under the padding mask); the
    padding mask hides keys at or past ``seq_len_kv`` and queries at or past ``seq_len_q`` (here ``q_len``)."""
    seq_len_q = torch.full_like(seq_len_kv, q_len).to(torch.float64)[:, None, None]
    seq_len_kv = seq_len_kv.to(torch.float64)[:, None, None]
    i = torch.arange(q_len, dtype=torch.float64)[None, :, None]
    j = torch.arange(k_len, dtype=torch.float64)[None, None, :]
    mask = torch.zeros(seq_len_kv.shape[0], q_len, k_len, dtype=torch.float64)
    if band.alignment is not None:
        d = i if band.alignment == "top_left" else i + (seq_len_kv - seq_len_q if padded else k_len - q_len)
        mask = mask.masked_fill(j > d + band.right_bound, -INF)
        if band.left_bound is not None:
            mask = mask.masked_fill(j <= d - band.left_bound, -INF)
    if padded:
        mask = mask.masked_fill((j >= seq_len_kv) | (i >= seq_len_q), -INF)
    return mask


def random_call(rng: random.Random, longest: int):
    q_len = rng.randint(1, longest)
    k_len = rng.choice([q_len, rng.randint(1, longest), q_len + rng.randint(0, longest)])
    side = lambda: rng.choice([None, rng.randint(0, 3), rng.randint(0, longest + 4)])  # noqa: E731
    return q_len, k_len, rng.random() < 0.5, side(), side(), rng.random() < 0.5


def test_the_band_lets_through_exactly_our_pairs():
    rng = random.Random(0)
    accepted = 0
    for case in range(3000):
        q_len, k_len, causal, left, right, padded = random_call(rng, 300 if case % 20 == 0 else 40)
        lengths = (torch.tensor([rng.randint(0, k_len) for _ in range(3)] + [k_len]) if padded
                   else torch.full((1,), k_len))
        ours = our_mask(q_len, k_len, causal, left, right, lengths)
        band = cudnn_band(causal, left, right, q_len, k_len, padded=padded)
        call = (q_len, k_len, causal, left, right, padded, lengths.tolist(), band)
        assert torch.equal(visible_rows(q_len, k_len, causal, left, right, lengths), ours.isfinite().any(-1)), call
        if isinstance(band, str):
            continue
        accepted += 1
        theirs = cudnn_mask(band, q_len, k_len, lengths, padded)
        assert torch.equal(ours.isfinite(), theirs.isfinite()), call
    assert accepted > 2000  # most calls map; the refusals are checked below


def expressible(q_len, k_len, causal, left, right, padded) -> bool:
    """Whether any band cuDNN documents and validates (top-left or bottom-right, right bound >= 0, left bound
    >= 1 or none, bottom-right with q_len <= k_len), less the two we rule out (sliding windows with more
    queries than keys; bottom-right with key lengths, whose diagonal cuDNN moves with each row's length),
    gives our pairs exactly, for every key length a row may have (each length 0..k_len is one row of the batch
    when padded)."""
    lengths = torch.arange(k_len + 1) if padded else torch.full((1,), k_len)
    ours = our_mask(q_len, k_len, causal, left, right, lengths).isfinite()
    if torch.equal(cudnn_mask(Band(), q_len, k_len, lengths, padded).isfinite(), ours):
        return True
    reach = q_len + k_len + 1
    rights = torch.arange(reach + 1, dtype=torch.float64)[:, None, None, None, None]
    lefts = torch.tensor([INF] + ([] if q_len > k_len else list(range(1, reach + 1))), dtype=torch.float64)
    lefts = lefts[None, :, None, None, None]
    i = torch.arange(q_len, dtype=torch.float64)[:, None]
    j = torch.arange(k_len, dtype=torch.float64)[None, :]
    keys = j[None] < lengths.to(torch.float64)[:, None, None]
    for alignment in ("top_left", "bottom_right"):
        if alignment == "bottom_right" and (q_len > k_len or padded):
            continue
        d = i[None] + (0 if alignment == "top_left" else k_len - q_len)
        theirs = (j <= d + rights) & (j > d - lefts) & keys
        if (theirs == ours).flatten(2).all(-1).any():
            return True
    return False


def test_a_call_is_refused_only_where_no_documented_band_gives_it():
    rng = random.Random(1)
    edges = [(4, 10, True, 3, None, True), (4, 10, True, None, 0, False), (4, 10, False, 0, None, False),
             (4, 10, True, 7, None, True), (6, 3, True, None, None, False), (6, 3, False, 2, None, True),
             (5, 5, False, None, 0, False), (5, 5, True, 1, 0, False), (1, 1, True, None, None, True)]
    cases = edges + [random_call(rng, 9) for _ in range(500)]
    refused = 0
    for q_len, k_len, causal, left, right, padded in cases:
        band = cudnn_band(causal, left, right, q_len, k_len, padded=padded)
        refused += isinstance(band, str)
        call = (q_len, k_len, causal, left, right, padded, band)
        assert isinstance(band, Band) == expressible(q_len, k_len, causal, left, right, padded), call
    assert 50 < refused < len(cases) - 200  # both answers are exercised


def test_the_worked_example():
    assert cudnn_band(True, 3, None, 4, 10, padded=False) == Band("bottom_right", 3, 0)
    assert cudnn_band(True, 8, None, 4, 10, padded=True) == Band("top_left", 2, 6)
    assert isinstance(cudnn_band(True, 3, None, 4, 10, padded=True), str)
    assert cudnn_band(False, 2, 2, 5, 5, padded=False) == Band("top_left", 2, 1)
    # a cache: a real bottom-right causal mask where it can be, the shift in top-left bounds under key lengths
    assert cudnn_band(True, None, None, 16, 4096, padded=False) == Band("bottom_right", None, 0)
    assert cudnn_band(True, None, None, 16, 4096, padded=True) == Band("top_left", None, 4080)
    # sides that mask nothing are dropped: cuDNN's unmasked kernel
    assert cudnn_band(True, None, None, 1, 4096, padded=False) == Band()
    assert cudnn_band(False, 9, 9, 8, 8, padded=True) == Band()


# ---------------------------------------------------------------------------------------------- the ops


def test_the_ops_trace_as_one_forward_and_one_backward():
    q, k, v = (t.requires_grad_() for t in tensors(q_heads=4, kv_heads=2))
    lengths = torch.tensor([16, 9])

    def step(q, k, v, lengths):
        out = cudnn_sdpa.attention(q, k, v, scale=0.125, causal=True, window_left=4, key_lengths=lengths)
        return (out, *torch.autograd.grad(out.float().sum(), (q, k, v)))

    graph = make_fx(step, tracing_mode="fake")(q, k, v, lengths).graph
    calls = [n for n in graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)]
    ours = [n for n in calls if n.target.namespace == "hf_efficient_attn"]
    assert [n.target for n in ours] == [torch.ops.hf_efficient_attn.cudnn_sdpa.default,
                                        torch.ops.hf_efficient_attn.cudnn_sdpa_backward.default]
    forward, backward = ours
    assert forward.args[4:] == (0.125, True, 4, op_window.NO_BOUND, True)
    assert backward.args[7:] == (0.125, True, 4, op_window.NO_BOUND)
    shapes = [tuple(n.meta["val"].shape) for n in graph.output_node().args[0]]
    assert shapes == [(2, 4, 16, 64), (2, 4, 16, 64), (2, 2, 16, 64), (2, 2, 16, 64)]
    assert not any(n.target == torch.ops.aten.zeros.default for n in calls)  # no zero gradient for the stats


def test_statistics_are_kept_only_when_autograd_records_the_call():
    def run(q, k, v):
        return cudnn_sdpa.attention(q, k, v, scale=0.125, causal=False)

    for grad, kept in ((True, True), (False, False)):
        q, k, v = (t.requires_grad_(grad) for t in tensors())
        graph = make_fx(run, tracing_mode="fake")(q, k, v).graph
        (node,) = [n for n in graph.nodes if n.target == torch.ops.hf_efficient_attn.cudnn_sdpa.default]
        assert node.args[-1] is kept
        assert tuple(node.meta["val"][1].shape) == ((2, 4, 16, 1) if kept else (0,))
