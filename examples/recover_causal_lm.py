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
with shifted groups at 8192 tokens, and scores the result with the model's own attention and with a
sliding window.
"""

from hf_efficient_attn.train.arguments import recovery_parser, run_from_args


def main() -> None:
    parser = recovery_parser(__doc__, model="smollm2-135m", variant="sliding", window=256, steps=200,
                             learning_rate=2e-4, batch_size=4)
    parser.add_argument("--seq-len", type=int, help="tokens per training sample (default: min(1024, model context))")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="score the first N held-out tokens (default 65536)")
    parser.add_argument("--eval-length", type=int,
                        help="tokens per scored window of the strided perplexity (default: min(1024, model context))")
    args = parser.parse_args()
    scoring = {"max_tokens": args.eval_tokens} | ({"max_length": args.eval_length} if args.eval_length else {})
    run_from_args(args, seq_len=args.seq_len, eval_options=scoring)


if __name__ == "__main__":
    main()
