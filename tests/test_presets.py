"""Lightroom-like presets: the fifteen built-in looks, their readers and the develop engine."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import defusedxml.ElementTree as SafeElementTree
import numpy as np
import pytest
from skimage import data

from rules.develop.engine import develop
from rules.develop.effects import GRAIN_STRENGTH, grain_field
from rules.develop.settings import BANDS, DevelopSettings, SettingWarning
from rules.develop.color import apply_vibrance_saturation
from rules.develop.tone import (
    EXPOSURE_KNEE,
    apply_exposure,
    basic_tone_curve,
    parametric_curve_points,
    white_balance_matrix,
)
from rules.develop.lrtemplate import MAX_DEPTH, parse_lrtemplate, read_lrtemplate
from rules.develop.preset import builtin_presets, load_preset, load_preset_dir
from rules.develop.preset_types import PresetError
from rules.develop.xmp import CRS, RDF, read_xmp

PRESET_DIR = Path(__file__).resolve().parents[1] / "rules" / "presets"
PUNCH_XMP = (PRESET_DIR / "punch.xmp").read_bytes()


def _small(image: np.ndarray, size: int = 96) -> np.ndarray:
    """Downscale a uint8 photo so its long side is ``size``; float32 in [0, 1]."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    small = cv2.resize(image, (round(width * scale), round(height * scale)),
                       interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _small(data.astronaut())


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return _small(data.coffee())


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=2) - rgb.min(axis=2)


def _hue(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)) % 360.0


def _local_contrast(rgb: np.ndarray, sigma: float) -> float:
    y = _luma(rgb)
    return float(np.abs(y - cv2.GaussianBlur(y, (0, 0), sigma)).mean())


def _orange_suit(rgb: np.ndarray) -> np.ndarray:
    """Mask of the astronaut's saturated orange suit."""
    hue = _hue(rgb)
    return (hue > 5.0) & (hue < 45.0) & (_chroma(rgb) > 0.3)


# --- the fifteen shipped presets -------------------------------------------------------------

def test_fifteen_builtin_presets_parse_cleanly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        presets = builtin_presets()
    assert len(presets) == 15
    assert list(presets) == sorted(presets)
    assert sorted(presets) == sorted(path.stem for path in PRESET_DIR.glob("*.xmp"))
    for name, preset in presets.items():
        assert preset.name == name
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name)
        assert preset.unknown_keys == (), name
        assert not preset.settings.is_identity(), name
        assert preset.title
    assert len({preset.title for preset in presets.values()}) == 15
    assert len({preset.settings for preset in presets.values()}) == 15


def test_builtin_files_are_complete_camera_raw_presets():
    for path in PRESET_DIR.glob("*.xmp"):
        root = SafeElementTree.fromstring(path.read_bytes(), forbid_dtd=True)
        description = root.find(f"{{{RDF}}}RDF/{{{RDF}}}Description")
        attributes = {key[len(CRS) + 2:]: value for key, value in description.attrib.items()
                      if key.startswith(f"{{{CRS}}}")}
        assert attributes["PresetType"] == "Normal", path.name
        assert attributes["HasSettings"] == "True", path.name
        assert re.fullmatch(r"[0-9A-F]{32}", attributes["UUID"]), path.name
        assert "Version" in attributes and "ProcessVersion" in attributes, path.name
        for tag in ("Name", "Group"):
            alt = description.find(f"{{{CRS}}}{tag}/{{{RDF}}}Alt/{{{RDF}}}li")
            assert alt is not None and alt.text, (path.name, tag)


