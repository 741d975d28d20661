"""torch.compile(fullgraph=True) on the fused kernels: the custom ops trace as single operations, and a
compiled training step gives the eager step's loss and gradients (kernels interpreted on the CPU)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from hf_efficient_attn import patch_model

sys.path.insert(0, str(Path(__file__).parent.parent))

from tiny_models import tiny_llama  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2)
VARIANTS = {
    "flash": {},
    "sliding": {"window": 8},
    "sliding-sinks": {"window": 8, "sink_tokens": 2},
    "sparse": {"block_size": 16, "local_blocks": 1},
}


def step(model, call, ids, **inputs):
    model.zero_grad()
    out = call(input_ids=ids, labels=ids, use_cache=False, **inputs)
    out.loss.backward()
    return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_compiled_training_on_the_kernels_equals_eager(name):
    model = patch_model(tiny_llama(**SHAPE).to(DEVICE), name.split("-")[0], backend="triton", **VARIANTS[name])
    ids = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        breaks = torch._dynamo.explain(lambda: model(input_ids=ids, use_cache=False).logits)().graph_break_count
    assert breaks == 0
    eager_logits, eager_grads = step(model, model, ids)
    torch._dynamo.reset()
    logits, grads = step(model, torch.compile(model, fullgraph=True), ids)
    torch.testing.assert_close(logits, eager_logits, atol=2e-5, rtol=0)
    for key in eager_grads:
        torch.testing.assert_close(grads[key], eager_grads[key], atol=2e-5, rtol=1e-4, msg=key)
