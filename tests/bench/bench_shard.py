"""Speed of ``pie shard`` beside one process writing the same shards with ``webdataset.ShardWriter``.

1. Builds a workspace of 24 Flickr users x 100 photos (640 x 427 JPEG
   targets and pseudo originals made from scikit-image photographs, about
   120 kB a pair) in ``bench-data/shard/``.
2. Baseline, one process: reads every pair, checks both files against the
   SHA-256 of their records (as ``pie shard`` does), writes the same samples
   with ``webdataset.ShardWriter`` (100 per shard) and hashes each finished
   shard for its index.
3. ``pie shard`` (``run_shard``) in this one process without Dask: the cost
   of its shard task alone (``pipeline.stages.shard.tar_writer`` instead of ``tarfile``).
4. ``pie shard`` on a two-worker local Dask cluster, started before the clock
   starts (its start-up is printed apart), 100 per shard.
   All write to /dev/shm where it exists: this machine's disk takes about
   210 MB/s of sustained writes, which would time the disk, not the writers.
5. Loader throughput: ``model.data.pairs`` decoding the written shards to
   512 x 512 tensors with two DataLoader workers.

Prints samples/s and MB/s of each writer, the ratio of the Dask run to the
baseline (target: pie >= 1.6x on two cores), and decoded pairs/s. Run: ``python tests/bench/bench_shard.py``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests.workspace import Workspace  # noqa: E402
from pipeline.cluster import dask_client  # noqa: E402
from pipeline.imageio import encode_jpeg  # noqa: E402
from pipeline.stages.shard.plan import workspace_plan  # noqa: E402
from pipeline.stages.shard.write import run_shard, sample_of  # noqa: E402
from shard_fixtures import degrade_record, photo_record  # noqa: E402

USERS, PHOTOS, PER_SHARD = 24, 100, 100
ROOT = Path(__file__).resolve().parents[2] / "bench-data" / "shard"
#: Shards go to memory (tmpfs) where there is one, so that both writers are timed, not the disk's writeback.
OUT = Path("/dev/shm/pie-bench-shard") if Path("/dev/shm").is_dir() else ROOT


def photographs() -> list[np.ndarray]:
    """Distinct 640 x 427 crops of scikit-image photographs."""
    sources = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    crops = []
    for index in range(40):
        image = sources[index % len(sources)]
        scale = 1.1 + 0.02 * index
        big = cv2.resize(image, None, fx=scale * 640 / image.shape[1], fy=scale * 640 / image.shape[1])
        top, left = (index * 7) % (big.shape[0] - 427), (index * 11) % (big.shape[1] - 640)
        crops.append(np.ascontiguousarray(big[top:top + 427, left:left + 640]))
    return crops


def build(root: Path) -> Workspace:
    """The benchmark workspace (kept between runs; rebuilt when incomplete)."""
    marker = root / "built"
    workspace = Workspace(root)
    if marker.exists():
        return workspace
    shutil.rmtree(root, ignore_errors=True)
    crops = photographs()
    targets = [encode_jpeg(crop, 92) for crop in crops]
    inputs = [encode_jpeg(cv2.convertScaleAbs(crop, alpha=0.8, beta=10), 95) for crop in crops]
    for user in range(USERS):
        nsid = f"{70000000 + user}@N01"
        records = []
        for photo in range(PHOTOS):
            index = (user * PHOTOS + photo) % len(crops)
            record = photo_record(workspace, nsid, str(900000 + user * 1000 + photo), "train", targets[index])
            records.append(degrade_record(workspace, record, inputs[index]))
        workspace.flickr_manifest(nsid).append(records)
    marker.write_text("ok")
    return workspace


def baseline(workspace: Workspace, out: Path) -> float:
    """Seconds for one process to verify and write every pair with ShardWriter, then hash the shards."""
    import webdataset as wds

    plans, _ = workspace_plan(workspace, maxcount=PER_SHARD)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=PER_SHARD, maxsize=1e12, verbose=0,
                         encoder=False, mtime=946_684_800) as writer:
        for plan in plans:
            for pair in plan.pairs:
                writer.write(sample_of(workspace, pair))
    for path in sorted(out.glob("*.tar")):
        hashlib.sha256(path.read_bytes()).hexdigest()
    return time.perf_counter() - started


def pie_shard(workspace: Workspace, out: Path, client=None) -> float:
    """Seconds for ``run_shard`` on an already running cluster, or in this process when ``client`` is None."""
    from contextlib import nullcontext

    plans, skipped = workspace_plan(workspace, maxcount=PER_SHARD)
    shutil.rmtree(out, ignore_errors=True)
    factory = None if client is None else (lambda: nullcontext(client))
    started = time.perf_counter()
    run_shard(workspace, plans, skipped, str(out), client_factory=factory)
    return time.perf_counter() - started


def loader_rate(out: Path, samples: int = 400) -> float:
    """Decoded 512-px pairs per second from ``model.data.pairs`` with two DataLoader workers."""
    import torch

    from model.data import pairs, shard_urls

    dataset = pairs(shard_urls(out, "train"), size=512, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2,
                                         collate_fn=lambda batch: torch.stack([item[0] for item in batch]))
    iterator = iter(loader)
    next(iterator)  # workers started, first batch decoded
    count, started = 0, time.perf_counter()
    for batch in iterator:
        count += batch.shape[0]
        if count >= samples:
            break
    return count / (time.perf_counter() - started)


def main() -> None:
    workspace = build(ROOT)
    total_bytes = sum(path.stat().st_size for folder in ("flickr", "degraded") for path in (ROOT / folder).rglob("*.jpg"))
    samples = USERS * PHOTOS
    print(f"workspace: {samples} pairs, {total_bytes / 1e6:.0f} MB of images")
    print(f"shards written to {OUT}")
    base = min(baseline(workspace, OUT / "out-baseline") for _ in range(3))
    alone = min(pie_shard(workspace, OUT / "out-pie") for _ in range(3))
    started = time.perf_counter()
    with dask_client(None, 2) as client:
        print(f"local cluster (2 workers) started in {time.perf_counter() - started:.1f} s")
        pie_shard(workspace, OUT / "out-pie", client)  # workers import fsspec and the pipeline once
        pie = min(pie_shard(workspace, OUT / "out-pie", client) for _ in range(3))
    for name, seconds in (("one process, webdataset.ShardWriter", base), ("pie shard, one process, no Dask", alone),
                          ("pie shard, 2 Dask workers", pie)):
        print(f"{name:38s} {samples / seconds:8.0f} samples/s {total_bytes / 1e6 / seconds:8.1f} MB/s")
    print(f"pie shard / one-process writer: {base / pie:.2f}x (target >= 1.6x on two cores)")
    print(f"loader: {loader_rate(OUT / 'out-pie'):.1f} decoded 512-px pairs/s (2 DataLoader workers, augmented)")
    shutil.rmtree(OUT, ignore_errors=True)


if __name__ == "__main__":
    main()