def test_fifteen_outputs_are_distinct_valid_pictures(astronaut):
    outputs = {name: develop(astronaut, preset.settings)
               for name, preset in builtin_presets().items()}
    for name, out in outputs.items():
        assert out.shape == astronaut.shape and out.dtype == np.float32, name
        assert 0.0 <= out.min() and out.max() <= 1.0, name
        assert np.abs(out - astronaut).mean() > 0.01, name
    names = list(outputs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            difference = np.abs(outputs[first] - outputs[second]).mean()
            assert difference > 0.005, (first, second)


def test_develop_is_pure_and_deterministic(coffee):
    settings = builtin_presets()["aged-photo"].settings
    before = coffee.copy()
    first = develop(coffee, settings, seed=7)
    assert np.array_equal(coffee, before)
    assert np.array_equal(first, develop(coffee, settings, seed=7))


#: Largest share of a channel's pixels a preset may newly clip to 0 or to 1.
CLIP_LIMIT = 0.05


@pytest.fixture(scope="module")
def photographs() -> dict[str, np.ndarray]:
    return {name: _small(getattr(data, name)())
            for name in ("astronaut", "coffee", "chelsea", "rocket")}


def _new_clipping(out: np.ndarray, original: np.ndarray) -> dict[str, float]:
    """Share of pixels newly at 0 or at 1, per channel and end (keys like ``'B=0'``)."""
    shares = {}
    for index, channel in enumerate("RGB"):
        for end, clipped in (("0", lambda v: v <= 0.0), ("1", lambda v: v >= 1.0)):
            newly = clipped(out[..., index]) & ~clipped(original[..., index])
            shares[f"{channel}={end}"] = float(newly.mean())
    return shares


@pytest.mark.parametrize("name", sorted(path.stem for path in PRESET_DIR.glob("*.xmp")))
def test_preset_clips_few_pixels_the_input_did_not(photographs, name):
    settings = builtin_presets()[name].settings
    over = {f"{photo} {key}": round(100.0 * share, 1)
            for photo, image in photographs.items()
            for key, share in _new_clipping(develop(image, settings), image).items()
            if share > CLIP_LIMIT}
    assert not over, f"{name} newly clips more than {CLIP_LIMIT:.0%} (per cent): {over}"


def test_warm_shadows_warms_dark_tones_without_clipping_blue(coffee):
    out = develop(coffee, builtin_presets()["warm-shadows"].settings)
    dark = (_luma(coffee) > 0.05) & (_luma(coffee) < 0.3)
    warmth_before = (coffee[..., 0] - coffee[..., 2])[dark].mean()
    assert (out[..., 0] - out[..., 2])[dark].mean() > warmth_before + 0.03
    assert _new_clipping(out, coffee)["B=0"] < 0.01


@pytest.mark.parametrize("stops", [0.3, 0.6, 1.5])
def test_exposure_rolls_highlights_off_instead_of_clipping(stops):
    linear = np.linspace(0.0, 1.0, 2001, dtype=np.float32)
    out = apply_exposure(linear, stops)
    gain = np.float32(2.0**stops)
    below = linear * gain <= EXPOSURE_KNEE
    assert np.allclose(out[below], linear[below] * gain)  # shadows and mid-tones: the plain gain
    assert out[-1] == pytest.approx(1.0, abs=1e-6) and (out[:-1] < 1.0).all()  # white stays white, alone
    assert (np.diff(out) > 0).all()
    slopes = np.diff(out) / np.diff(linear)
    assert np.abs(np.diff(slopes)).max() < 0.02 * gain  # no kink at the knee
    assert np.array_equal(apply_exposure(linear, -0.5), linear * np.float32(2.0**-0.5))


def test_saturation_compresses_chroma_toward_luma_keeping_hue(astronaut):
    out = apply_vibrance_saturation(astronaut, 60.0, 40.0)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not any(_new_clipping(out, astronaut).values())
    assert np.allclose(_luma(out), _luma(astronaut), atol=1e-5)
    coloured = _chroma(astronaut) > 0.1
    turn = np.abs((_hue(out) - _hue(astronaut) + 180.0) % 360.0 - 180.0)
    assert turn[coloured].max() < 0.5
    assert (_chroma(out)[coloured] >= _chroma(astronaut)[coloured] - 1e-5).all()  # never duller
    assert _chroma(out)[coloured].mean() > 1.2 * _chroma(astronaut)[coloured].mean()


# --- develop engine: identity and directions -------------------------------------------------

def test_default_settings_are_the_exact_identity(astronaut):
    out = develop(astronaut, DevelopSettings())
    assert out is not astronaut
    assert out.dtype == np.float32 and np.array_equal(out, astronaut)


def test_inactive_effect_shapes_leave_the_picture_unchanged(astronaut):
    settings = DevelopSettings(vignette_midpoint=10.0, grain_size=80.0, split_shadow_hue=200.0,
                               parametric_shadow_split=40.0, grade_blending=90.0)
    assert not settings.is_identity()
    assert np.array_equal(develop(astronaut, settings), astronaut)


def test_develop_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="HxWx3"):
        develop(np.zeros((8, 8), np.float32), DevelopSettings(exposure=1.0))
    with pytest.raises(ValueError, match="HxWx3"):
        develop(np.zeros((8, 8, 3), np.uint8), DevelopSettings(exposure=1.0))


def _mean_luma(out, original):
    return _luma(out).mean(), _luma(original).mean()


def _region_luma(low, high):
    def measure(out, original):
        y = _luma(original)
        region = (y >= low) & (y <= high)
        return _luma(out)[region].mean(), y[region].mean()
    return measure


def _luma_std(out, original):
    return _luma(out).std(), _luma(original).std()


def _red_blue_ratio(out, original):
    return (out[..., 0].mean() / out[..., 2].mean(),
            original[..., 0].mean() / original[..., 2].mean())


def _green_share(out, original):
    def share(rgb):
        return rgb[..., 1].mean() / (rgb[..., 0].mean() + rgb[..., 2].mean())
    return share(out), share(original)


def _mean_chroma(out, original):
    return _chroma(out).mean(), _chroma(original).mean()


def _clarity_contrast(out, original):
    return _local_contrast(out, 4.0), _local_contrast(original, 4.0)


def _texture_contrast(out, original):
    return _local_contrast(out, 1.0), _local_contrast(original, 1.0)


def _dark_channel(out, original):
    return out.min(axis=2).mean(), original.min(axis=2).mean()


