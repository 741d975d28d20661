"""Patch a ViT with local 2-D attention, fine-tune briefly, and see how much of its accuracy comes back.

    accelerate launch examples/recover_vit.py --window 3 --steps 200 --eval-every 25
    accelerate launch --multi_gpu --num_processes 2 examples/recover_vit.py --recipe full --control
    python examples/recover_vit.py --steps 50

Defaults: the vit-mnist asset (a ViT trained on 4000 MNIST digits, see train_vit_from_scratch.py),
patched with neighbourhood=2d, fine-tuned on those training digits and scored by accuracy on the
1000 held-out test digits of images-mnist.
"""

from hf_efficient_attn.train.arguments import recovery_parser, run_from_args


def main() -> None:
    parser = recovery_parser(__doc__, model="vit-mnist", variant="sliding", window=3, steps=200,
                             learning_rate=1e-3, batch_size=64, options=("neighbourhood=2d",))
    parser.add_argument("--augment", action="store_true",
                        help="move each training image by a random small shift and rotation every time it is read")
    args = parser.parse_args()
    run_from_args(args, augment=args.augment)


if __name__ == "__main__":
    main()
