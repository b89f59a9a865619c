"""The 25 rule-based pseudo-users: ten conventional methods and fifteen presets.

Kosugi & Yamasaki (TCSVT 2023, Sec. IV-A) add to the Flickr users 25 "known
users" obtained by enhancing FiveK originals with rule-based methods: ten
conventional enhancement methods and fifteen Lightroom presets. Each
:class:`Rule` is a pure function ``float32 RGB [0, 1] HxWx3 -> same`` with its
name, kind, reference and parameters; extra presets (a user's own Lightroom
files) become rules with :func:`rules_from_presets`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from functools import partial
from typing import Callable

import numpy as np

from .develop.engine import develop
from .develop.settings import DevelopSettings
from .develop.preset_types import Preset


@dataclass(frozen=True)
class Rule:
    """One pseudo-user.

    Attributes
    ----------
    name : str
        The pseudo-user's name (also its output folder), e.g. ``"LIME"``.
    kind : str
        ``"method"`` (a conventional method) or ``"preset"``.
    reference : str
        The paper or preset file it comes from.
    parameters : dict
        JSON-serialisable parameters, recorded with every output.
    function : callable
        ``float32 RGB [0, 1] HxWx3 -> same``.
    """

    name: str
    kind: str
    reference: str
    parameters: dict
    function: Callable[[np.ndarray], np.ndarray]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.function(image)


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def preset_parameters(settings: DevelopSettings) -> dict:
    """The controls of ``settings`` that differ from the identity, by Lightroom key."""
    identity = DevelopSettings()
    return {item.metadata["key"]: _jsonable(getattr(settings, item.name)) for item in fields(settings)
            if getattr(settings, item.name) != getattr(identity, item.name)}


def preset_seed(name: str) -> int:
    """The fixed grain seed of a preset, so its output is a pure function of the image."""
    return zlib.crc32(name.encode("utf-8"))


def rule_from_preset(preset: Preset) -> Rule:
    """A preset as a pseudo-user: :func:`rules.develop.engine.develop` with its settings."""
    return Rule(preset.name, "preset", preset.title or preset.source, preset_parameters(preset.settings),
                partial(develop, settings=preset.settings, seed=preset_seed(preset.name)))


def rules_from_presets(presets: dict[str, Preset]) -> dict[str, Rule]:
    """Rules for a set of presets, by name."""
    return {name: rule_from_preset(preset) for name, preset in presets.items()}


def method_rules() -> dict[str, Rule]:
    """The ten conventional methods at their reference defaults."""
    from .conventional import METHODS

    return {name: Rule(name, "method", method.reference, {k: _jsonable(v) for k, v in method.defaults.items()},
                       method.function) for name, method in METHODS.items()}


def builtin_rules() -> dict[str, Rule]:
    """The paper's 25 pseudo-users: ten methods, then the fifteen shipped presets."""
    from .develop.preset import builtin_presets

    return {**method_rules(), **rules_from_presets(builtin_presets())}