def _suit_chroma(out, original):
    mask = _orange_suit(original)
    return _chroma(out)[mask].mean(), _chroma(original)[mask].mean()


def _suit_luma(out, original):
    mask = _orange_suit(original)
    return _luma(out)[mask].mean(), _luma(original)[mask].mean()


def _dark_blueness(out, original):
    dark = _luma(original) < 0.35
    return ((out[..., 2] - out[..., 0])[dark].mean(),
            (original[..., 2] - original[..., 0])[dark].mean())


def _bright_warmth(out, original):
    bright = _luma(original) > 0.6
    return ((out[..., 0] - out[..., 2])[bright].mean(),
            (original[..., 0] - original[..., 2])[bright].mean())


RAISES = [
    ("exposure+", DevelopSettings(exposure=1.0), _mean_luma),
    ("contrast+", DevelopSettings(contrast=60.0), _luma_std),
    ("shadows+", DevelopSettings(shadows=80.0), _region_luma(0.0, 0.3)),
    ("blacks+", DevelopSettings(blacks=80.0), _region_luma(0.0, 0.15)),
    ("highlights+", DevelopSettings(highlights=80.0), _region_luma(0.6, 0.95)),
    ("whites+", DevelopSettings(whites=80.0), _region_luma(0.75, 0.95)),
    ("temperature+", DevelopSettings(temperature=50.0), _red_blue_ratio),
    ("tint-", DevelopSettings(tint=-50.0), _green_share),
    ("clarity+", DevelopSettings(clarity=80.0), _clarity_contrast),
    ("texture+", DevelopSettings(texture=80.0), _texture_contrast),
    ("dehaze-", DevelopSettings(dehaze=-60.0), _dark_channel),
    ("vibrance+", DevelopSettings(vibrance=60.0), _mean_chroma),
    ("saturation+", DevelopSettings(saturation=50.0), _mean_chroma),
    ("hsl-sat-orange+", DevelopSettings(saturation_adjustment=(40, 40, 0, 0, 0, 0, 0, 0)),
     _suit_chroma),
    ("hsl-lum-orange+", DevelopSettings(luminance_adjustment=(60, 60, 0, 0, 0, 0, 0, 0)),
     _suit_luma),
    ("point-curve-lift", DevelopSettings(tone_curve=((0, 0), (128, 170), (255, 255))),
     _mean_luma),
    ("parametric-shadows+", DevelopSettings(parametric_shadows=100.0), _region_luma(0.0, 0.25)),
    ("parametric-lights+", DevelopSettings(parametric_lights=100.0), _region_luma(0.45, 0.8)),
    ("split-shadows-blue", DevelopSettings(split_shadow_hue=220.0, split_shadow_saturation=60.0),
     _dark_blueness),
    ("split-highlights-warm", DevelopSettings(split_highlight_hue=40.0,
                                              split_highlight_saturation=60.0), _bright_warmth),
    ("grade-global-lum+", DevelopSettings(grade_global_luminance=60.0), _mean_luma),
]

LOWERS = [
    ("exposure-", DevelopSettings(exposure=-1.0), _mean_luma),
    ("contrast-", DevelopSettings(contrast=-60.0), _luma_std),
    ("shadows-", DevelopSettings(shadows=-80.0), _region_luma(0.0, 0.3)),
    ("blacks-", DevelopSettings(blacks=-80.0), _region_luma(0.02, 0.15)),
    ("highlights-", DevelopSettings(highlights=-80.0), _region_luma(0.6, 0.95)),
    ("whites-", DevelopSettings(whites=-80.0), _region_luma(0.75, 0.95)),
    ("temperature-", DevelopSettings(temperature=-50.0), _red_blue_ratio),
    ("tint+", DevelopSettings(tint=50.0), _green_share),
    ("clarity-", DevelopSettings(clarity=-80.0), _clarity_contrast),
    ("texture-", DevelopSettings(texture=-80.0), _texture_contrast),
    ("dehaze+", DevelopSettings(dehaze=60.0), _dark_channel),
    ("vibrance-", DevelopSettings(vibrance=-60.0), _mean_chroma),
    ("saturation-", DevelopSettings(saturation=-60.0), _mean_chroma),
    ("hsl-sat-orange-", DevelopSettings(saturation_adjustment=(-100, -100, 0, 0, 0, 0, 0, 0)),
     _suit_chroma),
    ("hsl-lum-orange-", DevelopSettings(luminance_adjustment=(-60, -60, 0, 0, 0, 0, 0, 0)),
     _suit_luma),
    ("parametric-highlights-", DevelopSettings(parametric_highlights=-100.0),
     _region_luma(0.8, 1.0)),
    ("parametric-darks-", DevelopSettings(parametric_darks=-100.0), _region_luma(0.2, 0.5)),
]


@pytest.mark.parametrize("settings, measure", [case[1:] for case in RAISES],
                         ids=[case[0] for case in RAISES])
def test_control_raises_its_measure(astronaut, settings, measure):
    after, before = measure(develop(astronaut, settings), astronaut)
    assert after > before * 1.01 + 1e-4


