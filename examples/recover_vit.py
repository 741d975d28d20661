"""Patch a ViT with local 2-D attention, fine-tune briefly, and see how much of its accuracy comes back.

    accelerate launch examples/recover_vit.py --window 3 --steps 200 --eval-every 25
    accelerate launch --multi_gpu --num_processes 2 examples/recover_vit.py --recipe full --control
    python examples/recover_vit.py --steps 50

Defaults: the vit-mnist asset (a ViT trained on 4000 MNIST digits, see train_vit_from_scratch.py),
patched with neighbourhood=2d, fine-tuned on those training digits and scored by accuracy on the
1000 held-out test digits of images-mnist.

The same as `hf-efficient-attn recover vit ...`; every option: `hf-efficient-attn recover vit --help`.
"""

import sys

from hf_efficient_attn.train.command import recover

if __name__ == "__main__":
    recover("vit", sys.argv[1:])
