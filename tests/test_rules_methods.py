"""Tests of the ten conventional enhancement methods in ``rules/`` and their helpers."""

import itertools

import cv2
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import skimage.data

import rules.clahe
from rules._color import check_rgb_image, hsv_value, replace_hsv_value, replace_luma
from rules._sparse import (adjoint_differences, difference_operators, forward_differences,
                           screened_laplacian, solve_uniform, solve_weighted)
from rules.cdsa import (_spread_remainder, hsi_to_rgb, jnd_clip_histogram, rgb_to_hsi,
                        similar_colour_mean)
from rules.clahe import clip_limit_count, equalize_tiles
from rules.conventional import METHODS, ConventionalMethod
from rules.gcehistmod import gcehistmod_curve
from rules.jiep import guided_filter, jiep, jiep_decompose
from rules.ldr import ldr_curve
from rules.lime import lime_illumination, lime_weights
from rules.llf import llf, pyramid_depth
from rules.npea import bright_pass, closest_brighter
from rules.pie import pie_decompose
from rules.srie import srie_decompose

NAMES = sorted(METHODS)
LOW_LIGHT = ["LIME", "JieP", "NPEA", "PIE", "SRIE", "LDR"]
HISTOGRAM = ["CLAHE", "GCEHistMod", "LDR", "CDSA"]


def photo(name, width=128):
    """A real photograph from scikit-image, downscaled, as float32 RGB in [0, 1]."""
    rgb = getattr(skimage.data, name)()
    height = round(rgb.shape[0] * width / rgb.shape[1])
    small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def luma(image):
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def outputs():
    """Every method's output on the same photograph (computed once)."""
    image = photo("astronaut")
    return image, {name: METHODS[name].function(image) for name in NAMES}


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", NAMES)
def test_output_keeps_dtype_shape_and_range(name, outputs):
    image, results = outputs
    out = results[name]
    assert out.dtype == np.float32
    assert out.shape == image.shape
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, image)


@pytest.mark.parametrize("name", NAMES)
def test_is_deterministic_and_leaves_input_alone(name, outputs):
    image, results = outputs
    copy = image.copy()
    again = METHODS[name].function(image)
    assert np.array_equal(again, results[name])
    assert np.array_equal(image, copy)


def degenerate_images():
    crop = photo("coffee", width=64)[:17, :23]
    return {
        "black": np.zeros((16, 16, 3), np.float32),
        "white": np.ones((16, 16, 3), np.float32),
        "grey": np.full((16, 16, 3), 0.5, np.float32),
        "one pixel": np.full((1, 1, 3), 0.3, np.float32),
        "one row": photo("coffee", width=64)[:1, :9],
        "one column": photo("coffee", width=64)[:9, :1],
        "odd 17x23": np.ascontiguousarray(crop),
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(degenerate_images()))
def test_handles_degenerate_images(name, case):
    image = degenerate_images()[case]
    out = METHODS[name].function(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 3), np.float64),
    np.zeros((8, 8, 3), np.uint8),
    np.zeros((8, 8), np.float32),
    np.zeros((8, 8, 4), np.float32),
    np.zeros((0, 8, 3), np.float32),
    np.full((8, 8, 3), 1.5, np.float32),
    np.full((8, 8, 3), np.nan, np.float32),
    [[[0.0, 0.0, 0.0]]],
], ids=["float64", "uint8", "2-D", "RGBA", "empty", "above 1", "NaN", "list"])
def test_rejects_bad_input(name, bad):
    with pytest.raises(ValueError):
        METHODS[name].function(bad)


# --------------------------------------------------------------------------- effects


@pytest.mark.parametrize("name", LOW_LIGHT)
def test_low_light_methods_brighten_a_dark_photo(name):
    dark = (photo("chelsea") * 0.25).astype(np.float32)
    out = METHODS[name].function(dark)
    assert luma(out).mean() > 1.5 * luma(dark).mean()


