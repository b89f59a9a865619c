"""Seconds of ``workspace_status`` and of ``pie status`` on a 1,000-user x 100-photo workspace.

The workspace (a temporary folder) holds records only, as the crawl and the
degrader write them: per user 100 crawl records, each followed by its record
with a ``degraded`` entry (200,000 lines in 1,000 manifests, about 170 MB),
a user record per user, 25 rules manifests of 5,000 outputs, a shard index,
an MSM ``metrics.csv``, and a few real files (two pseudo originals and their
photos). It prints, as the median of three runs each,

* the baseline: one plain pass that ``json.loads`` every line of every
  manifest (:func:`manifests.jsonl.read_jsonl`), what any reader of the
  manifests must at least do;
* ``workspace_status`` cold (no summary cache: every manifest parsed and
  summarised, the cache written) and warm (the cache of the previous run
  reused, as on every later call while the manifests are unchanged), each
  with its ratio to the baseline;
* ``pie status`` end to end through the installed script (interpreter start,
  imports, output; warm cache), and its ratio to the baseline.

Run: ``python tests/bench/bench_status.py [USERS]`` (default 1000; the
figures scale with USERS x 100 records).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from manifests.jsonl import read_jsonl
from manifests.licenses import lookup
from manifests.records import PHOTO_SCHEMA
from manifests.workspace import Workspace
from pipeline.stages.status import workspace_status

PHOTOS_PER_USER = 100
RULES, IMAGES_PER_RULE = 25, 5000
MODEL = "f" * 64


def record(nsid: str, photo_id: str, split: str) -> dict:
    return {"schema": PHOTO_SCHEMA, "user": nsid, "photo_id": photo_id, "secret": "0123abcd", "server": "65535",
            "size": "z", "url": f"https://live.staticflickr.com/65535/{photo_id}_0123abcd_z.jpg",
            "page_url": f"https://www.flickr.com/photos/{nsid}/{photo_id}/", "license": lookup("4").as_record(),
            "owner_name": f"photographer {nsid}", "title": f"a photo titled {photo_id}",
            "date_taken": "2019-05-04 12:00:00", "file": f"flickr/{nsid}/{photo_id}.jpg", "width": 640,
            "height": 427, "bytes": 151234, "sha256": f"{int(photo_id):064x}", "phash": "0123456789abcdef",
            "status": "ok", "reason": None, "attempts": 1, "fetched_at": "2026-01-01T00:00:00+00:00", "split": split,
            "source": "list"}


def build(root: Path, users: int) -> Workspace:
    workspace = Workspace(root)
    folder = workspace.flickr_manifest_dir()
    folder.mkdir(parents=True)
    user_lines = []
    for index in range(users):
        nsid = f"{10_000_000 + index}@N01"
        split = "valid" if index % 10 == 0 else "train"
        lines = []
        for photo in range(PHOTOS_PER_USER):
            photo_id = str(50_000_000 + index * 1000 + photo)
            base = record(nsid, photo_id, split)
            degraded = {"file": f"degraded/{nsid}/{photo_id}.jpg", "sha256": "e" * 64, "format": "jpeg",
                        "model": MODEL, "source_sha256": base["sha256"]}
            lines += [json.dumps(base, sort_keys=True), json.dumps({**base, "degraded": degraded}, sort_keys=True)]
        (folder / f"{nsid}.jsonl").write_text("\n".join(lines) + "\n")
        user_lines.append(json.dumps({"schema": "pie.flickr-user/1", "user": nsid, "status": "complete",
                                      "photos_ok": PHOTOS_PER_USER}))
    workspace.flickr_users_manifest().path.write_text("\n".join(user_lines) + "\n")
    workspace.prepared_manifest().path.write_text("".join(
        json.dumps({"name": f"a{image:04d}", "status": "ok", "file": f"fivek/a{image:04d}.png"}) + "\n"
        for image in range(IMAGES_PER_RULE)))
    (root / "manifests" / "rules").mkdir(parents=True)
    for rule in range(RULES):
        (root / "manifests" / "rules" / f"rule-{rule}.jsonl").write_text("".join(
            json.dumps({"schema": "pie.rule-output/1", "rule": f"rule-{rule}", "name": f"a{image:04d}",
                        "status": "ok", "file": f"rules/rule-{rule}/a{image:04d}.png", "sha256": "d" * 64}) + "\n"
            for image in range(IMAGES_PER_RULE)))
    for index in range(2):  # a few real files
        for kind in ("flickr", "degraded"):
            path = root / kind / f"{10_000_000 + index}@N01" / f"{50_000_000 + index * 1000}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8 not decoded by status")
    (root / "shards").mkdir()
    (root / "shards" / "index.json").write_text(json.dumps({"totals": {"shards": 40, "samples": users * 100},
                                                            "splits": {}, "skipped": []}))
    (root / "msm").mkdir()
    (root / "msm" / "metrics.csv").write_text("step,epoch,global_step,loss,valid_psnr\nstep1,1,100,0.2,21.5\n")
    return workspace


def baseline(workspace: Workspace) -> int:
    """Lines of every manifest, each parsed with ``json.loads``."""
    return sum(len(read_jsonl(path).records) for path in (workspace.root / "manifests").rglob("*.jsonl"))


def median_seconds(function, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    users = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    pie = str(Path(sys.executable).with_name("pie"))
    with tempfile.TemporaryDirectory() as folder:
        workspace = build(Path(folder) / "ws", users)
        status = workspace_status(workspace)
        assert status["crawl"]["photos"]["ok"] == users * PHOTOS_PER_USER
        assert status["degrade"]["degraded"] == users * PHOTOS_PER_USER
        lines = baseline(workspace)
        plain = median_seconds(lambda: baseline(workspace))
        cache = workspace.root / "state" / "status-cache.json"
        cold = median_seconds(lambda: (cache.unlink(missing_ok=True), workspace_status(workspace)))
        warm = median_seconds(lambda: workspace_status(workspace))
        command = median_seconds(lambda: subprocess.run([pie, "--root", str(workspace.root), "status"],
                                                        check=True, capture_output=True))
    print(f"status of {users} users x {PHOTOS_PER_USER} photos ({lines:,} manifest lines):")
    print(f"  baseline: json.loads per line  {plain:7.3f} s")
    print(f"  workspace_status, cold cache   {cold:7.3f} s  ({cold / plain:.2f}x the baseline)")
    print(f"  workspace_status, warm cache   {warm:7.3f} s  ({warm / plain:.3f}x the baseline)")
    print(f"  pie status (end to end)        {command:7.3f} s  ({command / plain:.2f}x the baseline)")


if __name__ == "__main__":
    main()
