"""Patch a causal LM, fine-tune it briefly, and see how much of its perplexity comes back.

    accelerate launch examples/recover_causal_lm.py --variant sliding --window 256 --steps 200 --eval-every 25
    accelerate launch --use_fsdp examples/recover_causal_lm.py --mixed-precision bf16 --control
    python examples/recover_causal_lm.py --variant linear --recipe transfer --steps 100

Defaults: the SmolLM2-135M asset, trained on chunks of seven eighths of the text-en documents and
scored by strided perplexity on the held-out eighth (hf_efficient_attn.train.data.text_split). The
report (recovery.json, recovery.md, recovery.png) and checkpoints go to --output-dir.
"""

from hf_efficient_attn.train.arguments import recovery_parser, run_from_args


def main() -> None:
    parser = recovery_parser(__doc__, model="smollm2-135m", variant="sliding", window=256, steps=200,
                             learning_rate=2e-4, batch_size=4)
    parser.add_argument("--seq-len", type=int, help="tokens per training sample (default: min(1024, model context))")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="score the first N held-out tokens (default 65536)")
    args = parser.parse_args()
    run_from_args(args, seq_len=args.seq_len, eval_options={"max_tokens": args.eval_tokens})


if __name__ == "__main__":
    main()
