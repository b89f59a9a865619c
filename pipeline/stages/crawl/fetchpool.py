"""Downloads and their checks in worker processes, each with its share of the downloads in flight.

A photo costs the crawl about 0.15 ms of CPU to download and 1.2 ms to check
(:mod:`.imagecheck`: decode, hashes, temporary file), more than the 0.3 ms its
listing, in-order commit and record take. :class:`FetchPool` runs both in
``workers`` processes, each a :class:`.download.Fetcher` on an event loop with
up to ``ceil(concurrency / workers)`` downloads under way, so the crawl
process only lists, commits and records, and neither its GIL nor a pipe of
image bodies sits between a download and its check: what comes back is a
:class:`.download.Fetched` of a few hundred bytes. Per-host limits and
retries hold per process (``ceil(per_host / workers)`` connections to one
host in each).

Each process has a pipe of its own, read by its event loop, so a request and
its outcome cost no thread switch in the process. The crawl process sends a
request to the process with the fewest under way once one has a free place,
and keeps the rest waiting: those are the downloads not started, dropped by
:meth:`FetchPool.close`. Processes are started with ``spawn`` (never forked
from a process with running threads; so a script that crawls must do so under
``if __name__ == "__main__":``), ignore SIGINT (the crawl stops them on
Ctrl-C through :meth:`FetchPool.close`), and exit on their own within a second
when the crawl process dies, even by SIGKILL. A process that dies while
downloading (out of memory, killed) fails every download still waiting with
``BrokenProcessPool``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context, resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path

from .download import Fetcher

#: Seconds between checks that every worker process is still alive.
_ALIVE_EVERY = 0.5


def default_workers() -> int:
    """Download processes for this machine: one per core, at most 4 (the crawl process itself needs little)."""
    return max(1, min(4, os.cpu_count() or 1))


def _watch_parent(parent: int) -> None:
    """Exit this process when the crawl process ``parent`` is gone (a crawl killed by SIGKILL cannot stop us)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _serve(channel: Connection, parent: int, settings: dict) -> None:
    """A worker process: fetch the ``(key, url, target)`` requests from ``channel`` until a None."""
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="pie-parent-watch", daemon=True).start()
    fetcher = Fetcher(**settings)
    gc.freeze()  # the modules' objects never become garbage: collections need not walk them
    asyncio.run(_serve_requests(channel, fetcher))


