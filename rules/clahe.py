"""CLAHE: contrast-limited adaptive histogram equalisation.

Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics Gems
IV, 1994; the tile mapping, clip limit and redistribution follow MATLAB's
``adapthisteq`` with its defaults (8 x 8 tiles, ``ClipLimit`` 0.01, 256 bins,
uniform distribution), the most likely generator of this pseudo-user of
Kosugi & Yamasaki (IEEE TCSVT 2023). A colour image is equalised on the L*
of CIELAB, as MATLAB's documentation applies ``adapthisteq`` to colour
images (the HSV value, scikit-image's choice, is an option).
"""

import warnings

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from rules._color import check_rgb_image, finish_rgb, hsv_value, replace_hsv_value, to_levels

#: The channels CLAHE can equalise: CIELAB L* (MATLAB's recipe) or the HSV value.
CHANNELS = ("lab", "hsv")

_BINS = 256


def _round_half_up(x):
    """MATLAB ``round`` for non-negative numbers (halves go up)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def _padding(size, tiles):
    """Symmetric padding ``(before, after)`` giving even, equal tiles (adapthisteq)."""
    if size % tiles:
        tile = size // tiles + 1
        pad = tile * tiles - size
    else:
        tile = size // tiles
        pad = 0
    if tile % 2:
        pad += tiles
    return pad // 2, pad - pad // 2


def clip_limit_count(pixels_per_tile, clip_limit):
    """Histogram clip count of ``adapthisteq`` for a normalised ``clip_limit``.

    ``ceil(N / 256) + round(clip_limit * (N - ceil(N / 256)))`` for ``N``
    pixels per tile: 0 gives the flattest mapping, 1 no clipping (plain AHE).
    """
    minimum = -(-pixels_per_tile // _BINS)
    return int(minimum + _round_half_up(clip_limit * (pixels_per_tile - minimum)))


def _clip_histograms(histograms, clip):
    """Clip tile histograms at ``clip`` and redistribute the excess (adapthisteq).

    Parameters
    ----------
    histograms : numpy.ndarray
        int64 counts, shape ``(tiles, 256)``.
    clip : int
        Clip count.

    Returns
    -------
    numpy.ndarray
        Clipped histograms with the same totals.
    """
    excess = np.maximum(histograms - clip, 0).sum(axis=1)
    increment = excess // _BINS
    upper = clip - increment[:, None]
    over = histograms > clip
    high = ~over & (histograms > upper)
    low = ~over & ~high
    remaining = excess - (clip - np.where(high, histograms, clip)).sum(axis=1) \
        - increment * low.sum(axis=1)
    clipped = np.where(over | high, clip, histograms + increment[:, None])
    # The remainder goes one count at a time to bins below the clip, walking
    # the bins with a stride that grows as fewer counts remain.
    for tile in np.flatnonzero(remaining):
        counts = clipped[tile]
        left = int(remaining[tile])
        start = 0
        while left > 0:
            stride = max(_BINS // left, 1)
            candidates = np.arange(start, _BINS, stride)
            candidates = candidates[counts[candidates] < clip][:left]
            counts[candidates] += 1
            left -= candidates.size
            start = (start + 1) % _BINS
    return clipped


def _tile_coordinates(positions, tile, tiles):
    """Lower/upper tile index and upper-tile weight for bilinear interpolation."""
    scaled = positions / tile - 0.5
    lower = np.floor(scaled).astype(np.int64)
    weight = scaled - lower
    return np.clip(lower, 0, tiles - 1), np.clip(lower + 1, 0, tiles - 1), weight


def equalize_tiles(levels, *, tiles=(8, 8), clip_limit=0.01):
    """CLAHE of one 8-bit channel, following MATLAB ``adapthisteq``.

    The channel is padded symmetrically so that it splits into ``tiles``
    tiles of equal, even size; every tile gets a clipped-histogram
    equalisation mapping ``min(cumsum(h) * 255 / N, 255)``, rounded to 8-bit
    levels as MATLAB's ``grayxform`` (and OpenCV) apply it; each pixel's
    output is the bilinear interpolation of the mapped levels of the four
    nearest tile centres (the nearest one or two at the borders), rounded.

    Parameters
    ----------
    levels : numpy.ndarray
        uint8 channel, shape ``(H, W)``.
    tiles : tuple of int, optional
        Tile grid ``(rows, columns)``.
    clip_limit : float, optional
        Normalised clip limit in ``[0, 1]`` (see :func:`clip_limit_count`).

    Returns
    -------
    numpy.ndarray
        uint8 equalised channel, shape ``(H, W)``.
    """
    (top, bottom), (left, right) = (_padding(n, t) for n, t in zip(levels.shape, tiles))
    padded = np.pad(levels, ((top, bottom), (left, right)), mode="symmetric")
    tile_rows, tile_cols = tiles
    tile_h, tile_w = padded.shape[0] // tile_rows, padded.shape[1] // tile_cols

    tile_index = (np.arange(padded.shape[0]) // tile_h)[:, None] * tile_cols \
        + (np.arange(padded.shape[1]) // tile_w)[None, :]
    histograms = np.bincount((tile_index * _BINS + padded).ravel(),
                             minlength=tile_rows * tile_cols * _BINS)
    histograms = histograms.reshape(tile_rows * tile_cols, _BINS)
    pixels = tile_h * tile_w
    histograms = _clip_histograms(histograms, clip_limit_count(pixels, clip_limit))
    mappings = _round_half_up(np.minimum(np.cumsum(histograms, axis=1) * (255.0 / pixels), 255.0))
    mappings = mappings.reshape(tile_rows, tile_cols, _BINS)

    rows = np.arange(levels.shape[0]) + top
    cols = np.arange(levels.shape[1]) + left
    y0, y1, wy = _tile_coordinates(rows, tile_h, tile_rows)
    x0, x1, wx = _tile_coordinates(cols, tile_w, tile_cols)
    wy, wx = wy[:, None], wx[None, :]
    value = levels.astype(np.int64)

    def lookup(ty, tx):
        return mappings[ty[:, None], tx[None, :], value]

    out = (1 - wy) * ((1 - wx) * lookup(y0, x0) + wx * lookup(y0, x1)) \
        + wy * ((1 - wx) * lookup(y1, x0) + wx * lookup(y1, x1))
    return _round_half_up(out).astype(np.uint8)


def clahe(image, *, tiles=(8, 8), clip_limit=0.01, channel="lab"):
    """Enhance contrast with CLAHE on CIELAB L* (or the HSV value).

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    tiles : tuple of int, optional
        Tile grid ``(rows, columns)``; ``adapthisteq``'s default ``[8 8]``.
    clip_limit : float, optional
        Normalised clip limit; ``adapthisteq``'s default 0.01, i.e. a clip
        count of ``ceil(N/256) + round(0.01 (N - ceil(N/256)))`` per tile of
        ``N`` pixels (about OpenCV ``clipLimit`` 3.6).
    channel : str, optional
        ``"lab"``: L* / 100 (sRGB, D65) quantised to 8 bits, equalised, and
        put back with a* and b* kept, as MATLAB's documentation does for a
        colour image; ``"hsv"``: the value ``V = max(R, G, B)``, with hue and
        saturation kept (scikit-image's ``equalize_adapthist``).

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    Which channel produced the paper's pseudo-user is not known; L* follows
    the MATLAB recipe the ``adapthisteq`` defaults come from. A colour that
    L* equalisation takes out of the sRGB gamut is clipped.

    References
    ----------
    K. Zuiderveld, "Contrast Limited Adaptive Histogram Equalization",
    Graphics Gems IV, pp. 474-485, 1994.
    """
    image = check_rgb_image(image)
    if channel == "hsv":
        equalized = equalize_tiles(to_levels(hsv_value(image)), tiles=tiles, clip_limit=clip_limit)
        return finish_rgb(replace_hsv_value(image, equalized / 255.0))
    if channel != "lab":
        raise ValueError(f"CLAHE channel {channel!r}: choose {' or '.join(CHANNELS)}")
    lab = rgb2lab(image.astype(np.float64))
    lab[..., 0] = equalize_tiles(to_levels(lab[..., 0] / 100.0), tiles=tiles, clip_limit=clip_limit) / 2.55
    with warnings.catch_warnings():  # colours out of the sRGB gamut are clipped, as the Notes say
        warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)
        rgb = lab2rgb(lab)
    return finish_rgb(rgb)