@pytest.mark.parametrize("settings, measure", [case[1:] for case in LOWERS],
                         ids=[case[0] for case in LOWERS])
def test_control_lowers_its_measure(astronaut, settings, measure):
    after, before = measure(develop(astronaut, settings), astronaut)
    assert after < before * 0.99 - 1e-4


def test_full_desaturation_gives_gray(coffee):
    out = develop(coffee, DevelopSettings(saturation=-100.0))
    assert np.allclose(out[..., 0], out[..., 1], atol=1e-6)
    assert np.allclose(out[..., 1], out[..., 2], atol=1e-6)


@pytest.mark.parametrize("amount, direction", [(100.0, 1.0), (-100.0, -1.0)])
def test_hsl_hue_turns_orange_towards_yellow_or_red(astronaut, amount, direction):
    settings = DevelopSettings(hue_adjustment=(0, amount, 0, 0, 0, 0, 0, 0))
    out = develop(astronaut, settings)
    suit = _orange_suit(astronaut)
    turn = (_hue(out)[suit] - _hue(astronaut)[suit] + 180.0) % 360.0 - 180.0
    assert direction * turn.mean() > 5.0
    assert np.abs(_chroma(out)[suit] - _chroma(astronaut)[suit]).mean() < 0.05


def test_hsl_band_leaves_other_hues_alone(astronaut):
    settings = DevelopSettings(saturation_adjustment=(0, 0, 0, 0, 0, -100, 0, 0))  # blue only
    out = develop(astronaut, settings)
    suit = _orange_suit(astronaut)
    assert suit.sum() > 200
    assert np.abs(out[suit] - astronaut[suit]).max() < 1e-5


def test_channel_curve_changes_only_its_channel(coffee):
    out = develop(coffee, DevelopSettings(tone_curve_red=((0, 30), (255, 255))))
    assert out[..., 0].mean() > coffee[..., 0].mean() + 0.01
    assert np.array_equal(out[..., 1:], coffee[..., 1:])


def test_named_curve_from_its_name_alone():
    settings, unknown = DevelopSettings.from_mapping({"ToneCurveName2012": "Strong Contrast"})
    assert unknown == ()
    assert settings.tone_curve[1] == (32.0, 16.0)


def test_grayscale_gives_equal_channels_and_mixer_darkens_its_band(astronaut):
    gray = develop(astronaut, DevelopSettings(convert_to_grayscale=True))
    assert np.array_equal(gray[..., 0], gray[..., 1])
    assert np.array_equal(gray[..., 1], gray[..., 2])
    mixed = develop(astronaut, DevelopSettings(convert_to_grayscale=True,
                                               gray_mixer=(-100, -100, 0, 0, 0, 0, 0, 0)))
    assert np.array_equal(mixed[..., 0], mixed[..., 2])
    suit = _orange_suit(astronaut)
    assert mixed[suit][:, 0].mean() < gray[suit][:, 0].mean() - 0.05
    neutral = _chroma(astronaut) < 0.01
    assert np.abs(mixed[neutral] - gray[neutral]).max() < 1e-6


def test_toned_grayscale_is_tinted(astronaut):
    toned = develop(astronaut, builtin_presets()["sepia-tone"].settings)
    assert (toned[..., 0] - toned[..., 2]).mean() > 0.02


