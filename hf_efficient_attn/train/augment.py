"""Random small shifts and rotations of training images, so that a few thousand images go further.

A recovery fine-tune on a small image set fits the training images exactly and stops improving on
held-out ones; drawing a slightly moved copy of each image every time it is read keeps it learning.
The moves keep the label valid for digits, characters and most photos: a shift of up to
`MAX_SHIFT` of each side and a rotation of up to `MAX_DEGREES`, with the uncovered area filled with
the colour of the image's top-left pixel (the background of digits and scans). No flips: they
change digits and text. The draws come from torch's random generator, which `train` seeds.
"""

from __future__ import annotations

import torch

MAX_SHIFT = 0.1
MAX_DEGREES = 10.0


def jitter(image):
    """``image`` (PIL) moved by a random shift and rotation within the module's limits."""
    from PIL import Image

    shift_x, shift_y, turn = (2 * torch.rand(3) - 1).tolist()
    width, height = image.size
    return image.rotate(
        turn * MAX_DEGREES,
        resample=Image.Resampling.BILINEAR,
        translate=(round(shift_x * MAX_SHIFT * width), round(shift_y * MAX_SHIFT * height)),
        fillcolor=image.getpixel((0, 0)),
    )
