"""The error evaluation raises for inputs it cannot use."""

from __future__ import annotations


class EvalInputError(ValueError):
    """A model, dataset or setting that evaluation cannot use; the message says what was wrong and the fix."""
