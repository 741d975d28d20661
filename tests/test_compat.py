"""The transformers seam: the installed release is one we support, and the names that moved inside 5.x
are read in one place (this suite runs on the oldest and the newest supported release in CI)."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version
from tiny_models import tiny_llama
from transformers.cache_utils import DynamicCache

from hf_efficient_attn import compat, model_hooks, patch_model
from hf_efficient_attn.cache import SinkWindowCacheLayer


def test_installed_transformers_is_supported_and_matches_the_declared_range():
    low, high = compat.SUPPORTED
    assert low <= Version(Version(transformers.__version__).base_version) < high
    compat.check_supported()
    from importlib.metadata import requires

    declared = next(r for r in requires("hf-efficient-attn") if r.startswith("transformers"))
    assert f">={low}" in declared and f"<{high.major}" in declared, declared


def test_unsupported_release_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setattr(transformers, "__version__", "5.1.0")
    with pytest.raises(ImportError, match=r"supports transformers >= 5\.5\.0.*pip install"):
        compat.check_supported()


@pytest.mark.parametrize("keyword", compat.CACHE_KEYWORDS)
def test_cache_is_found_under_either_keyword(keyword):
    cache = DynamicCache()
    assert compat.cache_argument({keyword: cache}) is cache
    assert compat.cache_argument({}) is None


def test_query_offset_of_static_caches_is_a_tensor_of_either_shape():
    assert compat.query_offset_tensor(3) is None
    for offset in (torch.tensor(4), torch.tensor([4])):
        assert compat.query_offset_tensor(offset).shape == () and int(compat.query_offset_tensor(offset)) == 4


def test_the_model_passes_its_cache_where_the_bounded_layer_is_installed():
    """Whatever keyword this release uses, a cache the caller builds gets the bounded layers."""
    model = patch_model(tiny_llama(), "sliding", window=4)
    cache = DynamicCache()
    ids = torch.randint(3, 97, (1, 10))
    keyword = "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"
    model(input_ids=ids, use_cache=True, **{keyword: cache})
    assert all(isinstance(layer, SinkWindowCacheLayer) for layer in cache.layers)
    model(input_ids=ids[:, :1], use_cache=True, **{keyword: cache})
    # the window's 3 earlier tokens and the step's own (trimmed at the next step)
    assert {layer.keys.shape[-2] for layer in cache.layers} == {4}


def test_output_cache_reads_the_cache_a_forward_and_generate_return():
    model = tiny_llama()
    ids = torch.randint(3, 97, (1, 6))
    out = model(input_ids=ids, use_cache=True)
    assert isinstance(compat.output_cache(out), DynamicCache)
    assert compat.output_cache(out).get_seq_length() == 6
    generated = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    assert compat.output_cache(generated).get_seq_length() == 8
    assert compat.output_cache(model(input_ids=ids, use_cache=False)) is None


@pytest.mark.parametrize("name", [model_hooks.LOAD_WEIGHTS, model_hooks.FINALIZE_LOAD])
def test_the_loading_steps_the_hooks_wrap_take_the_model_first(name):
    """`model_hooks` wraps two private static methods of PreTrainedModel; both must keep that shape."""
    import inspect

    from transformers.modeling_utils import PreTrainedModel

    assert isinstance(inspect.getattr_static(PreTrainedModel, name), staticmethod)
    wrapped = inspect.unwrap(getattr(PreTrainedModel, name))
    assert wrapped is not getattr(PreTrainedModel, name)  # installed on import
    assert next(iter(inspect.signature(wrapped).parameters)) == "model"
