"""Batched and tiled inference with a trained DSN.

``degrade_batch`` turns retouched 8-bit RGB photos into pseudo originals (the
forward direction, as MSM's ``data/degrade.py`` calls the network);
``enhance_batch`` runs the reverse direction. Images of the same size share a
forward call; an image too large for one call goes through ``degrade_image``,
which processes overlapping tiles and blends them with linear ramps.

Inputs and outputs are RGB (the reference script fed BGR by accident; see
notes/dsn.md). The network output is clamped to [0, 1] and rounded to 8 bits,
as the reference ``tensor2img`` does. Tensors are channels-last; on CUDA the
network runs in bfloat16 autocast, on the CPU in float32.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import numpy as np
import torch

from degrader.dsn import DSN

DEFAULT_MAX_BATCH_PIXELS = 2 ** 21  # about 7 Flickr "url_z" photos (640x427) per call
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


def degrade_batch(model: DSN, images: list[np.ndarray], device: torch.device | str | None = None, *,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> list[np.ndarray]:
    """Degrade retouched photos into pseudo originals (forward direction).

    Parameters
    ----------
    model : DSN
        A trained network living on ``device``.
    images : list of numpy.ndarray
        uint8 RGB images ``H x W x 3``, of any sizes.
    device : torch.device or str, optional
        Where ``model`` lives; default: the device of its first buffer.
    max_batch_pixels : int
        Most pixels (images x H x W) in one forward call. Same-size images are
        grouped up to this bound; an image larger than it is processed by
        ``degrade_image`` in the largest square tiles within the bound
        (overlap 32 px, or a quarter of the tile if that is less).

    Returns
    -------
    list of numpy.ndarray
        uint8 RGB images, one per input, in input order and of the same size.
        They equal one-by-one results up to float rounding inside batched
        convolutions (which can move a rare pixel by one level).
    """
    return _run_batches(model, images, device, max_batch_pixels, reverse=False)


def enhance_batch(model: DSN, images: list[np.ndarray], device: torch.device | str | None = None, *,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> list[np.ndarray]:
    """Enhance original photos (reverse direction); otherwise as ``degrade_batch``."""
    return _run_batches(model, images, device, max_batch_pixels, reverse=True)


def degrade_image(model: DSN, image: np.ndarray, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, *,
                  device: torch.device | str | None = None, reverse: bool = False,
                  max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> np.ndarray:
    """Degrade one image of any size in overlapping tiles, with bounded memory.

    Tiles of ``tile x tile`` pixels (or the image side, if shorter) start every
    ``tile - overlap`` pixels, the last one flush with the far border. Each
    tile's output is weighted by a ramp rising linearly over the ``overlap``
    pixels next to every tile edge that lies inside the image, and the weighted
    outputs are averaged, so tile borders leave no seams.

    The result equals a whole-image pass up to the network's view beyond a
    tile: the convolutions see zero padding instead of neighbours near tile
    edges (the ramps hide most of it), and the channel attention averages over
    the tile rather than the whole image. DSN was trained on 180 px crops, whose
    statistics a 512 px tile represents as well as a whole photo does.

    Parameters
    ----------
    model : DSN
        A trained network living on ``device``.
    image : numpy.ndarray
        uint8 RGB image ``H x W x 3``.
    tile : int
        Tile side in pixels (default 512).
    overlap : int
        Overlap of neighbouring tiles and length of the blending ramps, in
        pixels; ``0 <= overlap < tile`` (default 32).
    device : torch.device or str, optional
        Where ``model`` lives; default: the device of its first buffer.
    reverse : bool
        Run the enhancing (reverse) direction instead.
    max_batch_pixels : int
        Most pixels per forward call; tiles are batched up to it (at least one).

    Returns
    -------
    numpy.ndarray
        uint8 RGB image of the same size.
    """
    _check_image(image)
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    height, width = image.shape[:2]
    tile_h, tile_w = min(tile, height), min(tile, width)
    tops, lefts = _tile_starts(height, tile_h, overlap), _tile_starts(width, tile_w, overlap)
    corners = [(top, left) for top in tops for left in lefts]
    device = _model_device(model, device)

    blended = np.zeros((height, width, 3), np.float32)
    weight_sum = np.zeros((height, width, 1), np.float32)
    per_call = max(1, max_batch_pixels // (tile_h * tile_w))
    for start in range(0, len(corners), per_call):
        chunk = corners[start:start + per_call]
        tiles = np.stack([image[top:top + tile_h, left:left + tile_w] for top, left in chunk])
        outputs = _run_network(model, tiles, device, reverse)
        for (top, left), output in zip(chunk, outputs):
            weight = (_ramp(tile_h, overlap, top > 0, top + tile_h < height)[:, None]
                      * _ramp(tile_w, overlap, left > 0, left + tile_w < width)[None, :])[..., None]
            blended[top:top + tile_h, left:left + tile_w] += output * weight
            weight_sum[top:top + tile_h, left:left + tile_w] += weight
    return to_uint8(blended / weight_sum)


class NonFiniteOutput(ValueError):
    """The network gave NaN or infinite values, which no 8-bit image can hold."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Clamp a float image to [0, 1] and round it to 8 bits (reference
    ``tensor2img``); a uint8 image is returned as it is.

    Raises :class:`NonFiniteOutput` when any value is NaN or infinite (they
    would otherwise become black pixels).
    """
    if image.dtype == np.uint8:
        return image
    if not np.isfinite(image).all():
        raise NonFiniteOutput("the degrader gave NaN or infinite values")
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)



# ---------------------------------------------------------------- helpers


def _run_batches(model: DSN, images: list[np.ndarray], device, max_batch_pixels: int,
                 reverse: bool) -> list[np.ndarray]:
    """Group same-size images into forward calls; tile the ones too large for a call."""
    device = _model_device(model, device)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        _check_image(image)
        groups[image.shape].append(index)
    results: list[np.ndarray | None] = [None] * len(images)
    for shape, indices in groups.items():
        pixels = shape[0] * shape[1]
        if pixels > max_batch_pixels:
            tile = math.isqrt(max_batch_pixels)
            for index in indices:
                results[index] = degrade_image(model, images[index], tile, min(DEFAULT_OVERLAP, tile // 4),
                                               device=device, reverse=reverse, max_batch_pixels=max_batch_pixels)
            continue
        per_call = max_batch_pixels // pixels
        for start in range(0, len(indices), per_call):
            chunk = indices[start:start + per_call]
            outputs = to_uint8(_run_network(model, np.stack([images[i] for i in chunk]), device, reverse))
            for index, output in zip(chunk, outputs):
                results[index] = output
    return results


def _run_network(model: DSN, batch: np.ndarray, device: torch.device, reverse: bool) -> np.ndarray:
    """uint8 ``N x H x W x 3`` -> unclamped float32 ``N x H x W x 3`` network output."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    model.eval()
    with torch.inference_mode(), autocast:
        # N x H x W x 3 permuted to N x 3 x H x W is already channels-last in memory,
        # the faster layout for these convolutions on GPUs and CPUs alike.
        inputs = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255)
        outputs = model(inputs.contiguous(memory_format=torch.channels_last), rev=reverse)
        return outputs.float().permute(0, 2, 3, 1).cpu().numpy()


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets every ``tile - overlap`` pixels, the last one ending at ``length``."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, rise_at_start: bool, fall_at_end: bool) -> np.ndarray:
    """Blending weights along one tile side: 1 inside, a linear ramp of
    ``overlap`` samples (from ``1 / (2 overlap)`` up) at each inner edge."""
    weights = np.ones(length, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
    if rise_at_start:
        weights[:overlap] = np.minimum(weights[:overlap], ramp)
    if fall_at_end:
        weights[length - overlap:] = np.minimum(weights[length - overlap:], ramp[::-1])
    return weights


def _model_device(model: DSN, device) -> torch.device:
    own = next(model.buffers()).device
    if device is None:
        return own
    device = torch.device(device)
    if device.type != own.type or (device.index is not None and device.index != own.index):
        raise ValueError(f"the model lives on {own}, not on {device}; move it with model.to(device)")
    return device


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        description = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                       else type(image).__name__)
        raise ValueError(f"expected a uint8 H x W x 3 RGB image, got a {description}")