async def _serve_requests(channel: Connection, fetcher: Fetcher) -> None:
    """Start a task per request read from ``channel``; each sends back ``(key, fetched, error)``."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()
    ended = asyncio.Event()

    async def fetch(key: int, url: str, target: Path | None) -> None:
        try:
            outcome = (key, await fetcher.fetch(url, target), None)
        except Exception as error:  # noqa: BLE001 - the crawl gets it as the download's failure
            outcome = (key, None, f"{type(error).__name__}: {error}")
        try:
            channel.send(outcome)
        except OSError:  # the crawl process is gone
            pass

    def receive() -> None:
        try:
            item = channel.recv()
        except (EOFError, OSError):  # the crawl process is gone
            item = None
        if item is None:
            loop.remove_reader(channel.fileno())
            ended.set()
            return
        task = loop.create_task(fetch(*item))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_reader(channel.fileno(), receive)
    await ended.wait()
    await asyncio.gather(*tasks)
    fetcher.close()


def _resolve(future: Future | None, fetched, error: str | BaseException | None) -> bool:
    """Give ``future`` its outcome (``fetched``; ``error``); False if nobody waits for it."""
    if future is None:
        return False
    try:
        if error is not None:
            future.set_exception(OSError(error) if isinstance(error, str) else error)
        else:
            future.set_result(fetched)
    except InvalidStateError:  # the crawl cancelled it while it was under way
        return False
    return True


class FetchPool:
    """:meth:`.download.Downloader.submit` with the downloads and checks in ``workers`` processes.

    Parameters are those of :class:`.download.Downloader`: ``concurrency``
    downloads in flight in all, at most ``ceil(concurrency / workers)`` of
    them in one process, and at most ``ceil(per_host / workers)`` to one host
    in each process.
    """

    def __init__(self, workers: int, *, concurrency: int = 16, per_host: int = 8, timeout: float = 15.0,
                 min_side: int = 256, retry=None, seed: int = 0, max_bytes: int = 64 * 2**20):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if concurrency < 1 or per_host < 1:
            raise ValueError("concurrency and per_host must be at least 1")
        context = get_context("spawn")
        self._concurrency = concurrency
        self._capacity = -(-concurrency // workers)
        self._channels: list[Connection] = []
        self._processes = []
        ends = []
        for index in range(workers):
            mine, theirs = context.Pipe()
            settings = dict(per_host=-(-per_host // workers), timeout=timeout, min_side=min_side, retry=retry,
                            seed=seed + index, max_bytes=max_bytes)
            self._channels.append(mine)
            ends.append(theirs)
            self._processes.append(context.Process(target=_serve, args=(theirs, os.getpid(), settings),
                                                   name=f"pie-fetch-{index}", daemon=True))
        # SIGINT is blocked while the processes start, and they inherit that: a Ctrl-C to the whole process
        # group cannot interrupt their imports (about 1 s, while the first users are listed) with a traceback;
        # the crawl itself gets it as soon as the mask is back. multiprocessing's resource tracker is started
        # first, as starting it unblocks SIGINT (it unblocks rather than restores the mask it found).
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for process in self._processes:
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for end in ends:
            end.close()  # so a process's exit is an end of file on its channel
        self._under_way = [0] * workers
        self._waiting: deque[tuple[int, str, Path | None]] = deque()
        self._futures: dict[int, Future] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._broken: BaseException | None = None
        self._listener = threading.Thread(target=self._listen, name="pie-fetch-results", daemon=True)
        self._listener.start()

    def submit(self, url: str, target: Path | None = None) -> Future:
        """Start fetching ``url``; the future's result is a :class:`.download.Fetched`.

        With ``target``, an accepted body is also written beside it under a
        temporary name (``Fetched.temporary``); its folder must exist.
        """
        future: Future = Future()
        key = next(self._keys)
        with self._lock:
            if self._closed:
                raise RuntimeError("the fetch pool is closed")
            if self._broken is not None:
                future.set_exception(self._broken)
                return future
            self._futures[key] = future
            self._waiting.append((key, url, target))
            self._dispatch()
        return future

    def _dispatch(self) -> None:
        """Send waiting requests to processes with free places, ``concurrency`` in all (with the lock held)."""
        while self._waiting and self._broken is None:
            index = min(range(len(self._channels)), key=self._under_way.__getitem__)
            if self._under_way[index] >= self._capacity or sum(self._under_way) >= self._concurrency:
                return
            request = self._waiting.popleft()
            future = self._futures.get(request[0])
            if future is None or future.cancelled():  # the crawl gave up on it before it started
                self._futures.pop(request[0], None)
                continue
            try:
                self._channels[index].send(request)
            except OSError:
                self._broken = BrokenProcessPool("a download process exited")
                return
            self._under_way[index] += 1

    def _listen(self) -> None:
        """Resolve the futures from the processes' outcomes; fail them all if a process dies."""
        open_channels = {channel: index for index, channel in enumerate(self._channels)}
        while open_channels:
            if self._broken is not None:
                self._fail_all(self._broken)
                return
            ready = wait(list(open_channels), timeout=_ALIVE_EVERY)
            if not ready and not self._closed and any(process.exitcode is not None for process in self._processes):
                self._fail_all(BrokenProcessPool("a download process exited"))
                return
            for channel in ready:
                index = open_channels[channel]
                try:
                    key, fetched, error = channel.recv()
                except (EOFError, OSError):  # the process has exited
                    del open_channels[channel]
                    if not self._closed:
                        self._fail_all(BrokenProcessPool("a download process exited"))
                        return
                    continue
                with self._lock:
                    future = self._futures.pop(key, None)
                    self._under_way[index] -= 1
                    self._dispatch()
                if not _resolve(future, fetched, error) and fetched is not None and fetched.temporary is not None:
                    fetched.temporary.unlink(missing_ok=True)  # nobody waits for it, so nothing will rename it

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            self._broken = error
            waiting, self._futures = self._futures, {}
            self._waiting.clear()
        for future in waiting.values():
            _resolve(future, None, error)

    def close(self) -> None:
        """Stop the processes: downloads not started are dropped, those under way finish first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for key, _, _ in self._waiting:
                self._futures.pop(key).cancel()
            self._waiting.clear()
        for channel in self._channels:
            try:
                channel.send(None)
            except OSError:
                pass  # that process has exited
        broken = self._broken is not None or any(process.exitcode is not None for process in self._processes)
        patience = 5.0 if broken else 60.0
        for process in self._processes:
            process.join(timeout=patience)
            if process.exitcode is None:
                process.kill()
                process.join()
        self._listener.join()
        with self._lock:
            left, self._futures = self._futures, {}
        for future in left.values():
            future.cancel()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "FetchPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
