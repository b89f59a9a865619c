"""Speed of ``pie audit --shards`` beside the bare reading it cannot avoid.

1. Builds a workspace of USERS Flickr users x PHOTOS photos (640 x 427 JPEG
   targets and pseudo originals from scikit-image photographs, as in
   ``bench_shard.py``; the last sixth of the users are valid users) and shards
   it with ``pie shard``'s library in this process, into tmpfs where there is
   one, in ``bench-data/audit/``.
2. Baseline: one pass that hashes every shard file (SHA-256) and iterates
   every sample with ``webdataset.WebDataset`` (no decoding): the I/O any
   shard check has to do.
3. ``audit_shards``: the shard part of ``pie audit --shards`` (index, tar
   structure, member hashes, records, splits, duplicates), first with the
   crawl's ``phash`` in every record (as ``pie crawl`` writes them), then
   with records without it, so that every target is decoded for its pHash.

Prints samples/s and MB/s of each and the ratio to the baseline. Run:
``python tests/bench/bench_audit.py [USERS PHOTOS]`` (default 12 x 50).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402

from bench_shard import photographs  # noqa: E402
from manifests.audit import AuditReport  # noqa: E402
from manifests.jsonl import latest_by  # noqa: E402
from manifests.workspace import Workspace  # noqa: E402
from pipeline.imageio import decode_image, encode_jpeg  # noqa: E402
from pipeline.stages.audit import audit_shards  # noqa: E402
from pipeline.stages.crawl.dedupe import perceptual_hash  # noqa: E402
from pipeline.stages.shard.plan import workspace_plan  # noqa: E402
from pipeline.stages.shard.write import run_shard  # noqa: E402
from shard_fixtures import degrade_record, photo_record  # noqa: E402

ROOT = (Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(__file__).resolve().parents[2] / "bench-data") \
    / "pie-bench-audit"
PER_SHARD = 100


def build(root: Path, users: int, photos: int) -> Workspace:
    """The benchmark workspace with its shards; every photo a crop turned by its own angle."""
    shutil.rmtree(root, ignore_errors=True)
    workspace = Workspace(root)
    crops = photographs()
    valid_from = users - max(1, users // 6)
    for user in range(users):
        nsid = f"{71000000 + user}@N01"
        records = []
        for photo in range(photos):
            index = user * photos + photo
            turn = cv2.getRotationMatrix2D((320, 213), 11.0 * (index // len(crops)), 1.0)
            shifted = cv2.warpAffine(crops[index % len(crops)], turn, (640, 427), borderMode=cv2.BORDER_REFLECT)
            split = "train" if user < valid_from else ("valid_ref" if photo < 20 else "valid")
            record = photo_record(workspace, nsid, str(910000 + user * 1000 + photo), split,
                                  encode_jpeg(shifted, 92))
            record["phash"] = f"{perceptual_hash(decode_image(encode_jpeg(shifted, 92)).as_uint8()):016x}"
            records.append(degrade_record(workspace, record, encode_jpeg(cv2.convertScaleAbs(shifted, alpha=0.8,
                                                                                             beta=10), 95)))
        workspace.flickr_manifest(nsid).append(records)
    plans, skipped = workspace_plan(workspace, maxcount=PER_SHARD)
    run_shard(workspace, plans, skipped, str(workspace.shards_dir()))
    return workspace


def baseline(folder: Path) -> tuple[float, int]:
    """Seconds to hash every shard and iterate its samples with webdataset; the samples seen."""
    import webdataset as wds

    started = time.perf_counter()
    urls = [str(path) for path in sorted(folder.glob("*.tar"))]
    for url in urls:
        hashlib.sha256(Path(url).read_bytes()).hexdigest()
    samples = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    return time.perf_counter() - started, samples


def main() -> None:
    users, photos = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (12, 50)
    workspace = build(ROOT, users, photos)
    folder = workspace.shards_dir()
    megabytes = sum(path.stat().st_size for path in folder.glob("*.tar")) / 1e6
    print(f"workspace: {users * photos} pairs in {len(list(folder.glob('*.tar')))} shards, {megabytes:.0f} MB")
    base_seconds, samples = baseline(folder)
    print(f"baseline (sha256 + webdataset iteration): {samples / base_seconds:,.0f} samples/s, "
          f"{megabytes / base_seconds:,.0f} MB/s")
    for label in ("crawl pHash in the records", "every target decoded"):
        report = AuditReport()
        started = time.perf_counter()
        audit_shards(workspace, report, folder)
        seconds = time.perf_counter() - started
        print(f"audit_shards, {label}: {samples / seconds:,.0f} samples/s, {megabytes / seconds:,.0f} MB/s, "
              f"problems {dict(report.kinds) or 0}; {base_seconds / seconds:.2f}x the baseline's rate")
        for nsid in workspace.crawled_users():
            records = latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").values()
            workspace.flickr_manifest(nsid).append([{**record, "phash": None} for record in records])
    shutil.rmtree(ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
