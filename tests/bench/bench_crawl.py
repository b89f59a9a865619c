"""Crawl throughput: ``pie crawl`` against img2dataset and a sequential loop.

All fetch the same list of 640-px JPEGs (Flickr size ``z``) from a
``pie flickr-replay`` server running in its own process on loopback:

* ``pie crawl``: API listing, concurrent downloads, full decode, size check,
  SHA-256 and perceptual-hash duplicate checks, atomic writes, manifests; once
  with its default download processes (downloads and checks in worker
  processes) and once with both in the crawl process (on its own event loop);
* img2dataset 1.47.0 (in its own virtual environment, as it pins an old
  webdataset), ``--resize_mode no --disable_all_reencoding True``: files
  output, the same thread count, SHA-256 of each file, *no decoding*;
* a plain sequential ``requests`` loop writing the files.

Each contender runs ``--rounds`` times, the order reversed every round, each
into a fresh folder. Printed per run and as medians: the total rate (pie's
includes its API listing and pool start; img2dataset's includes starting its
three Python processes, about 10 s), and the rate of the work itself: pie's
steady commit rate (10th to 90th percentile of photos) and img2dataset's
download phase from its own ``*_stats.json``. The load average is printed
beside each run, as the figures only compare within one run of this script.

Every run writes into a folder of its own, and all are deleted at the end:
on an ext4 file system without a journal (this machine's), creating a file
skips the free inodes deleted in the last minute (five while their inode
table block is unwritten; ``recently_deleted`` in the kernel's
``fs/ext4/ialloc.c``), so deleting one run's 3,000 files just before the next
made every file the next run created cost more CPU (pie's download processes:
about 1.9 against 1.6 ms per photo), which a crawl that keeps its files does
not pay. The files are synced to disk after each run, so that no run's
writeback (after 30 s, by the kernel's default) falls into a later run.

Run: ``python tests/bench/bench_crawl.py`` (``--users 30 --per-user 100`` by
default, 3,000 photos, 5 rounds; about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

from manifests.workspace import Workspace  # noqa: E402
from pipeline.stages.demo.corpus import source_photographs  # noqa: E402
from pipeline.stages.crawl.crawler import CrawlOptions  # noqa: E402
from pipeline.stages.crawl.fetchpool import default_workers  # noqa: E402
from pipeline.stages.crawl.stage import Network, Source, crawl  # noqa: E402
from pipeline.imageio import encode_jpeg, read_image  # noqa: E402

IMG2DATASET_VENV = ROOT / ".venv-img2dataset"
IMG2DATASET_VERSION = "1.47.0"


def build_folder(folder: Path, users: int, per_user: int, seed: int = 0) -> list[str]:
    """``users`` x ``per_user`` distinct 640-px JPEGs (random crops of real photographs)."""
    sources = [read_image(path).as_uint8() for _, path in sorted(source_photographs().items())]
    rng = np.random.default_rng(seed)
    nsids = []
    for user in range(users):
        nsid = f"{70_000_000 + user}@N01"
        nsids.append(nsid)
        (folder / nsid).mkdir(parents=True)
        for index in range(per_user):
            image = sources[int(rng.integers(len(sources)))]
            height, width = image.shape[:2]
            crop_h, crop_w = int(height * rng.uniform(0.3, 0.7)), int(width * rng.uniform(0.3, 0.7))
            top, left = int(rng.integers(0, height - crop_h)), int(rng.integers(0, width - crop_w))
            crop = image[top:top + crop_h, left:left + crop_w]
            scale = 640 / max(crop.shape[:2])
            crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                              interpolation=cv2.INTER_CUBIC)
            photo_id = str(60_000_000_000 + user * 1000 + index)
            (folder / nsid / f"{photo_id}.jpg").write_bytes(encode_jpeg(crop, quality=90))
            (folder / nsid / f"{photo_id}.json").write_text(json.dumps({"license": "4"}))
    return nsids


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_replay(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "flickr-replay", str(folder), "--port", str(port),
                                "--api-key", "benchkey"], cwd=ROOT, stderr=subprocess.DEVNULL)
    rest_url = f"http://127.0.0.1:{port}/services/rest/"
    for _ in range(200):
        try:
            requests.get(rest_url, params={"method": "flickr.test.echo", "format": "json"}, timeout=1)
            return process, rest_url
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("replay server did not start")


def run_pie(rest_url: str, nsids: list[str], per_user: int, workdir: Path, concurrency: int,
            check_workers: int | None) -> dict:
    """One ``pie crawl`` into a workspace in the empty folder ``workdir``: total seconds, photos, and the steady rate.

    The steady rate is the commit rate between the 10th and the 90th
    percentile of photos committed (listing, pool start and the tail left out).
    """
    users_file = workdir / "users.txt"
    users_file.write_text("\n".join(nsids) + "\n")
    root = workdir / "pie"
    options = CrawlOptions(num_users=len(nsids), per_user=per_user)
    network = Network("benchkey", "benchsecret", rest_url, calls_per_hour=1_000_000, concurrency=concurrency,
                      per_host=concurrency, min_side=256, check_workers=check_workers)
    stamps: list[float] = []
    started = time.perf_counter()
    summary = crawl(Workspace(root), Source(users_file=users_file), options, network,
                    on_photo=lambda record: stamps.append(time.perf_counter()))
    elapsed = time.perf_counter() - started
    low, high = stamps[len(stamps) // 10], stamps[len(stamps) * 9 // 10]
    steady = (len(stamps) * 9 // 10 - len(stamps) // 10) / (high - low)
    return {"seconds": elapsed, "count": summary.statuses["ok"] + summary.statuses["rejected"], "phase": steady}


def photo_urls(rest_url: str, nsids: list[str]) -> list[str]:
    urls = []
    for nsid in nsids:
        reply = requests.post(rest_url, data={"method": "flickr.people.getPublicPhotos", "user_id": nsid,
                                              "extras": "url_z", "per_page": 500, "format": "json",
                                              "nojsoncallback": 1, "api_key": "benchkey"}).json()
        urls += [photo["url_z"] for photo in reply["photos"]["photo"]]
    return urls


def run_sequential(urls: list[str], workdir: Path) -> dict:
    out = workdir / "sequential"
    out.mkdir()
    session = requests.Session()
    started = time.perf_counter()
    for index, url in enumerate(urls):
        response = session.get(url, timeout=15)
        response.raise_for_status()
        (out / f"{index}.jpg").write_bytes(response.content)
    return {"seconds": time.perf_counter() - started, "count": len(urls), "phase": None}


def ensure_img2dataset() -> Path | None:
    """img2dataset at :data:`IMG2DATASET_VERSION` in its own venv (it pins an old webdataset), or None."""
    python = IMG2DATASET_VENV / "bin" / "python"
    pin = f"img2dataset=={IMG2DATASET_VERSION}"
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(IMG2DATASET_VENV)], check=True)
    installed = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
                               capture_output=True, text=True).stdout.strip()
    if installed != IMG2DATASET_VERSION:
        result = subprocess.run([str(python), "-m", "pip", "install", "-q", pin], env=environment)
        if result.returncode != 0:
            return None
    return IMG2DATASET_VENV / "bin" / "img2dataset"


def run_img2dataset(binary: Path, urls: list[str], workdir: Path, concurrency: int) -> dict:
    """One img2dataset run: total seconds (its three processes' start included) and its download-phase rate.

    The download phase is what img2dataset's own ``*_stats.json`` files
    report: samples over ``end_time - start_time`` of its shards.
    """
    url_list = workdir / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    out = workdir / "img2dataset"
    environment = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
                   "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    started = time.perf_counter()
    subprocess.run([str(binary), "--url_list", str(url_list), "--output_folder", str(out), "--input_format", "txt",
                    "--output_format", "files", "--resize_mode", "no", "--processes_count", "1",
                    "--thread_count", str(concurrency), "--disable_all_reencoding", "True", "--timeout", "15",
                    "--number_sample_per_shard", "100000", "--disallowed_header_directives", "[]",
                    "--enable_wandb", "False"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=environment)
    elapsed = time.perf_counter() - started
    stats = [json.loads(path.read_text()) for path in out.glob("*_stats.json")]
    downloading = sum(entry["end_time"] - entry["start_time"] for entry in stats)
    return {"seconds": elapsed, "count": sum(entry["successes"] for entry in stats),
            "phase": sum(entry["count"] for entry in stats) / downloading}


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each; the order reverses every round")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pie-bench-crawl-"))
    pool = default_workers()
    runs_made = itertools.count()

    def next_folder() -> Path:
        """A new empty folder for one run: no run's output is deleted before the end (see the module docstring)."""
        folder = workdir / f"run-{next(runs_made)}"
        folder.mkdir()
        return folder

    runs: dict[str, list[dict]] = {}
    try:
        nsids = build_folder(workdir / "replay", args.users, args.per_user)
        process, rest_url = start_replay(workdir / "replay")
        try:
            urls = photo_urls(rest_url, nsids)
            for url in urls[:50]:  # warm the server's file cache equally for everyone
                requests.get(url, timeout=15)
            binary = ensure_img2dataset()
            if binary is None:
                print("img2dataset could not be installed; its rows are missing")
            contenders = {
                f"pie crawl ({pool} download process{'es' if pool != 1 else ''})":
                    lambda folder: run_pie(rest_url, nsids, args.per_user, folder, args.concurrency, pool),
                "pie crawl (in one process)":
                    lambda folder: run_pie(rest_url, nsids, args.per_user, folder, args.concurrency, 0),
                **({"img2dataset": lambda folder: run_img2dataset(binary, urls, folder, args.concurrency)}
                   if binary else {}),
                "sequential requests": lambda folder: run_sequential(urls, folder),
            }
            print(f"load average before: {load()}", flush=True)
            for round_index in range(args.rounds):
                order = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
                for name in order:
                    result = contenders[name](next_folder())
                    os.sync()  # this run's files reach the disk now, not during the next run
                    runs.setdefault(name, []).append(result)
                    phase = f", phase {result['phase']:7.1f}/s" if result["phase"] else ""
                    print(f"  round {round_index + 1} {name:34s} {result['count']:6d} in {result['seconds']:6.2f} s"
                          f" = {result['count'] / result['seconds']:7.1f}/s{phase}  (load {load()})", flush=True)
        finally:
            process.terminate()
            process.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{len(urls)} photos of 640 px from a loopback replay server, {args.concurrency} downloads in flight, "
          f"{os.cpu_count()} cores, img2dataset {IMG2DATASET_VERSION} (no decoding: --resize_mode no, "
          f"--disable_all_reencoding), medians of {args.rounds} rounds in alternating order; load {load()}")
    total = {name: statistics.median(r["count"] / r["seconds"] for r in results) for name, results in runs.items()}
    phase = {name: statistics.median(r["phase"] for r in results) for name, results in runs.items()
             if results[0]["phase"]}
    for name in runs:
        extra = f"; {'steady' if name.startswith('pie') else 'download phase'} {phase[name]:7.1f} images/s" \
            if name in phase else ""
        print(f"  {name:34s} total {total[name]:7.1f} images/s{extra}")
    if "img2dataset" in runs:
        for name in (name for name in runs if name.startswith("pie")):
            print(f"  {name} / img2dataset: total {total[name] / total['img2dataset']:.2f}x, "
                  f"steady against download phase {phase[name] / phase['img2dataset']:.2f}x")


if __name__ == "__main__":
    main()
