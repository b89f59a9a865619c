"""Develop engine: render Lightroom-like settings on a rendered sRGB picture.

The fifteen preset pseudo-users of Kosugi & Yamasaki (IEEE TCSVT 2023) are
FiveK originals developed with Lightroom presets. :func:`develop` applies a
:class:`~rules.develop.settings.DevelopSettings` to a float32 sRGB picture
with open approximations of Camera Raw's controls, in Camera Raw's order:

1. sRGB decode to linear light;
2. incremental white balance (temperature, tint);
3. exposure;
4. Basic-panel tone: contrast, highlights, shadows, whites, blacks;
5. dehaze, texture, clarity;
6. sRGB encode and clip to [0, 1];
7. parametric curve, then the point curve, then the red/green/blue curves;
8. colour: the HSL panel, vibrance and saturation - or, for B&W, the gray
   mixer conversion instead;
9. split toning / colour grading (after B&W so monochrome can be toned);
10. post-crop vignette;
11. grain;
12. clip to [0, 1].

Stages whose controls are all at their defaults are skipped, so the default
settings return the input unchanged, bit for bit.
"""

from __future__ import annotations

import numpy as np

from rules.develop.color import (
    apply_color_grading,
    apply_hsl,
    apply_vibrance_saturation,
    to_grayscale,
)
from rules.develop.effects import apply_grain, apply_vignette
from rules.develop.local import apply_dehaze, apply_detail
from rules.develop.maths import linear_to_srgb, srgb_to_linear
from rules.develop.settings import IDENTITY_CURVE, DevelopSettings
from rules.develop.tone import (
    apply_basic_tone,
    apply_curve,
    apply_exposure,
    apply_white_balance,
    parametric_curve_points,
)


def develop(image: np.ndarray, settings: DevelopSettings, *, seed: int = 0) -> np.ndarray:
    """Apply develop settings to a rendered sRGB picture.

    Parameters
    ----------
    image : ndarray
        HxWx3 RGB, sRGB-encoded, float in [0, 1]. Not modified.
    settings : DevelopSettings
        The controls to apply (see :mod:`rules.develop.settings`).
    seed : int
        Seed of the grain pattern; the output is a pure function of
        ``(image, settings, seed)``.

    Returns
    -------
    ndarray
        HxWx3 float32 in [0, 1]. For the default settings, a copy of the
        input.

    Raises
    ------
    ValueError
        If ``image`` is not an HxWx3 floating-point array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"develop expects an HxWx3 float RGB image, got {image.dtype} "
                         f"with shape {image.shape}")
    rgb = image.astype(np.float32, copy=True)
    if settings.is_identity():
        return rgb
    s = settings
    if _has_linear_stage(s):
        linear = srgb_to_linear(rgb)
        if s.temperature or s.tint:
            linear = apply_white_balance(linear, s.temperature, s.tint)
        if s.exposure:
            linear = apply_exposure(linear, s.exposure)
        if s.contrast or s.highlights or s.shadows or s.whites or s.blacks:
            linear = apply_basic_tone(linear, contrast=s.contrast, highlights=s.highlights,
                                      shadows=s.shadows, whites=s.whites, blacks=s.blacks)
        if s.dehaze:
            linear = apply_dehaze(linear, s.dehaze)
        if s.texture or s.clarity:
            linear = apply_detail(linear, texture=s.texture, clarity=s.clarity)
        rgb = np.clip(linear_to_srgb(linear), 0.0, 1.0)
    rgb = _apply_curves(rgb, s)
    if s.convert_to_grayscale:
        rgb = to_grayscale(np.clip(rgb, 0.0, 1.0), s.gray_mixer)
    else:
        if any(s.hue_adjustment) or any(s.saturation_adjustment) or any(s.luminance_adjustment):
            rgb = apply_hsl(rgb, s.hue_adjustment, s.saturation_adjustment,
                            s.luminance_adjustment)
        if s.vibrance or s.saturation:
            rgb = apply_vibrance_saturation(rgb, s.vibrance, s.saturation)
    grading = (s.split_shadow_saturation, s.split_highlight_saturation,
               s.grade_midtone_saturation, s.grade_global_saturation,
               s.grade_shadow_luminance, s.grade_midtone_luminance,
               s.grade_highlight_luminance, s.grade_global_luminance)
    if any(grading):
        rgb = apply_color_grading(
            np.clip(rgb, 0.0, 1.0),
            shadow=(s.split_shadow_hue, s.split_shadow_saturation),
            highlight=(s.split_highlight_hue, s.split_highlight_saturation),
            midtone=(s.grade_midtone_hue, s.grade_midtone_saturation),
            global_=(s.grade_global_hue, s.grade_global_saturation),
            luminance=(s.grade_shadow_luminance, s.grade_midtone_luminance,
                       s.grade_highlight_luminance, s.grade_global_luminance),
            balance=s.split_balance, blending=s.grade_blending)
    if s.vignette_amount:
        rgb = apply_vignette(np.clip(rgb, 0.0, 1.0), amount=s.vignette_amount,
                             midpoint=s.vignette_midpoint, feather=s.vignette_feather,
                             roundness=s.vignette_roundness, style=s.vignette_style)
    if s.grain_amount:
        rgb = apply_grain(np.clip(rgb, 0.0, 1.0), amount=s.grain_amount, size=s.grain_size,
                          roughness=s.grain_roughness, seed=seed)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _has_linear_stage(s: DevelopSettings) -> bool:
    return any((s.temperature, s.tint, s.exposure, s.contrast, s.highlights, s.shadows,
                s.whites, s.blacks, s.dehaze, s.texture, s.clarity))


def _apply_curves(rgb: np.ndarray, s: DevelopSettings) -> np.ndarray:
    """Parametric curve, master point curve, then per-channel point curves."""
    if s.parametric_shadows or s.parametric_darks or s.parametric_lights \
            or s.parametric_highlights:
        xs, ys = parametric_curve_points(
            s.parametric_shadows, s.parametric_darks, s.parametric_lights,
            s.parametric_highlights,
            (s.parametric_shadow_split, s.parametric_midtone_split,
             s.parametric_highlight_split))
        rgb = apply_curve(rgb, xs, ys)
    if s.tone_curve != IDENTITY_CURVE:
        rgb = apply_curve(rgb, *_unit_points(s.tone_curve))
    channels = (s.tone_curve_red, s.tone_curve_green, s.tone_curve_blue)
    if any(curve != IDENTITY_CURVE for curve in channels):
        rgb = rgb.copy()
        for index, curve in enumerate(channels):
            if curve != IDENTITY_CURVE:
                rgb[..., index] = apply_curve(rgb[..., index], *_unit_points(curve))
    return rgb


def _unit_points(curve) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(curve, dtype=np.float64) / 255.0
    return points[:, 0], points[:, 1]
