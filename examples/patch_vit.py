"""Give a ViT local 2-D attention over its patch grid, or axial attention, and compare its accuracy.

    python examples/patch_vit.py
    python examples/patch_vit.py --model google/vit-base-patch16-224 --images imagenet-folder/ --window 4

Defaults: the vit-mnist asset (a ViT trained on MNIST digits, 7 x 7 patches and CLS) and the
images-mnist test digits (`hf-efficient-attn fetch-assets --only vision`). `--images` takes a folder
with one subfolder of images per class, named as the model's labels. Each configuration patches a
fresh copy of the model.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessor

from hf_efficient_attn import patch_model
from hf_efficient_attn.assets import asset_path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="checkpoint folder or Hub name (default: the vit-mnist asset)")
parser.add_argument("--images", type=Path, help="folder of class subfolders (default: the images-mnist asset)")
parser.add_argument("--per-class", type=int, default=20)
parser.add_argument("--window", type=int, default=3, help="a patch sees the patches within window - 1 rows and columns")
parser.add_argument("--device", default="cpu")
args = parser.parse_args()

name = args.model or asset_path("vit-mnist")
processor = ViTImageProcessor.from_pretrained(name)
folder = args.images or asset_path("images-mnist")
samples = [(path, label.name) for label in sorted(folder.iterdir()) for path in sorted(label.iterdir())[: args.per_class]]
pixels = processor([Image.open(path).convert("RGB") for path, _ in samples], return_tensors="pt").pixel_values


def accuracy(variant: str | None, **options) -> float:
    """Top-1 accuracy of a fresh copy of the model, patched with ``variant`` unless it is None."""
    model = ViTForImageClassification.from_pretrained(name).to(args.device).eval()
    if variant is not None:
        patch_model(model, variant, **options)
    with torch.no_grad():
        predicted = model(pixel_values=pixels.to(args.device)).logits.argmax(-1).tolist()
    labels = [model.config.id2label[index] for index in predicted]
    return sum(label == truth for label, (_, truth) in zip(labels, samples, strict=True)) / len(samples)


print(f"{len(samples)} images, top-1 accuracy:")
print(f"  unpatched                       {accuracy(None):.3f}")
print(f"  sliding, 2-D window {args.window:<11} {accuracy('sliding', window=args.window, neighbourhood='2d'):.3f}")
print(f"  axial (row and column heads)    {accuracy('axial'):.3f}")
