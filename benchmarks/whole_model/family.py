"""What a benchmarked model is: built at a length, fed, and read for an output and a loss."""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from benchmarks.harness.memory import release_cached
from benchmarks.whole_model.rows import ConfigSpec

LOSS_TOKENS = 512
"""Training scores the last this many positions, so that the loss's own cost does not grow with the length."""


def init_std(hidden: int) -> float:
    """Weight std giving attention logits of std ~3 after a normalised input, ``std**2 * hidden``: peaked
    attention as in trained models. At transformers' default 0.02 attention is nearly uniform at these widths,
    and every approximation would look exact in the checks."""
    return math.sqrt(3.0 / hidden)


class Family:
    """A model to benchmark: how to build it at a length, feed it, and read an output and a loss from it.
    ``layers`` overrides the depth (the warm-up compiles on one layer of the real shapes)."""

    name: str
    title: str
    length_flag: str
    lengths: list[int]
    check_length: int
    window: int

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, layers: int | None = None):
        self.args, self.device, self.dtype, self.tiny, self.layers = args, device, dtype, args.tiny, layers
        if self.tiny:
            self.title = f"{type(self).__name__} (tiny shapes)"
        self._model: tuple[int, nn.Module] | None = None

    def tokens(self, length: int) -> int:
        """The sequence length of the input of size ``length``."""
        return length

    def describe(self, length: int) -> str:
        return f"{self.tokens(length)} tokens"

    def new_model(self, length: int) -> nn.Module:
        raise NotImplementedError

    def build(self, length: int) -> nn.Module:
        """The baseline model (sdpa, eval) for ``length``, reused while the length does not change it."""
        key = self.model_key(length)
        if self._model is None or self._model[0] != key:
            self.release()
            torch.manual_seed(0)
            with torch.device(self.device):
                model = self.new_model(length)
            self._model = (key, model.eval())
        return self._model[1]

    def model_key(self, length: int) -> int:
        """Lengths with the same key share one model."""
        return length

    def release(self) -> None:
        """Drop the model, so that only the next family's weights count in its peaks."""
        if self._model is not None:
            self._model = None
            release_cached(self.device)

    def model_for(self, spec: ConfigSpec, model: nn.Module) -> nn.Module:
        """The model that row ``spec`` runs (the baseline's, unless a row needs another class)."""
        return model

    def inputs(self, model: nn.Module, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def output(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**inputs).last_hidden_state

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.output(model, inputs)
        return hidden[:, -LOSS_TOKENS:].float().square().mean()