@pytest.mark.parametrize("style", [1, 2, 3])
def test_vignette_darkens_corners_more_than_centre(coffee, style):
    out = develop(coffee, DevelopSettings(vignette_amount=-60.0, vignette_style=style))
    height, width = coffee.shape[:2]
    ratio = _luma(out) / np.maximum(_luma(coffee), 1e-3)
    corners = np.concatenate([ratio[:8, :8].ravel(), ratio[:8, -8:].ravel(),
                              ratio[-8:, :8].ravel(), ratio[-8:, -8:].ravel()])
    centre = ratio[height // 2 - 6:height // 2 + 6, width // 2 - 6:width // 2 + 6]
    assert corners.mean() < 0.75
    assert centre.mean() > 0.98


def test_positive_vignette_lightens_corners(coffee):
    out = develop(coffee, DevelopSettings(vignette_amount=60.0))
    assert out[:6, :6].mean() > coffee[:6, :6].mean() + 0.05
    assert np.abs(out[40:50, 60:70] - coffee[40:50, 60:70]).max() < 1e-3


def test_grain_is_deterministic_per_seed_and_differs_across_seeds(coffee):
    settings = DevelopSettings(grain_amount=50.0)
    first = develop(coffee, settings, seed=1)
    assert np.array_equal(first, develop(coffee, settings, seed=1))
    second = develop(coffee, settings, seed=2)
    assert np.abs(first - second).mean() > 0.005
    assert abs(first.mean() - coffee.mean()) < 0.01
    gray = develop(coffee, DevelopSettings(grain_amount=50.0, convert_to_grayscale=True))
    assert np.array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("height, width", [(1, 1), (1, 2), (2, 2), (3, 1), (5, 7), (1, 200)])
def test_grain_keeps_a_tiny_grey_picture_grey(height, width):
    grey = np.full((height, width, 3), 0.5, np.float32)
    limit = 5.0 * GRAIN_STRENGTH * 0.5  # five standard deviations of grain at GrainAmount 50
    for seed in range(20):
        out = develop(grey, DevelopSettings(grain_amount=50.0, grain_size=100.0), seed=seed)
        assert np.abs(out - 0.5).max() < limit, (height, width, seed)


def test_grain_field_has_unit_variance_at_any_size():
    for size, roughness in ((0.0, 0.0), (25.0, 50.0), (100.0, 100.0)):
        tiny = np.concatenate([grain_field(1, 2, size=size, roughness=roughness,
                                           seed=seed).ravel() for seed in range(300)])
        assert 0.8 < tiny.std() < 1.2 and abs(tiny.mean()) < 0.2, (size, roughness)
        large = grain_field(90, 120, size=size, roughness=roughness, seed=0)
        assert large.std() == pytest.approx(1.0, abs=1e-4)


def test_grain_roughness_and_size_change_the_pattern(coffee):
    smooth = develop(coffee, DevelopSettings(grain_amount=60.0, grain_roughness=0.0))
    rough = develop(coffee, DevelopSettings(grain_amount=60.0, grain_roughness=100.0))
    coarse = develop(coffee, DevelopSettings(grain_amount=60.0, grain_size=100.0,
                                             grain_roughness=0.0))
    assert _texture_contrast(rough, coffee)[0] > _texture_contrast(smooth, coffee)[0]
    assert _texture_contrast(coarse, coffee)[0] < _texture_contrast(smooth, coffee)[0]


@pytest.mark.parametrize("slider", ["contrast", "highlights", "shadows", "whites", "blacks"])
@pytest.mark.parametrize("amount", [-100.0, 100.0])
def test_basic_tone_curve_is_monotone_with_fixed_ends(slider, amount):
    t = np.linspace(0.0, 1.0, 2001)
    sliders = dict(contrast=0.0, highlights=0.0, shadows=0.0, whites=0.0, blacks=0.0)
    mapped = basic_tone_curve(t, **{**sliders, slider: amount})
    assert np.all(np.diff(mapped) >= -1e-9)
    assert mapped[0] == pytest.approx(0.0, abs=1e-9)
    assert mapped[-1] == pytest.approx(1.0, abs=1e-9)
    extreme = basic_tone_curve(t, contrast=amount, highlights=-amount, shadows=amount,
                               whites=-amount, blacks=amount)
    assert np.all(np.diff(extreme) >= -1e-9)


def test_parametric_points_stay_increasing_at_extremes():
    for sign in (-100.0, 100.0):
        xs, ys = parametric_curve_points(sign, -sign, sign, -sign, (10.0, 12.0, 90.0))
        assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0)


def test_white_balance_neutral_is_identity_and_keeps_gray_luminance():
    assert np.allclose(white_balance_matrix(0.0, 0.0), np.eye(3), atol=1e-6)
    warm = white_balance_matrix(60.0, 20.0)
    luminance = np.array([0.2126729, 0.7151522, 0.0721750])
    assert luminance @ warm @ np.ones(3) == pytest.approx(1.0, abs=1e-9)


# --- DevelopSettings.from_mapping --------------------------------------------------------

def test_from_mapping_reads_xmp_text_and_lua_values_alike():
    text = {"Exposure2012": "+0.50", "ConvertToGrayscale": "True", "GrayMixerBlue": "-20",
            "ToneCurvePV2012": ["0, 0", "128,140", "255, 255"], "PostCropVignetteStyle": "2"}
    lua = {"Exposure2012": 0.5, "ConvertToGrayscale": True, "GrayMixerBlue": -20,
           "ToneCurvePV2012": [0, 0, 128, 140, 255, 255], "PostCropVignetteStyle": 2}
    from_text, unknown_text = DevelopSettings.from_mapping(text)
    from_lua, unknown_lua = DevelopSettings.from_mapping(lua)
    assert from_text == from_lua and unknown_text == unknown_lua == ()
    assert from_text.exposure == 0.5 and from_text.convert_to_grayscale
    assert from_text.gray_mixer[BANDS.index("Blue")] == -20.0
    assert from_text.tone_curve == ((0.0, 0.0), (128.0, 140.0), (255.0, 255.0))


def test_out_of_range_values_are_clipped_and_reported():
    with pytest.warns(SettingWarning, match=r"preset\.xmp: Exposure2012='\+7\.5' .*clipped to 5"):
        settings, unknown = DevelopSettings.from_mapping({"Exposure2012": "+7.5"},
                                                         source="preset.xmp")
    assert settings.exposure == 5.0 and unknown == ()
    with pytest.warns(SettingWarning, match="ToneCurvePV2012 has points outside"):
        settings, _ = DevelopSettings.from_mapping({"ToneCurvePV2012": ["0, 0", "300, 280"]})
    assert settings.tone_curve == ((0.0, 0.0), (255.0, 255.0))


