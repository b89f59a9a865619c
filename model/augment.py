"""Training augmentations of (input, target) pairs for masked style modeling.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III (training details), and the public
reference loader (``dataset/loader.py``: ``random_crop``, ``random_brightness``,
``color_jitter``):

* one random view per pair, applied identically to its input and target: a
  crop whose sides are 0.75-1 of the image's sides, resized to a square
  (not aspect preserving), then horizontal flip, vertical flip and transpose,
  each with probability 0.5;
* the input alone multiplied by a random brightness in [0.5, 1.5];
* step 2 also colour-jitters the input (saturation, gain, per-channel gain).

Images are float32 CHW RGB tensors in [0, 1]; integer tensors (uint8, uint16)
are accepted wherever an image is read and scaled by their type's maximum.
Randomness comes only from the ``random.Random`` passed in, so a seeded
generator gives the same augmentations whatever torch's global seed is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Smallest crop side as a fraction of the image side (reference ``min_ratio``).
MIN_CROP_RATIO = 0.75

#: Probability that a random view keeps the whole image (reference: 0.1).
FULL_VIEW_PROBABILITY = 0.1

#: Range of the random input brightness factor (reference ``random_brightness``).
BRIGHTNESS_RANGE = (0.5, 1.5)

#: Colour jitter ranges (reference ``color_jitter``): HSV saturation factor,
#: overall gain and per-channel gain, each drawn uniformly.
SATURATION_RANGE = (0.8, 1.2)
GAIN_RANGE = (0.5, 1.5)
CHANNEL_GAIN_RANGE = (0.9, 1.1)


@dataclass(frozen=True)
class View:
    """A crop window and flips, in fractions of the image so it fits any size.

    ``top``/``left`` are the window's offset and ``height``/``width`` its sides,
    all as fractions (0-1) of the image's height and width. The same view
    rendered from an input and a target of different pixel sizes covers the
    same part of the scene.
    """

    top: float = 0.0
    left: float = 0.0
    height: float = 1.0
    width: float = 1.0
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False


#: The whole image, unflipped: a plain resize.
FULL = View()


def random_view(rng: random.Random, *, min_ratio: float = MIN_CROP_RATIO) -> View:
    """Draw the step-1/step-2 crop-and-flip view of the reference loader.

    With probability 0.1 the whole image; otherwise, with equal probability,
    one side ratio in [min_ratio, 1] for both sides or one for each side; the
    window is placed uniformly; then each of horizontal flip, vertical flip
    and transpose with probability 0.5.
    """
    if rng.random() < FULL_VIEW_PROBABILITY:
        height = width = 1.0
    elif rng.random() < 0.5:
        height = width = rng.uniform(min_ratio, 1.0)
    else:
        height, width = rng.uniform(min_ratio, 1.0), rng.uniform(min_ratio, 1.0)
    top, left = rng.uniform(0.0, 1.0 - height), rng.uniform(0.0, 1.0 - width)
    return View(top, left, height, width, rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)


def to_float(image: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1] from a uint8 (/255), uint16 (/65535) or floating tensor."""
    if image.dtype == torch.uint8:
        return image.to(torch.float32) / 255.0
    if image.dtype == torch.uint16:
        return image.to(torch.float32) / 65535.0
    if image.is_floating_point():
        return image.to(torch.float32)
    raise TypeError(f"unsupported image dtype {image.dtype}")


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a CHW image to ``size`` x ``size`` (not aspect preserving).

    Bilinear with antialiasing (``torch.nn.functional.interpolate(...,
    antialias=True)``, as ``torchvision.transforms.functional.resize``), so
    large photos are low-pass filtered rather than aliased; the reference uses
    OpenCV's ``INTER_LINEAR``. Returns float32 in [0, 1].
    """
    image = to_float(image)
    if tuple(image.shape[-2:]) == (size, size):
        return image
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def render(image: torch.Tensor, view: View, size: int) -> torch.Tensor:
    """The ``view`` of a CHW image, resized to ``size`` x ``size``, float32 in [0, 1]."""
    _, height, width = image.shape
    top, left = int(view.top * height), int(view.left * width)
    crop_h = max(1, min(height - top, round(view.height * height)))
    crop_w = max(1, min(width - left, round(view.width * width)))
    out = resize(image[:, top:top + crop_h, left:left + crop_w], size)
    if view.hflip:
        out = out.flip(2)
    if view.vflip:
        out = out.flip(1)
    if view.transpose:
        out = out.transpose(1, 2)
    return out.contiguous()


def scale_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image * factor`` clamped to [0, 1] (the reference leaves it unclamped)."""
    return (to_float(image) * factor).clamp_(0.0, 1.0)


def random_brightness(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Multiply by a factor drawn from ``BRIGHTNESS_RANGE`` (0.5-1.5), clamped to [0, 1]."""
    return scale_brightness(image, rng.uniform(*BRIGHTNESS_RANGE))


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale HSV saturation by ``factor`` (capped at 1) keeping hue and value.

    With value V = max over channels and S = (V - min) / V, each channel c
    becomes V - (V - c) * S' / S where S' = min(factor * S, 1); this is the
    reference's HSV round trip without its 8-bit quantisation.
    """
    image = to_float(image)
    value = image.amax(0, keepdim=True)
    chroma = value - image.amin(0, keepdim=True)
    scale = torch.minimum(torch.full_like(value, factor), value / chroma.clamp_min(1e-12))
    return (value - (value - image) * scale).clamp_(0.0, 1.0)


def color_jitter(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """The reference's step-2 input jitter: saturation, overall and per-channel gain.

    Saturation factor from ``SATURATION_RANGE`` (0.8-1.2), overall gain from
    ``GAIN_RANGE`` (0.5-1.5) and one gain per channel from
    ``CHANNEL_GAIN_RANGE`` (0.9-1.1); clamped to [0, 1].
    """
    out = adjust_saturation(image, rng.uniform(*SATURATION_RANGE))
    gain = rng.uniform(*GAIN_RANGE)
    channel = torch.tensor([rng.uniform(*CHANNEL_GAIN_RANGE) for _ in range(out.shape[0])], dtype=torch.float32)
    return (out * (gain * channel)[:, None, None]).clamp_(0.0, 1.0)
