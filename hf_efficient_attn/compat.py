"""The one place that knows how transformers releases differ: every name that changed inside 5.x.

The library talks to transformers through its public seams (the attention and mask interfaces, the
`Cache` and cache-layer classes). Two details of those seams moved between the releases we support
(`SUPPORTED`), and this module is where they are read, with a test on both ends of the range:

* the keyword under which an attention module, and a model's forward, receive the KV cache:
  ``past_key_values`` up to 5.23, ``cache`` from 5.24 on (the old name is deprecated there), and the
  field of a model's or ``generate``'s output that holds it, named the same way (`output_cache`);
* the query offset a mask function receives: an int for growing caches, a tensor (shape ``[]`` or
  ``[1]``) for static caches, whose length must not be read on the host while CUDA graphs replay it;
* ``AutoImageProcessor``, which before 5.24 cannot be used at all without torchvision, while the image
  processor class a checkpoint names can (`load_image_processor`).

(ViT's attention module moved too, in 5.10: its adapter, `patches.vit`, finds it in either place. The
two private loading steps that restore a saved patch are named in `model_hooks`, with a test of their
shape on both ends.)
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version

SUPPORTED = (Version("5.5.0"), Version("6.0.0"))
"""Supported transformers releases: ``SUPPORTED[0] <= version < SUPPORTED[1]`` (5.5 introduced the mask
protocol by query length and offset, without ``cache_position``, that the mask policy implements)."""

CACHE_KEYWORDS = ("cache", "past_key_values")
"""Keywords an attention module may receive its KV cache under, newest first."""


def transformers_version() -> Version:
    return Version(transformers.__version__)


def check_supported() -> None:
    """Raise ImportError with what to install when the installed transformers is outside `SUPPORTED`."""
    version = transformers_version()
    low, high = SUPPORTED
    if not low <= Version(version.base_version) < high:
        raise ImportError(
            f"hf-efficient-attn supports transformers >= {low}, < {high}; found {version}. "
            f"Install a supported release: pip install 'transformers>={low},<{high}'."
        )


def cache_argument(kwargs: dict[str, Any]) -> object | None:
    """The KV cache an attention module was called with (its forward's keyword arguments), or None."""
    for name in CACHE_KEYWORDS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


def model_cache_keyword(model: torch.nn.Module) -> str:
    """The keyword ``model``'s forward takes its KV cache under (`CACHE_KEYWORDS`)."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in parameters), CACHE_KEYWORDS[-1])


def output_cache(output: Any) -> object | None:
    """The KV cache a model's forward or ``generate(return_dict_in_generate=True)`` returned, or None."""
    for name in CACHE_KEYWORDS:
        if name in output:
            return output[name]
    return None


def query_offset_tensor(q_offset: int | torch.Tensor) -> torch.Tensor | None:
    """A static cache's query offset as a 0-d long tensor, or None when it is a host int (growing caches)."""
    if not isinstance(q_offset, torch.Tensor):
        return None
    return q_offset.reshape(-1)[0].to(torch.long)


def load_image_processor(source: str | os.PathLike, **kwargs: Any) -> object:
    """The image processor of a checkpoint: ``AutoImageProcessor``, or, where this release's
    ``AutoImageProcessor`` needs torchvision that is not installed, the processor class the checkpoint's
    ``preprocessor_config.json`` names."""
    try:
        return transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
    except ImportError as error:
        config = Path(source) / "preprocessor_config.json"
        if "torchvision" not in str(error).lower() or not config.is_file():
            raise
        name = json.loads(config.read_text()).get("image_processor_type", "")
        processor_class = getattr(transformers, name.removesuffix("Fast").removesuffix("Pil"), None)
        if processor_class is None:
            raise
        return processor_class.from_pretrained(source, **kwargs)


check_supported()
