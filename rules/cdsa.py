"""CDSA: contrast-dependent saturation adjustment.

Wang, Cho, Jang, Abidi & Paik, "Contrast-dependent saturation adjustment for
outdoor image enhancement", J. Opt. Soc. Am. A 34(1), 2017.  One of the ten
conventional pseudo-users of Kosugi & Yamasaki (IEEE TCSVT 2023); this port
follows the authors' MATLAB code (``wsh_cdsa.m`` with ``ColorCorrect``,
``CLHE_new``, ``eqkernel``/``eqkernel_new``, ``ThreeStep``,
``getspecialmean`` and the authors' HSI conversions), which has no free
parameters.

Pipeline on 8-bit RGB:

1. white balance on the brightest 1 % of the per-pixel minimum;
2. block-wise contrast-limited histogram equalisation with JND-based clip
   limits (30 x 30 blocks, all three channels share each block's curve);
3. the ratio of local contrasts (11 x 11 windows) after / before, smoothed
   over 61 x 61 windows among pixels of similar colour, scales the HSI
   saturation, while the HSI intensity becomes that of the equalised image.
"""

import cv2
import numpy as np

from rules._color import check_rgb_image, finish_rgb, to_levels

_LEVELS = 256
_EPS = np.finfo(np.float64).eps


def jnd_curve():
    """Chou & Li's just-noticeable difference for background levels 0..255.

    ``17 (1 - sqrt(b / 127)) + 3`` for ``b <= 127``, ``3 (b - 127) / 128 + 3``
    above.  Also used by NPEA's bi-log curve.
    """
    level = np.arange(_LEVELS, dtype=np.float64)
    return np.where(level <= 127, 17.0 * (1.0 - np.sqrt(level / 127.0)) + 3.0,
                    3.0 * (level - 127.0) / 128.0 + 3.0)


def _round(x):
    """MATLAB ``round`` (halves away from zero)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _entropy(histogram):
    """Shannon entropy in bits of a histogram (last axis)."""
    p = histogram / np.maximum(histogram.sum(axis=-1, keepdims=True), 1)
    return -np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def white_balance(rgb):
    """``ColorCorrect``: scale channels so the brightest 1 % of ``min(R, G, B)`` turns grey.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 RGB image, shape ``(H, W, 3)``.

    Returns
    -------
    numpy.ndarray
        uint8 RGB image whose global maximum is 255 (unless black).  A
        channel whose reference mean is 0 keeps its gain of 1.
    """
    darkest = rgb.min(axis=2)
    histogram = np.bincount(darkest.ravel(), minlength=_LEVELS)
    from_top = np.cumsum(histogram[::-1])
    threshold = _LEVELS - 1 - int(np.searchsorted(from_top, 0.01 * darkest.size))
    reference = rgb[darkest >= threshold].astype(np.float64).mean(axis=0)
    balanced = rgb / np.where(reference > 0, reference, 1.0)
    peak = balanced.max()
    if peak > 0:
        balanced = balanced / peak * 255.0
    return _round(balanced).astype(np.uint8)


def rgb_to_hsi(rgb):
    """The authors' ``rgb2hsi``: hue in ``[0, 1)``, saturation, intensity, float64."""
    r, g, b = (rgb[..., k] for k in range(3))
    cosine = 0.5 * ((r - g) + (r - b)) / (np.sqrt((r - g) ** 2 + (r - b) * (g - b)) + _EPS)
    theta = np.arccos(np.clip(cosine, -1.0, 1.0))
    hue = np.where(b > g, 2.0 * np.pi - theta, theta) / (2.0 * np.pi)
    saturation = 1.0 - 3.0 * np.minimum(np.minimum(r, g), b) / (r + g + b + _EPS)
    return np.stack([hue, saturation, (r + g + b) / 3.0], axis=-1)


def hsi_to_rgb(hsi):
    """The authors' ``hsi2rgb`` (sector formulas), clipped to ``[0, 1]``."""
    hue = hsi[..., 0] * 2.0 * np.pi
    saturation, intensity = hsi[..., 1], hsi[..., 2]
    sector = np.clip(np.floor(hue / (2.0 * np.pi / 3.0)), 0, 2).astype(np.int64)
    angle = hue - sector * (2.0 * np.pi / 3.0)
    low = intensity * (1.0 - saturation)
    high = intensity * (1.0 + saturation * np.cos(angle) / np.cos(np.pi / 3.0 - angle))
    rest = 3.0 * intensity - (low + high)
    rgb = np.empty(hue.shape + (3,))
    # (low, high, rest) channels of the RG, GB and BR sectors.
    for index, channels in enumerate(((2, 0, 1), (0, 1, 2), (1, 2, 0))):
        in_sector = sector == index
        for channel, component in zip(channels, (low, high, rest)):
            rgb[in_sector, channel] = component[in_sector]
    return np.clip(rgb, 0.0, 1.0)