@pytest.mark.parametrize("name", HISTOGRAM)
def test_histogram_methods_raise_contrast_of_a_flat_photo(name):
    flat = (0.35 + 0.3 * photo("coffee")).astype(np.float32)
    out = METHODS[name].function(flat)
    assert luma(out).std() > 1.5 * luma(flat).std()


def test_llf_increases_local_detail():
    image = photo("chelsea")

    def detail(x):
        y = luma(x)
        return np.abs(y - cv2.GaussianBlur(y, (0, 0), 2.0)).mean()

    assert detail(METHODS["LLF"].function(image)) > 1.2 * detail(image)


def test_llf_is_the_identity_without_remapping():
    image = photo("coffee", width=64)
    out = llf(image, alpha=1.0, beta=1.0)
    assert np.abs(out - image).max() < 1e-5


def test_outputs_are_pairwise_distinct(outputs):
    _, results = outputs
    for first, second in itertools.combinations(NAMES, 2):
        assert np.abs(results[first] - results[second]).mean() > 2.0 / 255.0, (first, second)


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_papers_ten_methods():
    assert set(METHODS) == {"CDSA", "CLAHE", "GCEHistMod", "JieP", "LDR", "LIME", "LLF",
                            "NPEA", "PIE", "SRIE"}
    for name, method in METHODS.items():
        assert isinstance(method, ConventionalMethod)
        assert method.name == name and method.reference and method.colour


def test_registry_defaults_follow_the_signatures():
    lime_method = METHODS["LIME"]
    assert lime_method.defaults == {"gamma": 0.7, "lam": 0.15, "sigma": 2.0, "eps": 1e-3, "weighting": "bounded"}
    assert METHODS["CLAHE"].defaults == {"tiles": (8, 8), "clip_limit": 0.01, "channel": "lab"}
    defaults = lime_method.defaults
    defaults["gamma"] = 0.0
    assert lime_method.defaults["gamma"] == 0.7
    with pytest.raises(AttributeError):
        lime_method.name = "other"


# --------------------------------------------------------------------------- CLAHE


