"""The library's base error, in a module of its own so that every layer (the call path, the variants,
the kernels' planning) can raise it without importing the variants package."""

from __future__ import annotations


class VariantError(ValueError):
    """Bad options or a variant that cannot run where it was asked to."""
