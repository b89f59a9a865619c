"""The preset record shared by the XMP and .lrtemplate readers.

A :class:`Preset` is one named look: its normalised
:class:`~rules.develop.settings.DevelopSettings`, the keys that were not
applied, and where it came from. Readers fail with :class:`PresetError`, a
``ValueError`` whose one-line message names the source and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath

from rules.develop.settings import DevelopSettings

#: Largest preset file read, bytes. Real presets are a few kB; ones carrying
#: profile tables or masks reach a few hundred kB.
MAX_PRESET_BYTES = 4 * 1024 * 1024

#: Longest preset (pseudo-user) name; names are folder names and shard keys.
MAX_NAME_LENGTH = 64


class PresetError(ValueError):
    """A preset file that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Preset:
    """One develop preset, ready for :func:`rules.develop.engine.develop`.

    Attributes
    ----------
    name : str
        Pseudo-user name: lower-case letters, digits and ``-`` (no dots or
        spaces), at most 64 characters.
    settings : DevelopSettings
        The supported controls.
    unknown_keys : tuple of str
        Keys in the file that the engine does not apply.
    source : str
        File path or other description of where the preset was read from.
    title : str
        Display name from the file (``crs:Name`` or ``title``).
    """

    name: str
    settings: DevelopSettings
    unknown_keys: tuple[str, ...]
    source: str
    title: str = ""


def slugify(text: str) -> str:
    """Lower-case ``text`` and join its runs of letters and digits with ``-``.

    ``"Teal & Orange"`` becomes ``"teal-orange"``; the result is cut to 64
    characters and may be empty.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:MAX_NAME_LENGTH].rstrip("-")


def make_preset(mapping: Mapping[str, object], *, title: str, name: str | None,
                source: str) -> Preset:
    """Build a :class:`Preset` from a reader's flat settings mapping.

    Parameters
    ----------
    mapping : Mapping[str, object]
        ``{lightroom_key: value}`` as read from the file.
    title : str
        Display name found in the file ("" if none).
    name : str or None
        Pseudo-user name; ``None`` derives it from the title, or failing
        that from the file name in ``source``.
    source : str
        Where the preset came from, for messages.

    Raises
    ------
    PresetError
        If no usable name can be made.
    """
    if name is not None:
        slug = slugify(name)
    else:
        slug = slugify(title) or slugify(PurePath(source).stem)
    if not slug:
        raise PresetError(f"{source}: preset has no usable name (title {title!r})")
    settings, unknown_keys = DevelopSettings.from_mapping(mapping, source=source)
    return Preset(name=slug, settings=settings, unknown_keys=unknown_keys, source=source,
                  title=title)


def check_size(data: bytes, source: str) -> None:
    """Refuse preset data larger than :data:`MAX_PRESET_BYTES`."""
    if len(data) > MAX_PRESET_BYTES:
        raise PresetError(f"{source}: {len(data)} bytes is larger than the "
                          f"{MAX_PRESET_BYTES}-byte limit for a preset")
