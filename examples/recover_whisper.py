"""Patch Whisper's encoder with windowed attention, fine-tune briefly, and see how much of its WER comes back.

    accelerate launch examples/recover_whisper.py --window 64 --steps 200 --eval-every 50 --data-workers 4
    accelerate launch --multi_gpu --num_processes 2 examples/recover_whisper.py --mixed-precision bf16 --control
    python examples/recover_whisper.py --steps 20 --max-eval-samples 16

Defaults: the whisper-tiny (tiny.en) asset, the encoder only (targets=encoder), trained on the
speech-en-train asset and scored by WER on speech-en, whose sentences it never hears in training.

The same as `hf-efficient-attn recover whisper ...`; every option: `hf-efficient-attn recover whisper --help`.
"""

import sys

from hf_efficient_attn.train.command import recover

if __name__ == "__main__":
    recover("whisper", sys.argv[1:])
