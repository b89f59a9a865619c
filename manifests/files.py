"""File operations every stage shares: atomic writes, streamed checksums, why a weights file was refused.

A file is written under a temporary name beside its target and renamed into
place, so a crash or kill never leaves a partial file under the final name;
leftovers carry :data:`PARTIAL_MARK` in their name and can be removed on the
next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path

#: Part of the name of a file being written; ``<name>.part-<pid>-<thread>``.
PARTIAL_MARK = ".part-"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (parents created).

    A failed write (a full disk, say) removes its temporary and raises
    ``OSError`` naming ``path``.
    """
    path = Path(path)
    temporary = path.with_name(f"{path.name}{PARTIAL_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def remove_partials(folder: Path) -> int:
    """Delete the temporaries (:data:`PARTIAL_MARK` in the name) that killed runs left under ``folder``.

    Only for a folder no other process is writing to (the stage holds its
    workspace lock). Returns how many were removed.
    """
    removed = 0
    for path in Path(folder).rglob(f"*{PARTIAL_MARK}*") if Path(folder).is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def load_error_reason(error: BaseException) -> str:
    """One line on why ``torch.load(..., weights_only=True)`` refused a file.

    Torch's own message for a file holding pickled Python objects advises
    loading it with ``weights_only=False``, which would run code from the
    file; pie never does that, so the reason names the object instead.
    """
    text = _ANSI_ESCAPE.sub("", str(error))
    unsupported = _UNSUPPORTED_GLOBAL.search(text)
    if unsupported:
        return f"it holds a pickled Python object ({unsupported.group(1)}), which pie never unpickles"
    if "Weights only load failed" in text:
        return "it holds pickled Python objects, which pie never unpickles"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__