def three_step_curve():
    """``ThreeStep``: JND-paced curve from 145 to 255 that sets each block's output maximum."""
    jnd = jnd_curve()
    curve = np.arange(_LEVELS, dtype=np.float64)
    curve[0] = 145.0
    stop = _LEVELS - 1
    for index in range(1, _LEVELS):
        previous = int(_round(curve[index - 1]))
        if curve[index - 1] > 255.0:
            curve[index - 1] = 255.0
            stop = index
            break
        curve[index] = curve[index - 1] + jnd[previous - 1] / jnd[index] * 0.51
    curve[stop:] = curve[stop - 1]
    return curve


def _spread_remainder(histogram, excess, ceiling):
    """Give ``excess`` counts one at a time, in repeated passes, to bins below ``ceiling``.

    Closed form of the reference's round-robin loop: after ``P`` full passes
    a bin with room ``c`` has received ``min(c, P)`` counts; the last, partial
    pass serves bins in index order.  (The reference loops forever when the
    room is smaller than the excess; here the remainder is dropped.)
    """
    room = np.maximum(ceiling - histogram, 0)
    if room.sum() <= excess:
        return histogram + room
    passes = np.arange(room.max() + 1)
    served = np.minimum(room[None, :], passes[:, None]).sum(axis=1)
    full = int(np.searchsorted(served, excess, side="right")) - 1
    histogram = histogram + np.minimum(room, full)
    extra = np.flatnonzero(room > full)[:int(excess - served[full])]
    histogram[extra] += 1
    return histogram


def jnd_clip_histogram(histogram, top, ratio, *, max_iterations=100):
    """``eqkernel`` / ``eqkernel_new``: clip a histogram so no output step exceeds ``ratio`` JNDs.

    Each round maps the cumulative histogram to ``[0, top]``, takes the clip
    ``ratio * ceil(jnd(mapped level))`` per bin, cuts bins whose step
    ``floor(h / N * top)`` exceeds it and redistributes the excess (evenly,
    then one count at a time), until no bin exceeds its clip.

    Parameters
    ----------
    histogram : numpy.ndarray
        Counts (float64), length 256.
    top : float
        Output maximum of the mapping (``maxv``).
    ratio : float
        Clip in JND units.
    max_iterations : int, optional
        Safety cap on the rounds.

    Returns
    -------
    numpy.ndarray
        Clipped histogram.
    """
    jnd = np.ceil(jnd_curve())
    total = histogram.sum()
    h = histogram.astype(np.float64)
    for _ in range(max_iterations):
        mapped = _round(np.cumsum(h) / total * top).astype(np.int64)
        clip = jnd[np.clip(mapped, 0, _LEVELS - 1)] * ratio
        step = np.floor(h / total * top)
        if not np.any(step > clip):
            break
        # At least one count per bin: the reference's ceiling reaches 0 (and
        # its loop never ends) for histograms of a dozen pixels or fewer.
        limit = np.maximum(np.floor(clip / top * total), 1.0)
        capped = np.minimum(h, limit)
        excess = float((h - capped).sum())
        h = capped
        even_share = np.floor(excess / _LEVELS)
        gets_share = step < clip - np.floor(even_share / total * top)
        fills_up = ~gets_share & (step < clip)
        h[gets_share] += even_share
        excess -= even_share * gets_share.sum()
        # The reference uses 255 here, not ``top``.
        filled = np.floor(clip / 255.0 * total)
        excess -= float((filled[fills_up] - h[fills_up]).sum())
        h[fills_up] = filled[fills_up]
        if excess > 0:
            # The reference compares each bin with the whole vector of
            # ceilings, i.e. with their minimum.
            h = _spread_remainder(h, int(excess), limit.min())
    return h


def _curve_from_histogram(histogram, top):
    """Block look-up table: cumulative histogram scaled to ``[0, top]``, empty bins interpolated."""
    counts = _round(histogram)
    probability = counts / counts.sum()
    # The reference's running sum leaves the first entry unscaled.
    curve = 255.0 * np.cumsum(probability) - 254.0 * probability[0]
    empty = counts == 0
    empty[0] = empty[-1] = False
    if empty.any():
        levels = np.arange(_LEVELS)
        curve[empty] = np.interp(levels[empty], levels[~empty], curve[~empty])
    return curve * top / 255.0


