"""Downloads and their checks in worker processes, each with its share of the download threads.

A photo costs the crawl about 0.1 ms of CPU to download and 1 ms to check
(:mod:`.imagecheck`: decode, hashes, temporary file), more than the 0.3 ms its
listing, in-order commit and record take. :class:`FetchPool` runs both in ``workers``
processes, each with ``ceil(concurrency / workers)`` threads that take a
request, call :meth:`.download.Downloader.fetch` (download, then check in the
same thread) and send back its outcome, so the crawl process only lists,
commits and records, and neither its GIL nor a pipe of image bodies sits
between a download and its check: what comes back is a
:class:`.download.Fetched` of a few hundred bytes. Per-host limits and
retries hold per process (``ceil(per_host / workers)`` connections to one
host in each).

Requests go out on one queue, so a process takes a download only when one of
its threads is free. Processes are started with ``spawn`` (never forked from
a process with running threads; so a script that crawls must do so under
``if __name__ == "__main__":``), ignore SIGINT (the crawl stops them on
Ctrl-C through :meth:`FetchPool.close`), and exit on their own within a second
when the crawl process dies, even by SIGKILL. A process that dies while
downloading (out of memory, killed) fails every download still waiting with
``BrokenProcessPool``.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from .download import Downloader

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


def _serve(requests, results, stopping, parent: int, threads: int, settings: dict) -> None:
    """A worker process: ``threads`` download threads, each taking requests from the queue while it is free."""
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="pie-parent-watch", daemon=True).start()
    with Downloader(**settings) as downloader:
        takers = [threading.Thread(target=_take, args=(downloader, requests, results, stopping),
                                   name=f"pie-download-{index}") for index in range(threads)]
        for taker in takers:
            taker.start()
        for taker in takers:
            taker.join()


def _take(downloader: Downloader, requests, results, stopping) -> None:
    """One download thread: fetch ``(key, url, target)`` requests and put ``(key, fetched, error)`` until a None."""
    while (item := requests.get()) is not None:
        key, url, target = item
        if stopping.is_set():  # closing: the crawl no longer waits for it
            results.put((key, None, None))
            continue
        try:
            results.put((key, downloader.fetch(url, target), None))
        except Exception as error:  # noqa: BLE001 - the crawl gets it as the download's failure
            results.put((key, None, f"{type(error).__name__}: {error}"))


def _resolve(future: Future | None, fetched, error: str | BaseException | None) -> bool:
    """Give ``future`` its outcome (``fetched``; ``error``; neither: dropped); False if nobody waits for it."""
    if future is None:
        return False
    try:
        if error is not None:
            future.set_exception(OSError(error) if isinstance(error, str) else error)
        elif fetched is None:
            future.cancel()
        else:
            future.set_result(fetched)
    except InvalidStateError:  # the crawl cancelled it while it was under way
        return False
    return True


class FetchPool:
    """:meth:`.download.Downloader.submit` with the downloads and checks in ``workers`` processes.

    Parameters are those of :class:`.download.Downloader`: ``concurrency``
    downloads in flight in all, at most ``per_host`` to one host, split
    evenly (rounded up) over the processes.
    """

    def __init__(self, workers: int, *, concurrency: int = 16, per_host: int = 8, timeout: float = 15.0,
                 min_side: int = 256, retry=None, seed: int = 0, max_bytes: int = 64 * 2**20):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if concurrency < 1 or per_host < 1:
            raise ValueError("concurrency and per_host must be at least 1")
        context = get_context("spawn")
        self._requests, self._results, self._stopping = context.Queue(), context.Queue(), context.Event()
        self._threads = -(-concurrency // workers)
        self._processes = []
        for index in range(workers):
            settings = dict(concurrency=self._threads, per_host=-(-per_host // workers), timeout=timeout,
                            min_side=min_side, retry=retry, seed=seed + index, max_bytes=max_bytes)
            self._processes.append(context.Process(
                target=_serve, args=(self._requests, self._results, self._stopping, os.getpid(), self._threads,
                      settings),
                name=f"pie-fetch-{index}", daemon=True))
        # SIGINT is blocked while the processes start, and they inherit that: a Ctrl-C to the whole process
        # group cannot interrupt their imports (about 1 s, while the first users are listed) with a traceback;
        # the crawl itself gets it as soon as the mask is back.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for process in self._processes:
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
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
        self._requests.put((key, url, target))
        return future

    def _listen(self) -> None:
        """Resolve the futures from the processes' results; fail them all if a process dies."""
        while True:
            try:
                item = self._results.get(timeout=_ALIVE_EVERY)
            except queue.Empty:
                exited = [process.exitcode is not None for process in self._processes]
                if self._closed:  # closing: done once every process has finished its downloads and exited
                    if all(exited):
                        return
                elif any(exited):
                    self._fail_all(BrokenProcessPool("a download process exited"))
                    return
                continue
            key, fetched, error = item
            with self._lock:
                future = self._futures.pop(key, None)
            if not _resolve(future, fetched, error) and fetched is not None and fetched.temporary is not None:
                fetched.temporary.unlink(missing_ok=True)  # nobody waits for it, so nothing will rename it

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            self._broken = error
            waiting, self._futures = self._futures, {}
        for future in waiting.values():
            _resolve(future, None, error)

    def close(self) -> None:
        """Stop the processes: downloads not started are dropped, those under way finish first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        for _ in range(len(self._processes) * self._threads):
            self._requests.put(None)
        # A process killed while writing a result leaves that queue's lock taken: the others may then never
        # exit, so a broken pool is not waited for long, and nothing here writes to the results queue.
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
        for channel in (self._requests, self._results):
            channel.cancel_join_thread()  # what a dead process left unread must not keep the crawl from exiting
            channel.close()

    def __enter__(self) -> "FetchPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