def test_unreadable_values_are_ignored_with_a_warning():
    with pytest.warns(SettingWarning, match="not a finite number"):
        settings, unknown = DevelopSettings.from_mapping({"Contrast2012": "lots",
                                                          "Saturation": "-20"})
    assert settings.contrast == 0.0 and settings.saturation == -20.0 and unknown == ()
    with pytest.warns(SettingWarning, match="at least two"):
        DevelopSettings.from_mapping({"ToneCurvePV2012": ["0, 0"]})


def test_unknown_and_unsupported_keys_are_reported_not_fatal():
    settings, unknown = DevelopSettings.from_mapping({
        "Sharpness": "40", "LensProfileEnable": "1", "Temperature": "5600",
        "WhiteBalance": "Daylight", "Contrast2012": "+30", "PresetType": "Normal",
        "EnableDetail": True, 3: "positional"})
    assert unknown == ("3", "LensProfileEnable", "Sharpness", "Temperature", "WhiteBalance")
    assert settings.contrast == 30.0


def test_color_grade_aliases_and_disabled_panels():
    settings, unknown = DevelopSettings.from_mapping({
        "ColorGradeShadowHue": 200, "ColorGradeShadowSat": 30, "ColorGradeBalance": -20,
        "GrainAmount": 30, "EnableEffects": False})
    assert unknown == ()
    assert (settings.split_shadow_hue, settings.split_shadow_saturation,
            settings.split_balance) == (200.0, 30.0, -20.0)
    assert settings.grain_amount == 0.0


# --- XMP reader ------------------------------------------------------------------------

def _as_child_elements(xmp: bytes) -> bytes:
    """Rewrite every crs: attribute of rdf:Description as a child element."""
    root = SafeElementTree.fromstring(xmp, forbid_dtd=True)
    description = root.find(f"{{{RDF}}}RDF/{{{RDF}}}Description")
    for key in [key for key in description.attrib if key.startswith(f"{{{CRS}}}")]:
        child = SafeElementTree.XML(f'<crs:x xmlns:crs="{CRS}"/>')
        child.tag = key
        child.text = description.attrib.pop(key)
        description.append(child)
    return SafeElementTree.tostring(root)


def test_attribute_and_child_element_forms_give_identical_settings():
    for path in sorted(PRESET_DIR.glob("*.xmp")):
        original = read_xmp(path.read_bytes(), str(path))
        rewritten_bytes = _as_child_elements(path.read_bytes())
        assert b'crs:Contrast2012="' not in rewritten_bytes
        rewritten = read_xmp(rewritten_bytes, str(path))
        assert rewritten.settings == original.settings, path.name
        assert rewritten.unknown_keys == () and rewritten.title == original.title


def test_name_attribute_without_alt_and_xpacket_wrapper():
    xmp = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
           b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF.encode() + b'">'
           b'<rdf:Description rdf:about="" xmlns:crs="' + CRS.encode() + b'" '
           b'crs:Name="Golden Hour" crs:IncrementalTemperature="+20" crs:Vibrance="+10"/>'
           b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
    preset = read_xmp(xmp, "golden.xmp")
    assert preset.name == "golden-hour" and preset.title == "Golden Hour"
    assert preset.settings.temperature == 20.0 and preset.settings.vibrance == 10.0


def test_nested_look_and_masks_are_reported_as_unknown():
    xmp = PUNCH_XMP.replace(
        b"  </rdf:Description>",
        b"   <crs:Look><rdf:Description crs:Name=\"Adobe Vivid\" crs:Amount=\"1\"/></crs:Look>\n"
        b"   <crs:GradientBasedCorrections><rdf:Seq><rdf:li><rdf:Description "
        b"crs:LocalExposure2012=\"-0.5\"/></rdf:li></rdf:Seq></crs:GradientBasedCorrections>\n"
        b"  </rdf:Description>")
    preset = read_xmp(xmp, "punch-with-look.xmp")
    assert preset.unknown_keys == ("GradientBasedCorrections", "Look")
    assert preset.settings == builtin_presets()["punch"].settings


@pytest.mark.parametrize("payload, problem", [
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF></x:xmpmeta>", "malformed XML"),
    (PUNCH_XMP[:len(PUNCH_XMP) // 2], "malformed XML"),
    (b"", "malformed XML"),
    (b"not xml at all", "malformed XML"),
])
def test_malformed_or_truncated_xmp_is_a_one_line_error(payload, problem):
    with pytest.raises(PresetError) as caught:
        read_xmp(payload, "looks/broken.xmp")
    message = str(caught.value)
    assert message.startswith("looks/broken.xmp: ") and problem in message
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_entity_expansion_bomb_is_refused():
    bomb = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
            + b"".join(b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1
                                                          else b"&lol;") * 10)
                       for i in range(1, 10))
            + b']>\n<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF.encode()
            + b'"><rdf:Description xmlns:crs="' + CRS.encode()
            + b'" crs:Name="&lol9;"/></rdf:RDF></x:xmpmeta>')
    with pytest.raises(PresetError, match=r"^bomb\.xmp: .*DTD"):
        read_xmp(bomb, "bomb.xmp")