def block_equalize(rgb, *, block=30):
    """``CLHE_new``: block-wise JND-limited equalisation with Gaussian blending of block curves.

    Parameters
    ----------
    rgb : numpy.ndarray
        uint8 RGB image, shape ``(H, W, 3)``.
    block : int, optional
        Block side in pixels.

    Returns
    -------
    numpy.ndarray
        float64 equalised RGB on the 0-255 scale.
    """
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, block - height % block), (0, block - width % block), (0, 0)),
                    mode="symmetric")
    rows, cols = padded.shape[0] // block, padded.shape[1] // block
    blocks = padded.reshape(rows, block, cols, block, 3).transpose(0, 2, 1, 3, 4)
    blocks = blocks.reshape(rows * cols, block * block, 3).astype(np.int64)
    offsets = np.arange(rows * cols)[:, None] * _LEVELS
    channel_histograms = np.stack(
        [np.bincount((blocks[..., c] + offsets).ravel(), minlength=rows * cols * _LEVELS)
         .reshape(rows * cols, _LEVELS) for c in range(3)], axis=1)
    block_entropy = _entropy(channel_histograms).max(axis=1)
    image_histograms = np.stack([np.bincount(rgb[..., c].ravel(), minlength=_LEVELS)
                                 for c in range(3)])
    image_entropy = _entropy(image_histograms).max()
    global_histogram = jnd_clip_histogram(image_histograms.sum(axis=0).astype(np.float64),
                                          255.0, 2.0)
    global_histogram *= block * block / global_histogram.sum()
    tops = three_step_curve()[blocks.max(axis=(1, 2))]

    curves = np.empty((rows * cols, _LEVELS))
    for index in range(rows * cols):
        local = 1.0 if image_entropy == 0 else min(1.0, block_entropy[index] / image_entropy)
        share = (1.0 - local) / (local if local > 0 else 1.0)
        histogram = channel_histograms[index].sum(axis=0) + _round(global_histogram * share)
        ratio = 1.0 + (1.0 - _entropy(histogram) / 8.0)
        clipped = jnd_clip_histogram(histogram, tops[index], ratio)
        curves[index] = _curve_from_histogram(clipped, tops[index])
    curves = curves.reshape(rows, cols, _LEVELS)

    # Each pixel blends the curves of the (up to) 5 x 5 blocks around its own
    # with Gaussian weights exp(-d^2 / (2 block^2)) of the distance to their
    # centres; the weights are separable, so they are built per axis.
    def neighbour_blocks(size, count):
        position = np.arange(1, size + 1, dtype=np.float64)
        own = np.arange(size) // block
        for shift in range(-2, 3):
            index = own + shift
            inside = (index >= 0) & (index < count)
            weight = np.exp(-((index + 0.5) * block - position) ** 2 / (2.0 * block ** 2))
            yield np.clip(index, 0, count - 1), np.where(inside, weight, 0.0)

    row_blocks = list(neighbour_blocks(height, rows))
    col_blocks = list(neighbour_blocks(width, cols))
    norm = sum(w for _, w in row_blocks)[:, None] * sum(w for _, w in col_blocks)[None, :]
    values = rgb.astype(np.int64)
    total = np.zeros(rgb.shape)
    for r, weight_r in row_blocks:
        for c, weight_c in col_blocks:
            weight = (weight_r[:, None] * weight_c[None, :])[..., None]
            total += weight * curves[r[:, None, None], c[None, :, None], values]
    return total / norm[..., None]


