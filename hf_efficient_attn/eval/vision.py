"""Image classification quality: top-1 accuracy with the model's image processor.

Dataset labels are matched to the model's label ids by class name when the dataset names its classes
(an image folder's subfolders, a ``ClassLabel`` feature): names the model's ``id2label`` knows, or
integer names (``"0"``, ``"7"``) read as ids. Unnamed integer labels are taken as the model's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import EvalInputError
from .progress import description
from .results import Score


def _label_key(name: str) -> str:
    return name.strip().lower().replace("_", " ").replace("-", " ")


def model_label_ids(class_names: Sequence[str], config) -> list[int]:
    """The model's label id of each dataset class, matched by name (see the module docstring)."""
    num_labels = len(config.id2label)
    by_name = {_label_key(str(name)): int(label_id) for label_id, name in config.id2label.items()}
    ids, unknown = [], []
    for name in class_names:
        if _label_key(name) in by_name:
            ids.append(by_name[_label_key(name)])
        elif name.isdigit() and int(name) < num_labels:
            ids.append(int(name))
        else:
            unknown.append(name)
    if unknown:
        known = ", ".join(str(config.id2label[i]) for i in sorted(config.id2label)[:10])
        raise EvalInputError(
            f"Dataset class(es) {unknown[:10]} match none of the model's {num_labels} labels ({known}"
            f"{', ...' if num_labels > 10 else ''}). Name each class folder after a model label, or after its id (0 to {num_labels - 1})."
        )
    return ids


def top1_accuracy(
    model: nn.Module,
    image_processor,
    images: Sequence[Any],
    labels: Sequence[int],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> Score:
    """Share of ``images`` (PIL images) whose highest logit is at their label (a model label id)."""
    if batch_size < 1:
        raise EvalInputError(f"batch_size must be >= 1, got {batch_size}.")
    num_labels = model.config.num_labels
    outside = [label for label in labels if not 0 <= label < num_labels]
    if outside:
        raise EvalInputError(f"Labels {sorted(set(outside))[:10]} are outside the model's label ids 0..{num_labels - 1}.")
    parameter = next(model.parameters())
    correct = 0
    for start in tqdm(range(0, len(images), batch_size), desc=description("classifying"), unit="batch", disable=not progress):
        batch = [image.convert("RGB") for image in images[start : start + batch_size]]
        pixels = image_processor(batch, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype)).logits
        predicted = logits.argmax(-1).cpu()
        correct += int((predicted == torch.tensor(labels[start : start + batch_size])).sum())
    return Score(
        metric="accuracy",
        value=correct / len(images),
        higher_is_better=True,
        details={"correct": correct, "samples": len(images)},
    )
