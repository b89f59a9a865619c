"""Loading develop presets: single files, folders, and the fifteen built-ins.

The fifteen built-in looks (``rules/presets/*.xmp``) are the preset
pseudo-users of Kosugi & Yamasaki (IEEE TCSVT 2023, "Preset1-15"); their
names are the file names. A folder of user presets may mix XMP and
``.lrtemplate`` files; one unreadable file is reported and skipped.

``rules/example_presets/`` ships ``yesteryear.lrtemplate``, a sixteenth look
in the legacy format, as an example for ``load_preset``, ``load_preset_dir``
and ``pie rules --presets``; it is not one of the built-ins.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rules.develop.lrtemplate import read_lrtemplate
from rules.develop.preset_types import MAX_PRESET_BYTES, Preset, PresetError, slugify
from rules.develop.xmp import read_xmp

__all__ = ["Preset", "PresetError", "builtin_presets", "load_preset", "load_preset_dir",
           "READERS"]

#: Preset readers by lower-case file suffix.
READERS = {".xmp": read_xmp, ".lrtemplate": read_lrtemplate}


def load_preset(path: str | Path) -> Preset:
    """Read one preset file, choosing the reader by its suffix.

    Parameters
    ----------
    path : str or Path
        A ``.xmp`` or ``.lrtemplate`` file. The preset's name is the file
        name without suffix, lower-cased with runs of other characters
        turned into ``-`` (``"Teal & Orange.xmp"`` -> ``"teal-orange"``).

    Returns
    -------
    Preset

    Raises
    ------
    PresetError
        Unknown suffix, unreadable or oversized file, or a reader error; the
        message is one line starting with the path.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise PresetError(f"{path}: unsupported preset format {path.suffix!r} "
                          f"(expected {' or '.join(READERS)})")
    try:
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise PresetError(f"{path}: larger than the {MAX_PRESET_BYTES}-byte limit "
                              "for a preset")
        data = path.read_bytes()
    except OSError as error:
        raise PresetError(f"{path}: cannot read ({error.strerror or error})") from None
    return reader(data, str(path), name=slugify(path.stem))


def builtin_presets() -> dict[str, Preset]:
    """The fifteen shipped looks, ``{name: Preset}`` sorted by name.

    Read from the package data ``rules/presets/*.xmp`` with
    :mod:`importlib.resources`, so it also works from an installed wheel.
    """
    folder = resources.files("rules") / "presets"
    presets = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".xmp"):
            stem = entry.name[:-len(".xmp")]
            preset = read_xmp(entry.read_bytes(), f"rules/presets/{entry.name}",
                              name=slugify(stem))
            presets[preset.name] = preset
    return presets


def load_preset_dir(directory: str | Path) -> tuple[dict[str, Preset], list[str]]:
    """Read every preset file in a folder, collecting errors instead of stopping.

    Parameters
    ----------
    directory : str or Path
        Folder holding ``.xmp`` and/or ``.lrtemplate`` files (not recursive;
        other files are ignored).

    Returns
    -------
    presets : dict[str, Preset]
        Readable presets by name, sorted by name.
    errors : list of str
        One line per file that could not be used (unreadable, or a name
        already taken by an earlier file in name order).

    Raises
    ------
    PresetError
        If ``directory`` is not a folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PresetError(f"{directory}: not a folder of presets")
    presets: dict[str, Preset] = {}
    errors: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in READERS or not path.is_file():
            continue
        try:
            preset = load_preset(path)
        except PresetError as error:
            errors.append(str(error))
            continue
        if preset.name in presets:
            errors.append(f"{path}: preset name {preset.name!r} is already used by "
                          f"{presets[preset.name].source}")
            continue
        presets[preset.name] = preset
    return dict(sorted(presets.items())), errors
