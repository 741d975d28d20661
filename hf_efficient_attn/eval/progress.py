"""What a progress bar says: the model version being scored, then the task (``sliding(window=64): transcribing``).

`compare.compare_variants` names each model version for the scorers it runs (`scoring`); a scorer asks
`description` for its bar's text, so bars of different configurations read apart on the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_VERSION: ContextVar[str | None] = ContextVar("scored_version", default=None)


@contextmanager
def scoring(label: str) -> Iterator[None]:
    """Progress bars inside this block name ``label`` (a configuration's label, or ``"unpatched"``)."""
    token = _VERSION.set(label)
    try:
        yield
    finally:
        _VERSION.reset(token)


def description(task: str) -> str:
    """A bar's text: ``task`` after the label of the model version being scored, if one is."""
    label = _VERSION.get()
    return task if label is None else f"{label}: {task}"
