"""Patch Whisper's encoder with windowed attention, fine-tune briefly, and see how much of its WER comes back.

    accelerate launch examples/recover_whisper.py --window 64 --steps 200 --eval-every 50 --data-workers 4
    accelerate launch --multi_gpu --num_processes 2 examples/recover_whisper.py --mixed-precision bf16 --control
    python examples/recover_whisper.py --steps 20 --max-eval-samples 16

Defaults: the whisper-tiny (tiny.en) asset, the encoder only (targets=encoder), trained on the
speech-en-train asset and scored by WER on speech-en, whose sentences it never hears in training.
"""

from hf_efficient_attn.train.arguments import recovery_parser, run_from_args


def main() -> None:
    parser = recovery_parser(__doc__, model="whisper-tiny", variant="sliding", window=64, steps=200,
                             learning_rate=1e-4, batch_size=16, options=("targets=encoder",))
    parser.add_argument("--max-new-tokens", type=int,
                        help="cap on the tokens generated per clip while scoring (default: Whisper's own limit); "
                             "bounds the time a heavily degraded model spends on long hallucinations")
    args = parser.parse_args()
    generate = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
    run_from_args(args, eval_options={"generate_kwargs": generate})


if __name__ == "__main__":
    main()
