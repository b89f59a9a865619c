"""HTML pages as a browser shows them: headless Chromium (Debian's ``chromium``, installed by
``make test``) and a parser of the rendered DOM's tables, images and probe output."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path


def chromium(tmp_path: Path, *flags: str) -> list[str]:
    """The command line of a headless Chromium with its own profile under ``tmp_path``."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is installed by `make test`"
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}", *flags]


def rendered(page: Path, tmp_path: Path, *flags: str) -> "PageParts":
    """The DOM of ``page`` after Chromium ran it, parsed."""
    dom = subprocess.run([*chromium(tmp_path, *flags), "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parts = PageParts()
    parts.feed(dom.stdout)
    return parts


class PageParts(HTMLParser):
    """Rows of every table by id (cell texts), the ``src`` of every image, and the text of ``<pre id=probe>``."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table = self._row = self._cell = None
        self.probe, self._in_probe = "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "pre" and attrs.get("id") == "probe":
            self._in_probe = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._in_probe = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_probe:
            self.probe += data
