"""What importing hf_efficient_attn adds to transformers' ``PreTrainedModel``: a saved patch restored at
load, and an attention switch that keeps a patched model consistent.

* Loading: ``from_pretrained`` builds the model (on the meta device), loads the checkpoint into it with
  ``PreTrainedModel._load_pretrained_model``, then materialises what the checkpoint lacks with
  ``_finalize_model_loading``, which re-creates every non-persistent buffer uninitialised. Both are
  private static methods taking the model first in every release of `compat.SUPPORTED` (tested at both
  ends). Wrapped, a model whose config carries a patch record is patched before the load
  (`api.restore_recorded_patch`), so ``AutoModel*.from_pretrained(saved_patched_dir)`` loads the variant's
  weights like any other, with nothing reported missing or unexpected, and the variants' derived buffers
  are recomputed after the finalisation (`api.finish_restored_patch`).
* ``set_attn_implementation`` refuses to switch a patched model to other attention (`api.refuse_switch_away`);
  `api.unpatch_model` is the way back.

The wrappers defer to transformers at once for models without a patch record. The package's import stays light
(the command line's ``--help`` imports it): when ``transformers.modeling_utils`` is not imported yet, a
finder on ``sys.meta_path`` installs the wrappers right after it is.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

MODELING_MODULE = "transformers.modeling_utils"
LOAD_WEIGHTS = "_load_pretrained_model"
"""transformers' private static method that loads a checkpoint's weights into a built model."""
FINALIZE_LOAD = "_finalize_model_loading"
"""transformers' private static method that materialises, after the load, what the checkpoint lacked."""

CONFIG_RECORD = "efficient_attention"
"""The config attribute in which `api.patch_model` records a patch (and ``save_pretrained`` writes it)."""

_INSTALLED = "_hf_efficient_attn_hooks"


def install() -> None:
    """Wrap ``PreTrainedModel``'s loading and attention switch, now if transformers' modeling module is
    imported, else as soon as it is. Idempotent."""
    modeling = sys.modules.get(MODELING_MODULE)
    if modeling is not None and hasattr(modeling, "PreTrainedModel"):
        wrap(modeling.PreTrainedModel)
    elif not any(isinstance(finder, _WrapAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapAfterImport())


def wrap(pretrained_model: type) -> None:
    """Install the wrappers on ``pretrained_model`` (transformers' ``PreTrainedModel``) once."""
    if pretrained_model.__dict__.get(_INSTALLED):
        return
    load_weights = getattr(pretrained_model, LOAD_WEIGHTS)
    finalize_load = getattr(pretrained_model, FINALIZE_LOAD)
    switch = pretrained_model.set_attn_implementation

    @functools.wraps(load_weights)
    def load_weights_restoring_patch(model: Any, *args: Any, **kwargs: Any) -> Any:
        if _carries_record(model):
            from . import api

            api.restore_recorded_patch(model)
        return load_weights(model, *args, **kwargs)

    @functools.wraps(finalize_load)
    def finalize_load_completing_patch(model: Any, *args: Any, **kwargs: Any) -> Any:
        result = finalize_load(model, *args, **kwargs)
        if _carries_record(model):
            from . import api

            api.finish_restored_patch(model)
        return result

    @functools.wraps(switch)
    def set_attn_implementation(self: Any, attn_implementation: str | dict, *args: Any, **kwargs: Any) -> Any:
        if _carries_record(self):
            from . import api

            api.refuse_switch_away(self, attn_implementation)
        return switch(self, attn_implementation, *args, **kwargs)

    setattr(pretrained_model, LOAD_WEIGHTS, staticmethod(load_weights_restoring_patch))
    setattr(pretrained_model, FINALIZE_LOAD, staticmethod(finalize_load_completing_patch))
    pretrained_model.set_attn_implementation = set_attn_implementation
    setattr(pretrained_model, _INSTALLED, True)


def _carries_record(model: Any) -> bool:
    """Whether ``model``'s config holds a patch record: the models the wrappers have work for (a patched
    model always does), told apart without importing the rest of the package."""
    return bool(getattr(getattr(model, "config", None), CONFIG_RECORD, None))


class _WrapAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.modeling_utils`` as the other finders would, with a loader that wraps its
    ``PreTrainedModel`` once the module has run; then leaves ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != MODELING_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _WrappingLoader(spec.loader)
                return spec
        return None


class _WrappingLoader(importlib.abc.Loader):
    """A module's own loader that installs the wrappers after executing it; other attributes are the
    original loader's (sources for tracebacks and ``inspect``)."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        wrap(module.PreTrainedModel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
