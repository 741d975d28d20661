"""Give a causal LM a sliding window with attention sinks, and generate with it.

    python examples/patch_causal_lm.py
    python examples/patch_causal_lm.py --model meta-llama/Llama-3.2-1B --window 1024 --device cuda

Default model: the smollm2-135m asset (`hf-efficient-attn fetch-assets --only smollm2`). The script
generates greedily with the unpatched model, patches it in place, generates again and prints both
texts and how many tokens each layer's KV cache holds at the end. Patched, a layer's cache stops
growing at the sink tokens plus the last `window` tokens, however long the generation runs.
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_efficient_attn import patch_model
from hf_efficient_attn.assets import asset_path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="checkpoint folder or Hub name (default: the smollm2-135m asset)")
parser.add_argument("--window", type=int, default=32, help="keys a token sees, itself included")
parser.add_argument("--sinks", type=int, default=4, help="first tokens every token also sees")
parser.add_argument("--new-tokens", type=int, default=48)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

name = args.model or asset_path("smollm2-135m")
dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
tokenizer = AutoTokenizer.from_pretrained(name)
model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(args.device).eval()
inputs = tokenizer("The history of the printing press begins", return_tensors="pt").to(args.device)


def generate() -> tuple[str, int]:
    """Greedy continuation of the prompt, and the tokens the first layer's KV cache holds at the end."""
    out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False, return_dict_in_generate=True)
    text = tokenizer.decode(out.sequences[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # `cache` from transformers 5.24 on
    return text, cache.layers[0].keys.shape[-2]


for label in ("unpatched", f"sliding, window {args.window} + {args.sinks} sinks"):
    if label != "unpatched":
        patch_model(model, "sliding", window=args.window, sink_tokens=args.sinks)  # in place
    text, held = generate()
    print(f"{label}: cache holds {held} tokens\n   {text!r}")
