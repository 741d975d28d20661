"""Whether autograd records an attention call: the test every forward-only path takes first.

A call's gradient may flow to any of its query, key and value: with LoRA on the value projection only,
the first layer's query and key need none (their inputs are frozen embeddings) while its value does. So
the test asks all three; a path picked because the query alone needs no gradient (a forward-only decode
kernel, say) would drop the value's gradient without a word.
"""

from __future__ import annotations

import torch


def records_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors``: grad mode is on and one of them requires a gradient.
    (A loop rather than ``any`` over a generator: this runs in every layer's call, and the generator costs
    about twice the time in training.)"""
    if not torch.is_grad_enabled():
        return False
    for tensor in tensors:  # noqa: SIM110
        if tensor.requires_grad:
            return True
    return False
