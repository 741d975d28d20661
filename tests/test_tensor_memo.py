"""TensorMemo: one computation per tensor object and version, never for inference tensors."""

from __future__ import annotations

import gc

import torch

from hf_efficient_attn.tensor_memo import TensorMemo


def counted(results):
    def compute():
        results.append(len(results))
        return len(results)

    return compute


def test_same_tensor_and_key_compute_once():
    memo, calls = TensorMemo(), []
    x = torch.zeros(3)
    assert memo.get(x, "a", counted(calls)) == memo.get(x, "a", counted(calls)) == 1
    assert memo.get(x, "b", counted(calls)) == 2
    assert memo.get(torch.zeros(3), "a", counted(calls)) == 3  # equal values, another tensor


def test_in_place_change_recomputes():
    memo, calls = TensorMemo(), []
    x = torch.zeros(3)
    memo.get(x, None, counted(calls))
    x[0] = 1
    assert memo.get(x, None, counted(calls)) == 2


def test_inference_tensors_are_not_remembered():
    memo, calls = TensorMemo(), []
    with torch.inference_mode():
        x = torch.zeros(3)
    memo.get(x, None, counted(calls))
    memo.get(x, None, counted(calls))
    assert len(calls) == 2 and len(memo) == 0


def test_freed_tensors_leave_and_size_is_bounded():
    memo = TensorMemo(max_entries=2)
    x = torch.zeros(3)
    memo.get(x, None, lambda: 1)
    del x
    gc.collect()
    assert len(memo) == 0
    kept = [torch.zeros(1) for _ in range(3)]
    for t in kept:
        memo.get(t, None, lambda: 1)
    assert len(memo) == 2
