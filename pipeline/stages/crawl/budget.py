"""A token bucket for the Flickr API budget, shared by processes and restarts.

Flickr allows 3,600 calls per hour per key, across every process using the key
(notes/flickr.md, section 3). The bucket's state lives in a small JSON file in
the workspace, read and written under an exclusive ``flock``, so every crawl
process on the machine draws from the same bucket and a restarted crawl starts
from what was left, not from a full bucket.

The refill rate is ``(calls_per_hour - burst) / 3600`` per second, so even a
full burst followed by an hour at the refill rate stays within
``calls_per_hour`` in any rolling hour.
"""

from __future__ import annotations

import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class ApiBudget:
    """Blocking token bucket persisted at ``path``.

    Parameters
    ----------
    path : Path
        State file (created on first use).
    calls_per_hour : int
        Budget of the API key, calls per rolling hour (Flickr: 3,600).
    burst : int
        Calls that may be made back to back; at most ``calls_per_hour - 1``.
    """

    path: Path
    calls_per_hour: int = 3600
    burst: int = 60
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.calls_per_hour < 1:
            raise ValueError("calls_per_hour must be at least 1")
        self.burst = max(1, min(self.burst, self.calls_per_hour - 1 if self.calls_per_hour > 1 else 1))
        self.rate = max(self.calls_per_hour - self.burst, 1) / 3600.0
        self.calls = 0

    def _update(self, take: bool) -> float:
        """Refill, take one token if asked and available; return seconds to wait (0 = taken)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                try:
                    state = json.loads(handle.read() or "{}")
                except json.JSONDecodeError:
                    state = {}
                now = self.clock()
                tokens = float(state.get("tokens", self.burst))
                updated = float(state.get("updated", now))
                tokens = min(float(self.burst), tokens + max(0.0, now - updated) * self.rate)
                wait = 0.0
                if take:
                    if tokens >= 1.0 - 1e-9:  # tolerate rounding of the refill
                        tokens = max(0.0, tokens - 1.0)
                    else:
                        wait = (1.0 - tokens) / self.rate
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps({"tokens": tokens, "updated": now, "calls_per_hour": self.calls_per_hour}))
                handle.flush()
                return wait
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def acquire(self) -> None:
        """Block until one call may be made, and account for it."""
        while True:
            wait = self._update(take=True)
            if wait == 0.0:
                self.calls += 1
                return
            self.sleep(min(max(wait, 0.001), 5.0))

    def available(self) -> float:
        """Tokens available now (refilled, nothing taken)."""
        self._update(take=False)
        state = json.loads(self.path.read_text(encoding="utf-8"))
        return float(state["tokens"])
