"""`axial` on the fused block-layout kernels: each half (rows, columns) is one kernel call on its permuted
sequence, and the patched ViT gives the chunked engine's logits and gradients (Triton's interpreter on the
CPU, the GPU with CUDA)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from hf_efficient_attn import patch_model
from hf_efficient_attn.kernels import ops

sys.path.insert(0, str(Path(__file__).parent.parent))

from tiny_models import tiny_vit, vit_pixels  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def logits_and_grads(model, pixels):
    model.zero_grad()
    logits = model(pixel_values=pixels).logits
    logits.sin().sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_axial_kernel_matches_the_chunked_engine(monkeypatch):
    launches = []
    original = ops.DenseLaunch.__call__

    def counting(self, *args, **kwargs):
        launches.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ops.DenseLaunch, "__call__", counting)
    model = tiny_vit(hidden_size=64, num_attention_heads=2, num_hidden_layers=1).to(DEVICE)  # head size 32
    pixels = vit_pixels(model).to(DEVICE)
    fused = logits_and_grads(patch_model(copy.deepcopy(model), "axial", backend="triton"), pixels)
    assert len(launches) == 2  # rows and columns
    reference = logits_and_grads(patch_model(copy.deepcopy(model), "axial", backend="reference"), pixels)
    assert len(launches) == 2
    torch.testing.assert_close(fused[0], reference[0], atol=2e-5, rtol=0)
    assert fused[1].keys() == reference[1].keys()
    for name, grad in fused[1].items():
        torch.testing.assert_close(grad, reference[1][name], atol=2e-5, rtol=1e-4, msg=name)
