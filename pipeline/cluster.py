"""Dask at one seam: a local cluster by default, an existing one with ``--scheduler``.

Workers are processes with one thread each, and every worker pins torch,
OpenCV and the BLAS libraries to one thread, so ``workers`` tasks use
``workers`` cores and never oversubscribe them (Dask's nanny already sets
``OMP_NUM_THREADS=1`` before spawning; torch and OpenCV need telling too).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import distributed

log = logging.getLogger("pie.cluster")


def single_thread() -> None:
    """Limit the calling process's numeric libraries to one thread."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)


def _worker_plugin():
    from distributed import WorkerPlugin

    class SingleThread(WorkerPlugin):
        """Runs :func:`single_thread` on every worker, present and future."""

        name = "pie-single-thread"

        def setup(self, worker) -> None:
            single_thread()

    return SingleThread()


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                memory_limit: str | float = "auto") -> Iterator["distributed.Client"]:
    """A ``distributed.Client``: to ``scheduler`` if given, else to a new LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        Address such as ``tcp://host:8786`` of a running scheduler.
    workers : int, optional
        Worker processes of the local cluster (default: all cores).
    memory_limit : str or float
        Per-worker memory limit of the local cluster (Dask's syntax).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address=":0", memory_limit=memory_limit, silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        client.register_plugin(_worker_plugin())
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
