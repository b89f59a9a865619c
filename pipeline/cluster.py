"""Dask at one seam: a local cluster by default, an existing one with ``--scheduler``.

Workers are processes with one thread each, and every worker pins torch,
OpenCV and the BLAS libraries to one thread, so ``workers`` tasks use
``workers`` cores and never oversubscribe them (Dask's nanny already sets
``OMP_NUM_THREADS=1`` before spawning; torch and OpenCV need telling too).

The local cluster's workers keep glibc's own ``MALLOC_TRIM_THRESHOLD_``: Dask's
nanny sets it to 64 KiB by default, which makes the numpy-heavy rules and
the degrader return memory to the system after nearly every array and fault
it back in, about four times slower per task. A cluster started elsewhere
(``--scheduler``) should start its workers the same way: set
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` to ``null`` in
the Dask configuration of the machines that run ``dask worker``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import distributed

log = logging.getLogger("pie.cluster")

#: The Dask setting through which the nanny lowers glibc's trim threshold in its workers.
NANNY_MALLOC_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


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
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        with dask.config.set({NANNY_MALLOC_TRIM: None}):  # None: the nanny leaves the variable alone
            cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", memory_limit=memory_limit,
                                   silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        client.register_plugin(_worker_plugin())
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
