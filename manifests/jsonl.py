"""Append-only JSON Lines files that survive a crash.

A manifest is only ever appended to. Each :meth:`JsonlStore.append` call writes
whole lines, flushes and fsyncs once for the batch, so after a ``kill -9`` the
file holds every acknowledged record plus at most one torn last line. That torn
line is detected (no trailing newline, or not valid JSON) and cut off the next
time the file is opened for appending; readers skip it with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger("pie.manifests")


@dataclass
class ReadResult:
    """Records read from one JSONL file and the problems met on the way."""

    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_jsonl(path: Path) -> ReadResult:
    """Read every complete JSON object line of ``path``.

    A torn last line (no newline at the end of the file, starting as a record
    does: the end of an interrupted append) is ignored; text after the last
    newline that does not start with ``{`` was appended by something else and
    is reported as not a record. A line in the middle that is not a JSON
    object is reported in ``problems`` as ``"<file>:<line>: ..."`` and
    skipped. A missing file reads as empty.
    """
    result = ReadResult()
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return result
    lines = data.split(b"\n")
    torn = lines.pop()  # text after the last newline: empty unless torn
    if torn.strip().startswith(b"{"):
        result.problems.append(f"{path}:{len(lines) + 1}: torn last line ignored")
    elif torn.strip():
        result.problems.append(f"{path}:{len(lines) + 1}: text after the last record is not a record "
                               "(appended by something else?)")
    # One parse of the whole file, several times faster than a json.loads per line, when every line
    # is one object; any doubt and the lines are parsed one by one below.
    whole = [raw.strip() for raw in lines if raw.strip()]
    if all(raw.startswith(b"{") and raw.endswith(b"}") for raw in whole):
        try:
            records = json.loads(b"[" + b",".join(whole) + b"]")
        except (UnicodeDecodeError, json.JSONDecodeError):
            records = None
        if records is not None and len(records) == len(whole) and all(isinstance(r, dict) for r in records):
            result.records = records
            return result
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            result.problems.append(f"{path}:{number}: not valid JSON ({exc.__class__.__name__})")
            continue
        if not isinstance(record, dict):
            result.problems.append(f"{path}:{number}: not a JSON object")
            continue
        result.records.append(record)
    return result


def repair_torn_tail(path: Path) -> bool:
    """Cut a torn last line off ``path``; return True when something was cut."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return False
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return False
            # Walk back to the previous newline in blocks.
            position = size
            keep = 0
            while position > 0:
                start = max(0, position - 65536)
                handle.seek(start)
                block = handle.read(position - start)
                index = block.rfind(b"\n")
                if index >= 0:
                    keep = start + index + 1
                    break
                position = start
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return False
    log.warning("%s: torn last line from an interrupted write removed", path)
    return True


class JsonlStore:
    """An append-only JSONL file: fsync per batch, torn tail repaired on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._repaired = False

    def append(self, records: Iterable[dict]) -> int:
        """Append ``records`` as one batch (one fsync); return how many were written."""
        lines = [json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._repaired:
            repair_torn_tail(self.path)
            self._repaired = True
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        return len(lines)

    def read(self) -> ReadResult:
        """All complete records in file order."""
        return read_jsonl(self.path)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.read().records)


def latest_by(records: Iterable[dict], key: str) -> dict[str, dict]:
    """The last record for each value of ``key`` (later records win)."""
    latest: dict[str, dict] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, str):
            latest[value] = record
    return latest
