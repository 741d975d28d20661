"""The small-ViT trainer on synthetic digits: it learns, saves a loadable folder, and its processor matches training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ViTForImageClassification

from hf_efficient_attn.assets.images import CLASSES, write_image_folder
from hf_efficient_attn.assets.vit_training import TrainingOptions, accuracy, pixel_values, save_vit, train_vit
from hf_efficient_attn.compat import load_image_processor


def digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28×28 noise images, dark (label 0) or bright (label 1): separable by any working classifier in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    images = (rng.integers(0, 60, (count, 28, 28)) + 150 * labels[:, None, None]).astype(np.uint8)
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def trained():
    train_images, train_labels = digits(400, 0)
    test_images, test_labels = digits(100, 1)
    options = TrainingOptions(hidden_size=32, layers=1, heads=2, mlp_size=64, epochs=6, batch_size=25,
                              learning_rate=3e-3, warmup_steps=5, max_shift=0)
    lines = []
    model = train_vit(train_images, train_labels, test_images, test_labels, options, log=lines.append)
    return model, test_images, test_labels, lines


def test_training_learns_and_logs_each_epoch(trained):
    model, test_images, test_labels, lines = trained
    assert len(lines) == 6 and lines[-1].startswith("epoch 6/6")
    assert accuracy(model, pixel_values(test_images), torch.from_numpy(test_labels)) > 0.95
    assert model.config.id2label == dict(enumerate(CLASSES))


def test_saved_folder_and_processor_reproduce_the_training_inputs(trained, tmp_path):
    from PIL import Image

    model, test_images, test_labels, _ = trained
    folder = save_vit(model, tmp_path / "vit")
    loaded = ViTForImageClassification.from_pretrained(folder).eval()
    processor = load_image_processor(folder)
    write_image_folder(tmp_path / "images", test_images[:10], test_labels[:10])
    files = sorted((tmp_path / "images").glob("*/*.png"), key=lambda path: path.name)
    images = [Image.open(file).convert("RGB") for file in files]
    processed = processor(images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(processed, pixel_values(test_images[:10]), atol=1e-6)
    assert [int(file.parent.name) for file in files] == test_labels[:10].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=processed).logits.argmax(-1), model(pixel_values=processed).logits.argmax(-1))
