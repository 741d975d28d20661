"""The default model and data of each task: the package's prepared assets, used when none is given.

`hf_efficient_attn.assets` builds real checkpoints and datasets into a local cache and finds them
with ``asset_path(name)``. Where that module or the asset is not there, asking for a default raises
an error that says how to get it or to pass ``--model`` and ``--data``.
"""

from __future__ import annotations

from .errors import EvalInputError

DEFAULT_ASSETS: dict[str, dict[str, str]] = {
    "text": {"model": "smollm2-135m", "data": "text-en"},
    "speech": {"model": "whisper-tiny", "data": "speech-en"},
    "vision": {"model": "vit-mnist", "data": "images-mnist"},
}
"""Asset names (as ``asset_path`` knows them) of each task's default model and data."""


def default_source(task: str, role: str) -> str:
    """The local path of ``task``'s default ``role`` (``"model"`` or ``"data"``)."""
    flag = f"--{role}"
    if task not in DEFAULT_ASSETS:
        raise EvalInputError(
            f"No {flag} was given and task={task!r} has no default; give {flag} PATH, or a task of "
            f"{', '.join(DEFAULT_ASSETS)} to use its default."
        )
    try:
        from ..assets import asset_path
    except ImportError as missing:
        raise EvalInputError(
            f"No {flag} was given, and the default {role} of {task!r} ({DEFAULT_ASSETS[task][role]!r}) comes from "
            f"hf_efficient_attn.assets, which is not available here ({missing}). Give {flag} PATH."
        ) from missing
    try:
        return str(asset_path(DEFAULT_ASSETS[task][role]))
    except FileNotFoundError as unbuilt:
        raise EvalInputError(f"No {flag} was given, and the default {role} of {task!r} is not built: {unbuilt} Or give {flag} PATH.") from unbuilt
