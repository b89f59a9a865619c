"""One run of each stage per workspace at a time.

Two ``pie rules`` (or ``crawl``, ``degrade``, ...) on one workspace would do
the same work twice and append duplicate records. Each stage therefore holds
an exclusive ``flock`` on ``ROOT/state/locks/<stage>.lock`` while it runs; the
file names the holder (process id, host, command, start time), so a second
run stops at once with a line saying who holds it. The kernel releases the
lock when its process ends, however it ends, so a killed run never leaves a
stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator


class StageBusy(RuntimeError):
    """Another process holds the stage's lock; the message names it."""


def lock_path(root: Path, stage: str) -> Path:
    """``ROOT/state/locks/<stage>.lock``."""
    return Path(root) / "state" / "locks" / f"{stage}.lock"


@contextlib.contextmanager
def stage_lock(root: Path, stage: str) -> Iterator[None]:
    """Hold ``stage``'s lock of the workspace at ``root`` for the duration; :class:`StageBusy` if held."""
    path = lock_path(root, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise StageBusy(f"{Path(root)}: another `pie {stage}` is running on this workspace "
                            f"({_describe(handle.read())}); wait for it or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": " ".join(["pie", *sys.argv[1:]])[:200],
                                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
