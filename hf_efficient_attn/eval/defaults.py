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

CPU_TEXT_TOKENS = 16_384
"""Tokens of the default text that strided and streaming evaluation score on the CPU unless asked for more.

All of ``text-en`` (about 1.6 million tokens, 3138 strided windows of 1024) takes about five hours per
configuration for SmolLM2-135M on two CPU cores; its first 16,384 tokens (31 windows) take minutes."""

CPU_TEXT_DOCUMENTS = 32
"""Documents of the default text (of 153) that document-mode evaluation scores on the CPU unless asked for more."""


def cpu_limits(task: str, mode: str) -> dict[str, int]:
    """The part of ``task``'s default data that evaluation on the CPU scores, so that it takes minutes.

    ``{"max_tokens": N}`` (strided and streaming text), ``{"max_samples": N}`` (text documents), or no
    limit where all of the data takes minutes anyway (speech: 80 clips; vision: 1000 images).
    """
    if task != "text":
        return {}
    return {"max_samples": CPU_TEXT_DOCUMENTS} if mode == "document" else {"max_tokens": CPU_TEXT_TOKENS}


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
