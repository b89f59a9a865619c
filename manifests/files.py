"""File operations every stage shares: atomic writes and streamed checksums.

A file is written under a temporary name beside its target and renamed into
place, so a crash or kill never leaves a partial file under the final name;
leftovers carry :data:`PARTIAL_MARK` in their name and can be removed on the
next run.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

#: Part of the name of a file being written; ``<name>.part-<pid>-<thread>``.
PARTIAL_MARK = ".part-"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}{PARTIAL_MARK}{os.getpid()}-{threading.get_ident()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
