"""The command line of `benchmarks/end_to_end.py`: its flags, their defaults, and the names it accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.whole_model.rows import CONFIGS, GENERATION_CONFIGS, OPT_IN

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
MODES = ("prefill", "train", "generate")


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for end_to_end.json, end_to_end.md and the plots")
    ap.add_argument("--models", default="llama,whisper,vit", help="among llama, whisper, vit")
    ap.add_argument("--variants", default=None,
                    help=f"rows, among {', '.join(CONFIGS)} (default: all but {', '.join(sorted(OPT_IN))}; "
                         "on the CPU also without hf-flex, whose compiling takes minutes there)")
    ap.add_argument("--lengths", type=int_list, default=None, help="Llama tokens (default 2048,8192,32768,131072)")
    ap.add_argument("--whisper-lengths", type=int_list, default=None,
                    help="Whisper encoder positions (default 1500,6000,24000; the input is twice as many frames)")
    ap.add_argument("--vit-sizes", type=int_list, default=None, help="ViT image sizes in px (default 512,1024,2048,4096)")
    ap.add_argument("--window", type=int, default=None, help="Llama sliding window, ours and HF's (default 4096)")
    ap.add_argument("--encoder-window", type=int, default=None,
                    help="sliding window of the encoders (reach window-1 each side; default 512)")
    ap.add_argument("--check-tokens", type=int, default=None, help="Llama check length (default 1024, below --window)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"measurements to run, among {', '.join(MODES)} (default: all; whatever the order given, "
                         "they run in the priority order: Llama prefill, generate, train, then the encoders')")
    ap.add_argument("--skip-train", action="store_true", help="leave train out of --modes")
    ap.add_argument("--train-max-tokens", type=int, default=None,
                    help="train only at lengths up to this (default 32768; 96 with --tiny)")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                    help="train without gradient checkpointing")
    ap.add_argument("--skip-generation", action="store_true", help="leave generate out of --modes")
    ap.add_argument("--gen-prompt", type=int, default=None, help="generation prompt tokens (default 32768)")
    ap.add_argument("--gen-new", type=int, default=None, help="tokens to generate (default 1024; 8192 "
                    "takes ~2 min a row)")
    ap.add_argument("--gen-variants", default="hf-sdpa,hf-sdpa-sliding,sliding",
                    help=f"generation rows, among {', '.join(GENERATION_CONFIGS)}")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs after the warm-up, for runs under 1 s (default 3; 1 with --tiny)")
    ap.add_argument("--time-budget", type=float, default=400.0,
                    help="seconds from the start after which no new measurement starts (default 400)")
    ap.add_argument("--max-run-s", type=float, default=15.0,
                    help="skip a run whose time, extrapolated from shorter lengths, exceeds this (default 15)")
    ap.add_argument("--time-failed", action="store_true", help="time rows whose check failed too")
    ap.add_argument("--merge", type=Path, default=None,
                    help="an earlier end_to_end.json: its entries that this run did not measure (or only skipped "
                         "or failed) are kept, marked with the date of their run, and the outputs show them all")
    ap.add_argument("--llama-path", default=None, help="local Llama checkpoint with real weights (default: random)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="weights and activations (default bfloat16 on CUDA, float32 on the CPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and lengths: a quick run of the whole path")
    ap.add_argument("--no-warm", action="store_true", help="do not compile kernels in child processes first")
    ap.add_argument("--warm-timeout", type=float, default=150.0,
                    help="seconds the compiling child processes may take (default 150)")
    ap.add_argument("--warm-child", default=None, help=argparse.SUPPRESS)
    return ap


def parse(argv: list[str], description: str | None = None) -> argparse.Namespace:
    """The flags, with the defaults that depend on the device and on --tiny filled in, and --modes a list."""
    args = build_parser(description).parse_args(argv)
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.gen_prompt = args.gen_prompt or (64 if args.tiny else 32768)
    args.gen_new = args.gen_new or (16 if args.tiny else 1024)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    args.train_max_tokens = args.train_max_tokens or (96 if args.tiny else 32768)
    args.modes = chosen_modes(args)
    return args


def chosen_rows(args: argparse.Namespace, device: torch.device) -> list[str]:
    """--variants (unknown names refused), or every row but the opt-in ones (and hf-flex on the CPU)."""
    if args.variants:
        names = [n for n in args.variants.split(",") if n]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose among {', '.join(CONFIGS)}")
        return names
    return [n for n in CONFIGS if n not in OPT_IN and not (device.type == "cpu" and n == "hf-flex")]


def chosen_modes(args: argparse.Namespace) -> list[str]:
    """--modes less what --skip-train and --skip-generation remove (unknown names refused), in MODES order."""
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}; choose among {', '.join(MODES)}")
    dropped = {mode for mode, skip in (("train", args.skip_train), ("generate", args.skip_generation)) if skip}
    return [m for m in MODES if m in modes and m not in dropped]


def chosen_generation_rows(args: argparse.Namespace) -> list[str]:
    """--gen-variants, unknown names refused."""
    names = [n for n in args.gen_variants.split(",") if n]
    if any(n not in GENERATION_CONFIGS for n in names):
        raise SystemExit(f"--gen-variants: choose among {', '.join(GENERATION_CONFIGS)}")
    return names