def local_contrast(intensity, radius):
    """``(max - min) / max`` over ``(2r+1)^2`` windows (``/ 1`` where the max is 0)."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    high = cv2.dilate(intensity, kernel)
    low = cv2.erode(intensity, kernel)
    return (high - low) / np.where(high > 0, high, 1.0)


def similar_colour_mean(values, colours, *, radius=30, tolerance=16):
    """``getspecialmean``: mean of ``values`` over the window pixels of similar colour.

    For each pixel, the mean of ``values`` over the ``(2r+1)^2`` window (mirror
    padding) restricted to pixels whose three 8-bit channels all differ from
    the centre's by less than ``tolerance`` (the centre always qualifies).
    Exact: one masked accumulation per window offset.  With ``tolerance`` a
    power of two, "all three differences are below it" is one test on the
    RGBA bytes viewed as a 32-bit word, which keeps the loop cheap.

    Parameters
    ----------
    values : numpy.ndarray
        float values, shape ``(H, W)``.
    colours : numpy.ndarray
        uint8 RGB image, shape ``(H, W, 3)``.
    radius : int, optional
        Window radius.
    tolerance : int, optional
        Colour tolerance, a power of two between 1 and 128.

    Returns
    -------
    numpy.ndarray
        float64 means, shape ``(H, W)``.
    """
    if tolerance not in (1, 2, 4, 8, 16, 32, 64, 128):
        raise ValueError(f"tolerance must be a power of two up to 128, got {tolerance}")
    height, width = values.shape
    # Constants as full arrays: OpenCV would read a 1 x 1 image as a scalar.
    high_bits = np.full((height, width), (256 - tolerance) * 0x010101, np.int32)
    zeros = np.zeros((height, width), np.int32)

    def pad(array):
        return cv2.copyMakeBorder(array, radius, radius, radius, radius, cv2.BORDER_REFLECT_101)

    rgba = np.dstack([colours, np.zeros((height, width), np.uint8)])
    padded_rgba = pad(rgba)
    padded_values = pad(values.astype(np.float32))
    padded_ones = pad(np.ones((height, width), np.float32))
    sums = np.zeros((height, width), np.float32)
    counts = np.zeros((height, width), np.float32)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = (slice(dy, dy + height), slice(dx, dx + width))
            difference = cv2.absdiff(padded_rgba[window], rgba).view(np.int32)
            difference = difference.reshape(height, width)
            similar = cv2.compare(cv2.bitwise_and(difference, high_bits), zeros, cv2.CMP_EQ)
            cv2.accumulate(padded_values[window], sums, similar)
            cv2.accumulate(padded_ones[window], counts, similar)
    return sums.astype(np.float64) / counts


def cdsa(image, *, block=30, contrast_radius=5, contrast_limit=0.2, smoothing_radius=30,
         colour_tolerance=16):
    """Enhance contrast and adjust saturation with CDSA (Wang et al., JOSA A 2017).

    Parameters
    ----------
    image : numpy.ndarray
        float32 RGB image in ``[0, 1]``, shape ``(H, W, 3)``.
    block : int, optional
        Block side of the equalisation; 30.
    contrast_radius : int, optional
        Radius of the local-contrast windows; 5 (11 x 11).
    contrast_limit : float, optional
        ``c``: below this input contrast the saturation ratio is
        ``(delta_out + c - delta_in) / c`` instead of ``delta_out / delta_in``;
        0.2.
    smoothing_radius : int, optional
        Radius of the colour-restricted smoothing of the ratio; 30 (61 x 61).
    colour_tolerance : int, optional
        Channel difference (8-bit) below which a neighbour counts as similar;
        16.

    Returns
    -------
    numpy.ndarray
        float32 RGB image in ``[0, 1]``, same shape.

    Notes
    -----
    All values are the constants of the authors' code.  Colour: the output
    keeps the HSI hue of the white-balanced image, takes the HSI intensity of
    the equalised image and scales the saturation by the smoothed contrast
    ratio; as in the reference, pure black pixels have saturation 1 in the
    authors' HSI and may take a tint when brightened.

    References
    ----------
    S. Wang, W. Cho, J. Jang, M. A. Abidi, J. Paik, "Contrast-dependent
    saturation adjustment for outdoor image enhancement", J. Opt. Soc. Am. A
    34(1):7-17, 2017.
    """
    image = check_rgb_image(image)
    balanced = white_balance(to_levels(image))
    before = _round(balanced.astype(np.float64).mean(axis=2))
    hsi = rgb_to_hsi(balanced / 255.0)
    after = _round(block_equalize(balanced, block=block).mean(axis=2))
    contrast_before = local_contrast(before, contrast_radius)
    contrast_after = local_contrast(after, contrast_radius)
    low = contrast_before < contrast_limit
    ratio = np.where(low, (contrast_after + contrast_limit - contrast_before) / contrast_limit,
                     contrast_after / np.where(low, 1.0, contrast_before))
    ratio = similar_colour_mean(ratio, balanced, radius=smoothing_radius,
                                tolerance=colour_tolerance)
    hsi[..., 2] = after / 255.0
    hsi[..., 1] *= ratio
    return finish_rgb(hsi_to_rgb(hsi))
