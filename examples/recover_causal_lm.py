r"""Patch a causal LM, fine-tune it briefly, and see how much of its perplexity comes back.

    accelerate launch examples/recover_causal_lm.py --variant sliding --window 256 --steps 200 --eval-every 25
    accelerate launch --use_fsdp examples/recover_causal_lm.py --mixed-precision bf16 --control
    python examples/recover_causal_lm.py --variant linear --recipe transfer --steps 100
    accelerate launch examples/recover_causal_lm.py --variant sparse --variant-option pattern=shifted --seq-len 8192 \
        --eval-length 8192 --lora-mlp --evaluate-as unpatched --evaluate-as sliding,window=1024,sink_tokens=4 \
        --control --seeds 0 1 2

Defaults: the SmolLM2-135M asset, trained on chunks of seven eighths of the text-en documents and
scored by strided perplexity on the held-out eighth (hf_efficient_attn.train.data.text_split). The
report (recovery.json, recovery.md, recovery.png) and checkpoints go to --output-dir (with --seeds,
one folder per seed and recovery-seeds.json/.md over them). The fourth command trains as LongLoRA does,
with shifted groups at 8192 tokens (1024 tokens a group by default; LongLoRA's quarter of the sequence is
--variant-option group_size=2048), and scores the result with the model's own attention and with a
sliding window.

The same as `hf-efficient-attn recover causal-lm ...`; every option: `hf-efficient-attn recover causal-lm --help`.
"""

import sys

from hf_efficient_attn.train.command import recover

if __name__ == "__main__":
    recover("causal-lm", sys.argv[1:])
