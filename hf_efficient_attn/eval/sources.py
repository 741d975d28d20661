"""Telling a local path from a Hugging Face Hub name, so a mistyped path fails here, not on the network."""

from __future__ import annotations

from pathlib import Path


def looks_like_path(source: str, suffixes: tuple[str, ...] = ()) -> bool:
    """Whether ``source`` can only mean a local path: absolute, starting with ``.`` or ``~``, with more
    than one ``/`` (Hub names have one), or ending in one of ``suffixes``."""
    path = Path(source)
    return (
        path.is_absolute()
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or path.suffix.lower() in suffixes
    )