def opencv_redistribution(histograms, clip):
    """OpenCV's CLAHE clipping: excess // 256 to every bin, the rest to every k-th bin."""
    excess = np.maximum(histograms - clip, 0).sum(axis=1)
    clipped = np.minimum(histograms, clip) + (excess // 256)[:, None]
    for tile, residual in enumerate(excess % 256):
        if residual:
            clipped[tile, ::max(256 // residual, 1)][:residual] += 1
    return clipped


def test_clahe_matches_opencv_without_clipping():
    value = (hsv_value(photo("coffee")) * 255).round().astype(np.uint8)  # 85 x 128: tiles 10.6 rows
    value = value[:80]  # 8 x 8 tiles of 10 x 16 pixels: no padding on either side
    ours = equalize_tiles(value, tiles=(8, 8), clip_limit=1.0)
    theirs = cv2.createCLAHE(clipLimit=256.0, tileGridSize=(8, 8)).apply(value)
    difference = np.abs(ours.astype(int) - theirs)
    # OpenCV rounds each tile's curve to 8 bits before interpolating.
    assert difference.max() <= 1
    assert np.mean(difference == 0) > 0.8


def test_clahe_matches_opencv_at_the_default_clip_up_to_redistribution(monkeypatch):
    value = (hsv_value(photo("astronaut", width=256)) * 255).round().astype(np.uint8)[:160]
    pixels = (160 // 8) * (256 // 8)
    count = clip_limit_count(pixels, 0.01)
    assert count == int(np.ceil(pixels / 256)) + round(0.01 * (pixels - np.ceil(pixels / 256)))
    monkeypatch.setattr(rules.clahe, "_clip_histograms", opencv_redistribution)
    ours = equalize_tiles(value, tiles=(8, 8), clip_limit=0.01)
    theirs = cv2.createCLAHE(clipLimit=(count + 0.5) * 256 / pixels,
                             tileGridSize=(8, 8)).apply(value)
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def matlab_clip_histogram(histogram, clip):
    """Literal transcription of adapthisteq's clipHistogram (test oracle)."""
    h = histogram.copy()
    excess = int(np.maximum(h - clip, 0).sum())
    increment = excess // 256
    upper = clip - increment
    for k in range(256):
        if h[k] > clip:
            h[k] = clip
        elif h[k] > upper:
            excess -= clip - h[k]
            h[k] = clip
        else:
            excess -= increment
            h[k] += increment
    start = 0
    while excess:
        for m in range(start, 256, max(256 // excess, 1)):
            if h[m] < clip:
                h[m] += 1
                excess -= 1
                if excess == 0:
                    break
        start = (start + 1) % 256
    return h


def test_clahe_clipping_follows_adapthisteq():
    rng = np.random.default_rng(0)
    histograms = np.stack([np.bincount(rng.integers(0, rng.integers(8, 256), 700), minlength=256)
                           for _ in range(20)])
    clip = 6
    ours = rules.clahe._clip_histograms(histograms.copy(), clip)
    for mine, original in zip(ours, histograms):
        assert np.array_equal(mine, matlab_clip_histogram(original, clip))
    assert np.array_equal(ours.sum(axis=1), histograms.sum(axis=1))
    assert ours.max() <= clip


# --------------------------------------------------------------------------- LIME and solvers


def test_lime_illumination_solves_its_linear_system():
    image = (photo("chelsea") * 0.5).astype(np.float32)
    lam = 0.15
    t = lime_illumination(image, lam=lam, sigma=2.0, eps=1e-3)
    t_hat = image.max(axis=2).astype(np.float64)
    wx, wy = lime_weights(t_hat, sigma=2.0, eps=1e-3)
    dx, dy = difference_operators(t_hat.shape)
    system = sp.identity(t_hat.size) + lam * (dx.T @ sp.diags(wx.ravel()) @ dx
                                              + dy.T @ sp.diags(wy.ravel()) @ dy)
    residual = np.linalg.norm(system @ t.ravel() - t_hat.ravel()) / np.linalg.norm(t_hat)
    assert residual < 1e-3
    assert wx.max() > 5 * wx[:, :-1].min()  # the weights really vary across edges
    assert t.min() > -1e-3 and t.max() < 1 + 1e-3


@pytest.mark.parametrize("shape", [(7, 5), (1, 6), (6, 1), (1, 1)])
def test_screened_laplacian_equals_the_operator_products(shape):
    rng = np.random.default_rng(1)
    wx, wy, diagonal = (rng.random(shape) for _ in range(3))
    dx, dy = difference_operators(shape)
    expected = sp.diags(diagonal.ravel()) + dx.T @ sp.diags(wx.ravel()) @ dx \
        + dy.T @ sp.diags(wy.ravel()) @ dy
    assert np.allclose(screened_laplacian(diagonal, wx, wy).toarray(), expected.toarray())


def test_difference_helpers_match_the_sparse_operators():
    rng = np.random.default_rng(2)
    u, px, py = (rng.random((6, 9)) for _ in range(3))
    dx, dy = difference_operators(u.shape)
    gx, gy = forward_differences(u)
    assert np.allclose(gx.ravel(), dx @ u.ravel()) and np.allclose(gy.ravel(), dy @ u.ravel())
    assert np.allclose(adjoint_differences(px, py).ravel(), dx.T @ px.ravel() + dy.T @ py.ravel())


def test_solvers_agree_with_a_direct_solve():
    rng = np.random.default_rng(3)
    shape = (9, 13)
    rhs = rng.random(shape)
    dx, dy = difference_operators(shape)
    laplacian = dx.T @ dx + dy.T @ dy
    exact = spla.spsolve((0.5 * sp.identity(rhs.size) + 3.0 * laplacian).tocsc(), rhs.ravel())
    assert np.allclose(solve_uniform(rhs, 0.5, 3.0).ravel(), exact)
    assert np.allclose(solve_uniform(rhs.astype(np.float32), 0.5, 3.0).ravel(), exact, atol=1e-4)

    wx, wy = rng.random(shape) * 50, rng.random(shape) * 50
    diagonal = 0.1 + rng.random(shape)
    matrix = screened_laplacian(diagonal, wx, wy).tocsc()
    exact = spla.spsolve(matrix, rhs.ravel())
    for preconditioner in ("dct", "jacobi"):
        solution = solve_weighted(diagonal, wx, wy, rhs, rtol=1e-10, maxiter=1000,
                                  preconditioner=preconditioner)
        assert np.allclose(solution.ravel(), exact, atol=1e-7)
    with pytest.raises(ValueError):
        solve_weighted(diagonal, wx, wy, rhs, preconditioner="multigrid")


# --------------------------------------------------------------------------- colour helpers


def test_replacing_the_value_keeps_hue_and_saturation():
    image = photo("coffee", width=64)
    value = hsv_value(image)
    out = replace_hsv_value(image, 0.5 * value + 0.25).astype(np.float32)
    before = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    after = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
    coloured = (value > 0.05) & (before[..., 1] > 0.05)
    assert np.allclose(after[..., 2], 0.5 * value + 0.25, atol=1e-5)
    assert np.allclose(after[..., 1][coloured], before[..., 1][coloured], atol=1e-4)
    assert np.allclose(after[..., 0][coloured], before[..., 0][coloured], atol=0.05)
    black = np.zeros((2, 2, 3), np.float32)
    assert np.allclose(replace_hsv_value(black, np.full((2, 2), 0.4)), 0.4)
    assert np.allclose(replace_luma(black, np.full((2, 2), 0.4)), 0.4)


def test_check_rgb_image_returns_valid_input_unchanged():
    image = photo("coffee", width=32)
    assert check_rgb_image(image) is image


# --------------------------------------------------------------------------- method internals


def test_npea_filters_match_brute_force():
    rng = np.random.default_rng(4)
    lightness = rng.integers(10, 256, (9, 11))
    radius = 2
    bright = closest_brighter(lightness, radius)
    local_max = cv2.dilate(lightness.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(int)
    padded = np.pad(local_max, radius, mode="reflect")
    for y, x in itertools.product(range(9), range(11)):
        window = padded[y:y + 5, x:x + 5]
        assert bright[y, x] == window[window >= lightness[y, x]].min()

    out = bright_pass(lightness, bright, radius=3, sigma_range=5.0)
    padded = np.pad(bright, 3, mode="reflect")
    for y, x in itertools.product(range(9), range(11)):
        window = padded[y:y + 7, x:x + 7]
        v = window[window >= lightness[y, x]]
        w = np.exp(-(v - lightness[y, x]) / 50.0)
        assert np.isclose(out[y, x], np.sum(w * (v + 1)) / np.sum(w))


def test_cdsa_similar_colour_mean_matches_brute_force():
    colours = (photo("astronaut", width=16)[:10] * 255).round().astype(np.uint8)
    values = np.random.default_rng(5).random(colours.shape[:2])
    out = similar_colour_mean(values, colours, radius=3, tolerance=16)
    padded_c = np.pad(colours.astype(int), ((3, 3), (3, 3), (0, 0)), mode="reflect")
    padded_v = np.pad(values, 3, mode="reflect")
    for y, x in itertools.product(range(colours.shape[0]), range(colours.shape[1])):
        similar = np.all(np.abs(padded_c[y:y + 7, x:x + 7] - colours[y, x]) < 16, axis=2)
        assert np.isclose(out[y, x], padded_v[y:y + 7, x:x + 7][similar].mean(), atol=1e-6)


def test_cdsa_histogram_clipping_meets_its_jnd_limit():
    levels = (photo("coffee") * 255).round().astype(np.int64)
    histogram = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    histogram[128] += histogram.sum() // 5  # a flat region: its step needs clipping
    clipped = jnd_clip_histogram(histogram, 255.0, 2.0)
    jnd = np.ceil(17.0 * (1 - np.sqrt(np.arange(256) / 127.0)) + 3.0)
    jnd[128:] = np.ceil(3.0 * (np.arange(128, 256) - 127.0) / 128.0 + 3.0)
    mapped = np.floor(np.cumsum(clipped) / clipped.sum() * 255 + 0.5).astype(int)
    assert np.all(np.floor(clipped / clipped.sum() * 255) <= 2.0 * jnd[mapped])
    assert clipped.sum() == histogram.sum()
    assert np.abs(clipped - histogram).sum() > 0


def test_cdsa_round_robin_spreading_matches_a_literal_loop():
    rng = np.random.default_rng(6)
    for _ in range(20):
        histogram = rng.integers(0, 12, 256).astype(np.float64)
        ceiling, excess = 10.0, int(rng.integers(1, 400))
        expected, left = histogram.copy(), excess
        while left > 0 and np.any(expected < ceiling):
            for i in range(256):
                if expected[i] < ceiling:
                    expected[i] += 1
                    left -= 1
                if left <= 0:
                    break
        assert np.array_equal(_spread_remainder(histogram, excess, ceiling), expected)


def test_cdsa_hsi_round_trip():
    rgb = photo("coffee", width=32).astype(np.float64)
    assert np.allclose(hsi_to_rgb(rgb_to_hsi(rgb)), rgb, atol=1e-6)


def test_tone_curves_are_monotone():
    levels = (hsv_value(photo("chelsea")) * 255).round().astype(np.uint8)
    gce = gcehistmod_curve(levels)
    assert gce[0] == 0 and np.all(np.diff(gce.astype(int)) >= 0) and gce[-1] >= 250
    black = gcehistmod_curve(np.zeros((8, 8), np.uint8))
    assert np.array_equal(black, np.arange(256))
    curve = ldr_curve(levels.astype(np.int64))
    assert curve[0] == 0 and np.isclose(curve[-1], 255) and np.all(np.diff(curve) >= 0)
    assert np.array_equal(ldr_curve(np.full((8, 8), 90)), np.arange(256))


def test_retinex_decompositions_respect_their_constraints():
    image = (photo("chelsea", width=64) * 0.5).astype(np.float32)
    value = hsv_value(image)
    illumination, reflectance = pie_decompose(value * 255.0)
    assert np.all(illumination >= value * 255.0 - 1e-9)
    assert reflectance.min() >= 0.0 and reflectance.max() <= 1.0
    log_r, log_l = srie_decompose(value * 255.0)
    assert log_r.max() <= 0.0 and np.all(log_l >= np.log1p(value * 255.0).astype(np.float32))
    gray = luma(image)
    shading, albedo = jiep_decompose(value, gray)
    assert np.abs(shading * albedo - value).mean() < 0.05 * value.mean()


def psnr(first, second):
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    mse = float(np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


@pytest.mark.parametrize("name, width", [("coffee", 64), ("astronaut", 96)])
def test_jiep_conjugate_gradients_agree_with_direct_solves(name, width):
    # Darkened photographs on which the reference tolerance (0.01), warm-started,
    # gave 50 dB (coffee) and 23 dB (astronaut) from exact solves.
    image = (photo(name, width=width) * 0.5).astype(np.float32)
    assert psnr(jiep(image), jiep(image, solver="direct")) >= 50.0
    with pytest.raises(ValueError):
        jiep(image, solver="multigrid")


def test_guided_filter_keeps_constants_and_pyramid_depth_follows_aubry():
    guide = np.random.default_rng(7).random((12, 15))
    assert np.allclose(guided_filter(guide, np.full((12, 15), 0.3), 4, 1e-4), 0.3)
    assert pyramid_depth(341, 512) == 8
    assert pyramid_depth(1, 40) == 1 and pyramid_depth(2, 2) == 2
