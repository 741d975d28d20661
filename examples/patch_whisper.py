"""Give Whisper's encoder windowed attention and transcribe with it.

    python examples/patch_whisper.py
    python examples/patch_whisper.py --model openai/whisper-large-v3 --audio clips/ --window 512 --device cuda

Defaults: the whisper-tiny asset and the first clips of the speech-en asset (`hf-efficient-attn
fetch-assets --only whisper,speech`). `--audio` takes a folder of 16 kHz audio files. Only the
encoder is patched (`targets=["encoder"]`): each of its 1500 frames attends to the frames within
`window - 1` of it, while the decoder and cross-attention stay exact.
"""

import argparse
from pathlib import Path

import soundfile
import torch
from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

from hf_efficient_attn import patch_model
from hf_efficient_attn.assets import asset_path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="checkpoint folder or Hub name (default: the whisper-tiny asset)")
parser.add_argument("--audio", type=Path, help="folder of 16 kHz audio files (default: the speech-en asset)")
parser.add_argument("--clips", type=int, default=3)
parser.add_argument("--window", type=int, default=64, help="a frame sees the frames within window - 1 of it")
parser.add_argument("--max-new-tokens", type=int, default=96)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

name = args.model or asset_path("whisper-tiny")
feature_extractor = AutoFeatureExtractor.from_pretrained(name)
tokenizer = AutoTokenizer.from_pretrained(name)
model = WhisperForConditionalGeneration.from_pretrained(name).to(args.device).eval()
folder = args.audio or asset_path("speech-en")
files = sorted(path for path in folder.iterdir() if path.suffix in (".wav", ".flac", ".ogg", ".mp3"))[: args.clips]
audio = [soundfile.read(path)[0] for path in files]
features = feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features.to(args.device)


def transcribe() -> list[str]:
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=args.max_new_tokens)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


exact = transcribe()
patch_model(model, "sliding", window=args.window, targets=["encoder"])
windowed = transcribe()
for path, before, after in zip(files, exact, windowed, strict=True):
    print(f"{path.name}\n  unpatched:         {before.strip()}\n  encoder window {args.window}: {after.strip()}")