def test_external_entity_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do-not-read")
    xxe = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY s SYSTEM "file://'
           + str(secret).encode() + b'">]><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="'
           + RDF.encode() + b'"><rdf:Description xmlns:crs="' + CRS.encode()
           + b'" crs:Name="&s;"/></rdf:RDF></x:xmpmeta>')
    with pytest.raises(PresetError, match="DTD") as caught:
        read_xmp(xxe, "xxe.xmp")
    assert "do-not-read" not in str(caught.value)


def test_missing_crs_namespace_is_an_error():
    no_crs = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF.encode()
              + b'"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="x"/>'
              b"</rdf:RDF></x:xmpmeta>")
    with pytest.raises(PresetError, match=r"^dc\.xmp: no Camera Raw settings"):
        read_xmp(no_crs, "dc.xmp")
    wrong_uri = PUNCH_XMP.replace(CRS.encode(), b"http://example.com/not-camera-raw/")
    with pytest.raises(PresetError, match="no Camera Raw settings"):
        read_xmp(wrong_uri, "wrong.xmp")
    with pytest.raises(PresetError, match="no rdf:Description"):
        read_xmp(b"<a/>", "a.xmp")


def test_out_of_range_and_unknown_keys_in_a_file_are_not_fatal():
    xmp = PUNCH_XMP.replace(b'crs:Contrast2012="+25"',
                            b'crs:Contrast2012="+250" crs:Sharpness="40"')
    with pytest.warns(SettingWarning, match=r"odd\.xmp: Contrast2012='\+250'"):
        preset = read_xmp(xmp, "odd.xmp")
    assert preset.settings.contrast == 100.0
    assert preset.unknown_keys == ("Sharpness",)


# --- .lrtemplate reader ---------------------------------------------------------------------

def test_shipped_lrtemplate_reads_like_lightroom_would():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preset = load_preset(PRESET_DIR.with_name("example_presets") / "yesteryear.lrtemplate")
    assert preset.name == "yesteryear" and preset.title == "Yesteryear"
    assert preset.unknown_keys == ()
    settings = preset.settings
    assert settings.exposure == 0.1 and settings.contrast == -20.0
    assert settings.tone_curve == ((0.0, 25.0), (70.0, 80.0), (190.0, 195.0), (255.0, 235.0))
    assert settings.tone_curve_blue == ((0.0, 20.0), (255.0, 235.0))
    assert settings.grain_roughness == 60.0
    assert preset.name not in builtin_presets()


PUNCH_LRTEMPLATE = """s = {
\tid = "691D7E66-FDC5-5E95-BA9C-1A6866ED6C98",
\tinternalName = "Punch",
\ttitle = ZSTR "$$$/AgDevelop/Presets/Punch=Punch",
\ttype = "Develop",
\tvalue = {
\t\tsettings = {
\t\t\tBlacks2012 = -10,
\t\t\tClarity2012 = 20,
\t\t\tContrast2012 = 25,
\t\t\tConvertToGrayscale = false,
\t\t\tProcessVersion = "11.0",
\t\t\tSaturation = 5,
\t\t\tToneCurveName2012 = "Medium Contrast",
\t\t\tToneCurvePV2012 = { 0, 0, 32, 22, 64, 56, 128, 128, 192, 196, 255, 255, },
\t\t\tVibrance = 30,
\t\t},
\t\tuuid = "A1B2C3D4-0000-4000-8000-000000000001",
\t},
\tversion = 0,
}
"""


def test_lrtemplate_and_xmp_of_the_same_look_give_identical_settings():
    legacy = read_lrtemplate(PUNCH_LRTEMPLATE.encode(), "Punch.lrtemplate")
    modern = builtin_presets()["punch"]
    assert legacy.settings == modern.settings
    assert legacy.name == modern.name == "punch" and legacy.title == modern.title


def test_lua_subset_values_comments_and_long_strings():
    text = r"""
-- a line comment
--[==[ a long
comment with ]] inside ]==]
s = {
    plain = "tab\tquote\"back\\slash\n",
    single = 'say \'hi\'',
    escapes = "\65\x42\u{43}\z
               D",
    long = [[
first line
second "line"]],
    level = [==[a]]b]==],
    ints = { 10, -3, 0x1F, -0x10, 007 },
    floats = { 1.5, .5, 2., 1e3, -2.5E-1, 0x1p4 },
    flags = { true, false },
    gone = nil,
    ["quoted key"] = 1;
    [2] = "two",
    nested = { deeper = { deepest = { "x" } } },
    "positional", -- trailing comment
}
"""
    table = parse_lrtemplate(text, "values.lua")
    assert table["plain"] == 'tab\tquote"back\\slash\n'
    assert table["single"] == "say 'hi'"
    assert table["escapes"] == "ABCD"
    assert table["long"] == 'first line\nsecond "line"'
    assert table["level"] == "a]]b"
    assert table["ints"] == [10, -3, 31, -16, 7]
    assert table["floats"] == [1.5, 0.5, 2.0, 1000.0, -0.25, 16.0]
    assert table["flags"] == [True, False]
    assert "gone" not in table
    assert table["quoted key"] == 1
    assert table[1] == "positional" and table[2] == "two"
    assert table["nested"] == {"deeper": {"deepest": ["x"]}}


