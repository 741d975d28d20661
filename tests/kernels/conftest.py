"""Kernel tests: on CPU they run the Triton kernels in the interpreter (set before triton is imported).

Environment:
  HF_EA_TEST_LARGE=1   also run larger shapes (meant for a CUDA device).
Outputs are NaN-poisoned before every kernel run (HF_EA_POISON=1) so an unwritten tile fails a test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def _reinterpret_loaded_triton_language() -> None:
    """triton decides at decoration time whether an @triton.jit function is compiled or interpreted.
    If triton.language was imported (by torch or transformers) before TRITON_INTERPRET was set, its
    own @jit helpers (tl.zeros, tl.max, ...) are compiled-mode objects that the interpreter refuses to
    call; swap them for interpreted ones."""
    if "triton.language" not in sys.modules:
        return
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    swapped: dict[int, InterpretedFunction] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("triton.language") or mod is None:
            continue
        for attr, val in list(vars(mod).items()):
            if isinstance(val, JITFunction):
                if id(val) not in swapped:
                    swapped[id(val)] = InterpretedFunction(val.fn)
                setattr(mod, attr, swapped[id(val)])


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] == "1":
        _reinterpret_loaded_triton_language()
os.environ.setdefault("HF_EA_POISON", "1")
os.environ.setdefault("HF_EA_AUTOTUNE", "0")

sys.path.insert(0, str(Path(__file__).parent))
