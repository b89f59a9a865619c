"""Option defaults from ``ROOT/pie.toml``.

The file holds a table per subcommand whose keys are option names, for example::

    [crawl]
    num-users = 1000
    per-user = 100

Top-level keys set options of the ``pie`` group itself. Command-line flags win
over the file. A key is an option's long flag without its dashes
(``num-users``) or its parameter name; an unknown table or key is an error
naming the file, the table and the key, with the closest valid name. The
Flickr API key and secret are refused here: they come only from flags or the
environment (DESIGN.md, "The data flow").
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SECRET_KEYS = frozenset({"api_key", "api_secret"})


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Names:
    """What a table may hold: option keys (a long flag without dashes, ``num_users``, or the
    parameter's own name) mapped to the parameter they set, and sub-tables (subcommands)."""

    options: dict[str, str] = field(default_factory=dict)
    tables: dict[str, "Names"] = field(default_factory=dict)


def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def apply_names(table: dict, names: Names, path: Path, where: str = "") -> dict:
    """``table`` (normalised keys) with each key renamed to the parameter it sets.

    Raises :class:`ConfigError` for the first unknown table or key, naming
    the file, the table (``[crawl]``, or the top level) and the key as
    written, with the closest valid name.
    """
    result = {}
    for name, value in table.items():
        if isinstance(value, dict) and name in names.tables:
            result[name] = apply_names(value, names.tables[name], path, f"{where}{name}.")
        elif name in names.options:
            result[names.options[name]] = value
        else:
            place = f"[{where.rstrip('.').replace('_', '-')}]" if where else "the top level"
            valid = [key.replace("_", "-") for key in [*names.options, *names.tables]]
            key = name.replace("_", "-")
            raise ConfigError(f"{path}: {place} has no option {key!r}{_closest(key, valid)}")
    return result


def _normalise(table: dict, path: Path, where: str) -> dict:
    result = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in SECRET_KEYS:
            raise ConfigError(f"{path}: {where}{key} must not be stored in the config file; "
                              "use the FLICKR_API_KEY / FLICKR_API_SECRET environment variables")
        result[name] = _normalise(value, path, f"{where}{key}.") if isinstance(value, dict) else value
    return result


def load_defaults(path: Path, names: Names | None = None) -> dict:
    """Read ``path`` into a Click ``default_map``; a missing file gives ``{}``.

    With ``names``, every table and key is checked and named as the
    parameter it sets (:func:`apply_names`).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    defaults = _normalise(table, Path(path), "")
    return defaults if names is None else apply_names(defaults, names, Path(path))
