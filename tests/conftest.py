"""Shared fixtures: tiny random-weight models and their inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import (  # noqa: E402
    DECODERS,
    tiny_llama,
    tiny_vit,
    tiny_whisper,
    vit_pixels,
    whisper_features,
)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(False)
    yield


@pytest.fixture(params=sorted(DECODERS))
def decoder(request):
    """A tiny causal LM of each Llama-family architecture."""
    return DECODERS[request.param]()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def whisper():
    return tiny_whisper()


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture
def whisper_inputs(whisper):
    generator = torch.Generator().manual_seed(3)
    return {
        "input_features": whisper_features(whisper),
        "decoder_input_ids": torch.randint(3, whisper.config.vocab_size, (2, 9), generator=generator),
    }


@pytest.fixture
def llama_inputs(llama):
    generator = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(3, llama.config.vocab_size, (2, 20), generator=generator)}


@pytest.fixture
def vit_inputs(vit):
    return {"pixel_values": vit_pixels(vit)}


@pytest.fixture
def chosen_routes(monkeypatch):
    """The routes `dispatch.choose` returns, in call order (one per call that plans)."""
    from hf_efficient_attn import dispatch

    routes = []
    choose = dispatch.choose

    def recorded(*args, **kwargs):
        decision = choose(*args, **kwargs)
        routes.append(decision[0])
        return decision

    monkeypatch.setattr(dispatch, "choose", recorded)
    return routes
