"""Option defaults from ``ROOT/pie.toml``.

The file holds a table per subcommand whose keys are option names, for example::

    [crawl]
    num-users = 1000
    per-user = 100

Top-level keys set options of the ``pie`` group itself. Command-line flags win
over the file. The Flickr API key and secret are refused here: they come only
from flags or the environment (DESIGN.md, "The data flow").
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SECRET_KEYS = frozenset({"api_key", "api_secret"})


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file."""


def _normalise(table: dict, path: Path, where: str) -> dict:
    result = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name in SECRET_KEYS:
            raise ConfigError(f"{path}: {where}{key} must not be stored in the config file; "
                              "use the FLICKR_API_KEY / FLICKR_API_SECRET environment variables")
        result[name] = _normalise(value, path, f"{where}{key}.") if isinstance(value, dict) else value
    return result


def load_defaults(path: Path) -> dict:
    """Read ``path`` into a Click ``default_map``; a missing file gives ``{}``."""
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
    return _normalise(table, Path(path), "")
