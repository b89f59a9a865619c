"""Normalised Lightroom / Camera Raw develop settings.

The fifteen preset pseudo-users of Kosugi & Yamasaki ("Personalized Image
Enhancement Featuring Masked Style Modeling", IEEE TCSVT 2023) are Lightroom
develop presets. Whatever format a preset comes in (XMP or ``.lrtemplate``),
its settings end up as one flat ``{lightroom_key: value}`` mapping, which
:meth:`DevelopSettings.from_mapping` turns into one frozen
:class:`DevelopSettings` holding every control the develop engine
(:func:`rules.develop.engine.develop`) supports.

Key names, ranges and defaults follow Lightroom Classic's ``LrDevelopController``
and the Camera Raw ``crs`` XMP namespace. A preset is partial: an absent key
keeps the control's default, and the all-default object is the identity.

What is not applied is reported, never fatal:

* keys the engine does not model (sharpening, lens, masks, ``Look`` profiles,
  raw-only Kelvin white balance, PV2010 sliders, ...) are returned as
  ``unknown_keys``;
* out-of-range values are clipped, and unreadable values ignored, each with a
  :class:`SettingWarning` naming the source, the key and the value.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

#: The eight colour bands of the HSL / Color and B&W panels, in Lightroom order.
BANDS = ("Red", "Orange", "Yellow", "Green", "Aqua", "Blue", "Purple", "Magenta")

#: The identity point curve in Lightroom's encoded 0..255 domain.
IDENTITY_CURVE = ((0.0, 0.0), (255.0, 255.0))

#: Lightroom's named point curves (``ToneCurveName2012``), 0..255 points.
NAMED_CURVES = {
    "Linear": IDENTITY_CURVE,
    "Medium Contrast": ((0.0, 0.0), (32.0, 22.0), (64.0, 56.0), (128.0, 128.0),
                        (192.0, 196.0), (255.0, 255.0)),
    "Strong Contrast": ((0.0, 0.0), (32.0, 16.0), (64.0, 50.0), (128.0, 128.0),
                        (192.0, 202.0), (255.0, 255.0)),
}

#: Keys that describe the preset rather than the picture; read and ignored.
METADATA_KEYS = frozenset({
    "PresetType", "Cluster", "UUID", "SupportsAmount", "SupportsAmount2",
    "SupportsColor", "SupportsMonochrome", "SupportsHighDynamicRange",
    "SupportsNormalDynamicRange", "SupportsSceneReferred", "SupportsOutputReferred",
    "RequiresRGBTables", "RequiresRenditionBehavior", "CameraModelRestriction",
    "Copyright", "ContactInfo", "Version", "ProcessVersion", "HasSettings",
    "AlreadyApplied", "Name", "ShortName", "SortName", "Group", "Description",
    # Curve names and the PV2010 curve that PV2012 files carry alongside
    # ToneCurvePV2012; the PV2012 points are what is rendered.
    "ToneCurveName", "ToneCurveName2012", "ToneCurve",
})

#: White-balance modes that leave a rendered file's colours to the
#: Incremental* sliders. The other modes (Auto, Daylight, ...) need raw data.
RENDERED_WHITE_BALANCE = frozenset({"As Shot", "Custom"})

#: Keys written by other tools for the same control (Bowerbird, RapidRAW and
#: third-party presets use ColorGrade* names for the split-toning wheels).
ALIASES = {
    "ColorGradeShadowHue": "SplitToningShadowHue",
    "ColorGradeShadowSat": "SplitToningShadowSaturation",
    "ColorGradeHighlightHue": "SplitToningHighlightHue",
    "ColorGradeHighlightSat": "SplitToningHighlightSaturation",
    "ColorGradeBalance": "SplitToningBalance",
}

#: ``Enable*`` switches of .lrtemplate files that turn a whole panel off.
#: Other ``Enable*`` switches belong to panels the engine does not model.
PANEL_SWITCHES = {
    "EnableToneCurve": "tone_curve",
    "EnableColorAdjustments": "color",
    "EnableGrayscaleMix": "grayscale_mix",
    "EnableSplitToning": "split_toning",
    "EnableEffects": "effects",
}


class SettingWarning(UserWarning):
    """A setting was clipped to its range or could not be read and was ignored."""


def _number(key, low, high, default=0.0, panel="basic"):
    return field(default=default, metadata={
        "key": key, "kind": "number", "range": (low, high), "panel": panel})


def _integer(key, low, high, default, panel):
    return field(default=default, metadata={
        "key": key, "kind": "integer", "range": (low, high), "panel": panel})


def _bands(prefix, panel):
    return field(default=(0.0,) * len(BANDS), metadata={
        "key": prefix, "kind": "bands", "range": (-100.0, 100.0), "panel": panel})


def _curve(key):
    return field(default=IDENTITY_CURVE, metadata={
        "key": key, "kind": "curve", "range": (0.0, 255.0), "panel": "tone_curve"})


def _flag(key, panel):
    return field(default=False, metadata={"key": key, "kind": "flag", "panel": panel})


@dataclass(frozen=True)
class DevelopSettings:
    """Every develop control the engine supports, with Lightroom's ranges.

    Sliders are stored in Lightroom's own units (see each field's ``key`` and
    ``range`` metadata); banded HSL and gray-mixer controls are 8-tuples in
    :data:`BANDS` order; point curves are tuples of ``(x, y)`` in 0..255 with
    strictly increasing ``x``. ``DevelopSettings()`` is the identity.
    """

    # Basic panel.
    temperature: float = _number("IncrementalTemperature", -100.0, 100.0)
    tint: float = _number("IncrementalTint", -100.0, 100.0)
    exposure: float = _number("Exposure2012", -5.0, 5.0)
    contrast: float = _number("Contrast2012", -100.0, 100.0)
    highlights: float = _number("Highlights2012", -100.0, 100.0)
    shadows: float = _number("Shadows2012", -100.0, 100.0)
    whites: float = _number("Whites2012", -100.0, 100.0)
    blacks: float = _number("Blacks2012", -100.0, 100.0)
    texture: float = _number("Texture", -100.0, 100.0)
    clarity: float = _number("Clarity2012", -100.0, 100.0)
    dehaze: float = _number("Dehaze", -100.0, 100.0)
    vibrance: float = _number("Vibrance", -100.0, 100.0)
    saturation: float = _number("Saturation", -100.0, 100.0)
    # Tone curve panel.
    parametric_shadows: float = _number("ParametricShadows", -100.0, 100.0, panel="tone_curve")
    parametric_darks: float = _number("ParametricDarks", -100.0, 100.0, panel="tone_curve")
    parametric_lights: float = _number("ParametricLights", -100.0, 100.0, panel="tone_curve")
    parametric_highlights: float = _number("ParametricHighlights", -100.0, 100.0,
                                           panel="tone_curve")
    parametric_shadow_split: float = _number("ParametricShadowSplit", 0.0, 100.0, 25.0,
                                             panel="tone_curve")
    parametric_midtone_split: float = _number("ParametricMidtoneSplit", 0.0, 100.0, 50.0,
                                              panel="tone_curve")
    parametric_highlight_split: float = _number("ParametricHighlightSplit", 0.0, 100.0, 75.0,
                                                panel="tone_curve")
    tone_curve: tuple = _curve("ToneCurvePV2012")
    tone_curve_red: tuple = _curve("ToneCurvePV2012Red")
    tone_curve_green: tuple = _curve("ToneCurvePV2012Green")
    tone_curve_blue: tuple = _curve("ToneCurvePV2012Blue")
    # HSL / Color panel.
    hue_adjustment: tuple = _bands("HueAdjustment", panel="color")
    saturation_adjustment: tuple = _bands("SaturationAdjustment", panel="color")
    luminance_adjustment: tuple = _bands("LuminanceAdjustment", panel="color")
    # B&W.
    convert_to_grayscale: bool = _flag("ConvertToGrayscale", panel="basic")
    gray_mixer: tuple = _bands("GrayMixer", panel="grayscale_mix")
    # Split toning (shadow / highlight wheels) and colour grading.
    split_shadow_hue: float = _number("SplitToningShadowHue", 0.0, 360.0, panel="split_toning")
    split_shadow_saturation: float = _number("SplitToningShadowSaturation", 0.0, 100.0,
                                             panel="split_toning")
    split_highlight_hue: float = _number("SplitToningHighlightHue", 0.0, 360.0,
                                         panel="split_toning")
    split_highlight_saturation: float = _number("SplitToningHighlightSaturation", 0.0, 100.0,
                                                panel="split_toning")
    split_balance: float = _number("SplitToningBalance", -100.0, 100.0, panel="split_toning")
    grade_midtone_hue: float = _number("ColorGradeMidtoneHue", 0.0, 360.0, panel="split_toning")
    grade_midtone_saturation: float = _number("ColorGradeMidtoneSat", 0.0, 100.0,
                                              panel="split_toning")
    grade_global_hue: float = _number("ColorGradeGlobalHue", 0.0, 360.0, panel="split_toning")
    grade_global_saturation: float = _number("ColorGradeGlobalSat", 0.0, 100.0,
                                             panel="split_toning")
    grade_shadow_luminance: float = _number("ColorGradeShadowLum", -100.0, 100.0,
                                            panel="split_toning")
    grade_midtone_luminance: float = _number("ColorGradeMidtoneLum", -100.0, 100.0,
                                             panel="split_toning")
    grade_highlight_luminance: float = _number("ColorGradeHighlightLum", -100.0, 100.0,
                                               panel="split_toning")
    grade_global_luminance: float = _number("ColorGradeGlobalLum", -100.0, 100.0,
                                            panel="split_toning")
    grade_blending: float = _number("ColorGradeBlending", 0.0, 100.0, 50.0, panel="split_toning")
    # Effects panel.
    vignette_amount: float = _number("PostCropVignetteAmount", -100.0, 100.0, panel="effects")
    vignette_midpoint: float = _number("PostCropVignetteMidpoint", 0.0, 100.0, 50.0,
                                       panel="effects")
    vignette_feather: float = _number("PostCropVignetteFeather", 0.0, 100.0, 50.0,
                                      panel="effects")
    vignette_roundness: float = _number("PostCropVignetteRoundness", -100.0, 100.0,
                                        panel="effects")
    vignette_style: int = _integer("PostCropVignetteStyle", 1, 3, 1, panel="effects")
    grain_amount: float = _number("GrainAmount", 0.0, 100.0, panel="effects")
    grain_size: float = _number("GrainSize", 0.0, 100.0, 25.0, panel="effects")
    grain_roughness: float = _number("GrainFrequency", 0.0, 100.0, 50.0, panel="effects")

    def is_identity(self) -> bool:
        """True when every control is at its default, i.e. develop is a no-op."""
        return self == DevelopSettings()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object], *, source: str = "<mapping>"):
        """Build settings from a flat ``{lightroom_key: value}`` mapping.

        Parameters
        ----------
        mapping : Mapping[str, object]
            Lightroom keys without the ``crs:`` prefix. Values may be XMP text
            (``"+0.50"``, ``"True"``, curve points ``["0, 0", "255, 255"]``) or
            native values from a ``.lrtemplate`` (numbers, booleans, flat
            curve lists ``[0, 0, 255, 255]``).
        source : str
            Where the mapping came from, used in warning messages.

        Returns
        -------
        settings : DevelopSettings
            The supported controls; absent keys keep their defaults. Panels
            switched off by an ``Enable*`` key that is false are reset.
        unknown_keys : tuple of str
            Sorted keys that were not applied because the engine does not
            support them (not fatal).

        Warns
        -----
        SettingWarning
            For each value clipped to its range or ignored as unreadable.
        """
        values: dict[str, object] = {}
        unknown: list[str] = []
        disabled_panels: set[str] = set()
        for raw_key, raw_value in mapping.items():
            if not isinstance(raw_key, str):
                unknown.append(str(raw_key))
                continue
            key = ALIASES.get(raw_key, raw_key)
            if key != raw_key and key in mapping:
                continue  # the canonical key wins over its alias
            if key in PANEL_SWITCHES:
                if _parse_flag(raw_value, key, source) is False:
                    disabled_panels.add(PANEL_SWITCHES[key])
            elif key in METADATA_KEYS or _ENABLE_SWITCH.fullmatch(key):
                continue
            elif key == "WhiteBalance":
                if str(raw_value) not in RENDERED_WHITE_BALANCE:
                    unknown.append(raw_key)
            elif key in _FIELD_BY_KEY:
                _read_value(values, key, raw_value, source)
            else:
                unknown.append(raw_key)
        named = NAMED_CURVES.get(str(mapping.get("ToneCurveName2012", "")))
        if named is not None and "ToneCurvePV2012" not in mapping:
            values["tone_curve"] = named
        settings = cls(**values)
        reset = {f.name: f.default for f in fields(cls) if f.metadata["panel"] in disabled_panels}
        return replace(settings, **reset), tuple(sorted(unknown))


_ENABLE_SWITCH = re.compile(r"Enable[A-Z]\w*")


def _field_table() -> dict[str, tuple[object, int | None]]:
    """Map each Lightroom key to ``(dataclass field, band index or None)``."""
    table: dict[str, tuple[object, int | None]] = {}
    for spec in fields(DevelopSettings):
        if spec.metadata["kind"] == "bands":
            for index, band in enumerate(BANDS):
                table[spec.metadata["key"] + band] = (spec, index)
        else:
            table[spec.metadata["key"]] = (spec, None)
    return table


_FIELD_BY_KEY = _field_table()


def _warn(source: str, message: str) -> None:
    warnings.warn(f"{source}: {message}", SettingWarning, stacklevel=2)


def _read_value(values: dict[str, object], key: str, raw: object, source: str) -> None:
    """Parse ``raw`` for ``key`` and store it in ``values`` (by field name)."""
    spec, band = _FIELD_BY_KEY[key]
    kind = spec.metadata["kind"]
    if kind == "flag":
        flag = _parse_flag(raw, key, source)
        if flag is not None:
            values[spec.name] = flag
        return
    if kind == "curve":
        curve = _parse_curve(raw, key, source)
        if curve is not None:
            values[spec.name] = curve
        return
    number = _parse_number(raw, key, source)
    if number is None:
        return
    low, high = spec.metadata["range"]
    clipped = min(max(number, low), high)
    if clipped != number:
        _warn(source, f"{key}={raw!r} is outside [{low:g}, {high:g}]; clipped to {clipped:g}")
    if kind == "integer":
        clipped = int(round(clipped))
    if band is None:
        values[spec.name] = clipped
    else:
        bands = list(values.get(spec.name, spec.default))
        bands[band] = clipped
        values[spec.name] = tuple(bands)


def _parse_number(raw: object, key: str, source: str) -> float | None:
    if isinstance(raw, bool):
        number = None
    elif isinstance(raw, (int, float)):
        number = float(raw)
    else:
        try:
            number = float(str(raw).strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        _warn(source, f"{key}={raw!r} is not a finite number; ignored")
        return None
    return number


def _parse_flag(raw: object, key: str, source: str) -> bool | None:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    _warn(source, f"{key}={raw!r} is not True or False; ignored")
    return None


def _parse_curve(raw: object, key: str, source: str) -> tuple | None:
    """Read curve points given as ``["x, y", ...]``, ``[x, y, ...]`` or pairs.

    Points are clipped to 0..255 and sorted by ``x``; of points sharing an
    ``x`` the last one wins. Fewer than two points make the value unreadable.
    """
    points = None
    if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        try:
            if all(isinstance(item, str) for item in raw):
                points = [tuple(float(part) for part in item.split(",")) for item in raw]
            elif all(isinstance(item, Sequence) and not isinstance(item, str) for item in raw):
                points = [tuple(float(part) for part in item) for item in raw]
            elif len(raw) % 2 == 0 and not any(isinstance(item, bool) for item in raw):
                flat = [float(item) for item in raw]
                points = list(zip(flat[0::2], flat[1::2]))
        except (TypeError, ValueError):
            points = None
    if (points is None or len(points) < 2
            or any(len(point) != 2 or not all(map(math.isfinite, point)) for point in points)):
        _warn(source, f"{key}={raw!r} is not a list of at least two (x, y) points; ignored")
        return None
    clipped = [(min(max(x, 0.0), 255.0), min(max(y, 0.0), 255.0)) for x, y in points]
    if clipped != points:
        _warn(source, f"{key} has points outside 0..255; clipped")
    unique = dict(sorted(clipped, key=lambda point: point[0]))
    if len(unique) != len(clipped):
        _warn(source, f"{key} has several points at the same x; the last one is kept")
    if len(unique) < 2:
        _warn(source, f"{key} has fewer than two distinct x positions; ignored")
        return None
    return tuple(unique.items())
