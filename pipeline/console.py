"""Terminal output shared by every stage: logging, progress bars, summaries.

Progress bars appear only on a terminal and never with ``-q``. Log records pass
through :class:`RedactSecrets`, so a secret registered with :func:`redact`
never reaches a log line even if some library logs it.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

import click
from tqdm import tqdm

T = TypeVar("T")

_secrets: set[str] = set()


def redact(*values: str | None) -> None:
    """Register secrets that must never appear in log output."""
    _secrets.update(value for value in values if value and len(value) >= 4)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    """Replace registered secrets in a record's rendered message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = scrub(record.getMessage())
            record.args = None
        return True


class _TqdmHandler(logging.StreamHandler):
    """Write log lines above any active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(verbosity: int, quiet: bool) -> None:
    """Configure the ``pie`` logger: warnings by default, -v info, -vv debug."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    logger = logging.getLogger("pie")
    logger.handlers.clear()
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("pie: %(message)s"))
    handler.addFilter(RedactSecrets())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # flickrapi logs whole error bodies (HTML pages) at ERROR; pie reports failures itself.
    logging.getLogger("flickrapi").setLevel(logging.CRITICAL)
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR if verbosity < 2 else logging.INFO)


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True) -> tqdm:
    """A tqdm progress bar on stderr, shown only on a terminal and when ``enabled``."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=(not enabled) or not sys.stderr.isatty(), dynamic_ncols=True)


def summary(line: str, quiet: bool = False) -> None:
    """Print the one-line summary that ends a stage."""
    if not quiet:
        click.echo(scrub(line))