def _lrtemplate_error(text: str) -> str:
    with pytest.raises(PresetError) as caught:
        read_lrtemplate(text.encode(), "hostile.lrtemplate")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_unterminated_strings_and_comments_name_line_and_column():
    message = _lrtemplate_error('s = {\n  title = "never closed,\n}\n')
    assert message.startswith("hostile.lrtemplate:2:11: unfinished string")
    assert _lrtemplate_error('s = { title = "eof').startswith("hostile.lrtemplate:1:15:")
    assert "unfinished long string" in _lrtemplate_error("s = { t = [[ no end }")
    assert "unfinished long comment" in _lrtemplate_error("--[[ open\ns = {}")
    assert "unclosed table" in _lrtemplate_error("s = { a = 1,")


def test_deep_nesting_is_refused_without_recursion_errors():
    depth = 5000
    message = _lrtemplate_error("s = " + "{" * depth + "}" * depth)
    assert f"nested deeper than {MAX_DEPTH}" in message
    table = parse_lrtemplate("s = " + "{" * MAX_DEPTH + "}" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        assert len(table) == 1
        table = table[0]
    assert table == []


@pytest.mark.parametrize("code", [
    'os.execute("touch {marker}")',
    's = {{ title = os.execute("touch {marker}") }}',
    's = {{ type = "Develop" }} os.execute("touch {marker}")',
    's = {{ f = function() os.execute("touch {marker}") end }}',
    's = {{ title = dofile("{marker}") }}',
    'return {{ type = "Develop" }}',
    's = {{ t = "a" .. "b" }}',
    's = {{ t = ("x") }}',
    's = {{ t = 1 + 2 }}',
])
def test_lua_code_is_rejected_not_run(tmp_path, code):
    marker = tmp_path / "executed"
    _lrtemplate_error(code.format(marker=marker))
    assert not marker.exists()


def test_lrtemplate_structure_errors():
    assert "not a 'Develop' preset" in _lrtemplate_error('s = { type = "Export", value = {} }')
    assert "no value.settings" in _lrtemplate_error('s = { type = "Develop", value = {} }')
    assert "malformed number" in _lrtemplate_error("s = { a = 12abc }")
    assert "invalid escape" in _lrtemplate_error(r's = { a = "\q" }')
    with pytest.raises(PresetError, match="not UTF-8"):
        read_lrtemplate(b's = { title = "\xff" }', "latin.lrtemplate")


def test_enable_switch_off_drops_its_panel():
    text = PUNCH_LRTEMPLATE.replace("\t\t\tVibrance = 30,",
                                    "\t\t\tVibrance = 30,\n\t\t\tEnableToneCurve = false,")
    preset = read_lrtemplate(text.encode(), "punch-flat.lrtemplate")
    assert preset.settings.tone_curve == ((0.0, 0.0), (255.0, 255.0))
    assert preset.settings.vibrance == 30.0


# --- loading files and folders ---------------------------------------------------------------

def test_load_preset_dir_skips_bad_files_and_reports_them(tmp_path):
    (tmp_path / "Punch Copy.xmp").write_bytes(PUNCH_XMP)
    (tmp_path / "punch-copy.lrtemplate").write_text(PUNCH_LRTEMPLATE)
    (tmp_path / "legacy.lrtemplate").write_text(PUNCH_LRTEMPLATE)
    (tmp_path / "broken.xmp").write_bytes(PUNCH_XMP[:300])
    (tmp_path / "notes.txt").write_text("not a preset")
    presets, errors = load_preset_dir(tmp_path)
    assert list(presets) == ["legacy", "punch-copy"]
    assert presets["legacy"].settings == presets["punch-copy"].settings
    assert len(errors) == 2
    assert errors[0].startswith(str(tmp_path / "broken.xmp") + ": malformed XML")
    assert "punch-copy" in errors[1] and "already used" in errors[1]


def test_load_preset_dispatches_by_suffix_and_reports_bad_paths(tmp_path):
    assert load_preset(PRESET_DIR / "cyanotype.xmp").settings.convert_to_grayscale
    other = tmp_path / "look.cube"
    other.write_text("LUT_3D_SIZE 2")
    with pytest.raises(PresetError, match=r"look\.cube: unsupported preset format"):
        load_preset(other)
    with pytest.raises(PresetError, match="cannot read"):
        load_preset(tmp_path / "missing.xmp")
    with pytest.raises(PresetError, match="not a folder"):
        load_preset_dir(tmp_path / "missing")
