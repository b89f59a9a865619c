"""Crawl throughput: ``pie crawl`` against img2dataset and a sequential loop.

All three fetch the same list of 640-px JPEGs (Flickr size ``z``) from a
``pie flickr-replay`` server running in its own process on loopback:

* ``pie crawl``: API listing, concurrent downloads, full decode, size check,
  SHA-256 and perceptual-hash duplicate checks, atomic writes, manifests;
* img2dataset (in its own virtual environment, as it pins an old webdataset),
  ``--resize_mode no``, files output, the same thread count, no re-encoding;
* a plain sequential ``requests`` loop writing the files.

Prints images/s of each and the ratios. Run: ``python tests/bench/bench_crawl.py``
(``--users 30 --per-user 100`` by default, about 3,000 photos).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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
from pipeline.stages.crawl.stage import Network, Source, crawl  # noqa: E402
from pipeline.imageio import encode_jpeg, read_image  # noqa: E402

IMG2DATASET_VENV = ROOT / ".venv-img2dataset"


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


def run_pie(rest_url: str, nsids: list[str], per_user: int, workdir: Path, concurrency: int) -> tuple[float, int]:
    users_file = workdir / "users.txt"
    users_file.write_text("\n".join(nsids) + "\n")
    workspace = Workspace(workdir / "pie")
    options = CrawlOptions(num_users=len(nsids), per_user=per_user)
    network = Network("benchkey", "benchsecret", rest_url, calls_per_hour=1_000_000, concurrency=concurrency,
                      per_host=concurrency, min_side=256)
    started = time.perf_counter()
    summary = crawl(workspace, Source(users_file=users_file), options, network)
    elapsed = time.perf_counter() - started
    return elapsed, summary.statuses["ok"] + summary.statuses["rejected"]


def photo_urls(rest_url: str, nsids: list[str]) -> list[str]:
    urls = []
    for nsid in nsids:
        reply = requests.post(rest_url, data={"method": "flickr.people.getPublicPhotos", "user_id": nsid,
                                              "extras": "url_z", "per_page": 500, "format": "json",
                                              "nojsoncallback": 1, "api_key": "benchkey"}).json()
        urls += [photo["url_z"] for photo in reply["photos"]["photo"]]
    return urls


def run_sequential(urls: list[str], workdir: Path) -> tuple[float, int]:
    out = workdir / "sequential"
    out.mkdir()
    session = requests.Session()
    started = time.perf_counter()
    for index, url in enumerate(urls):
        response = session.get(url, timeout=15)
        response.raise_for_status()
        (out / f"{index}.jpg").write_bytes(response.content)
    return time.perf_counter() - started, len(urls)


def ensure_img2dataset() -> Path | None:
    python = IMG2DATASET_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(IMG2DATASET_VENV)], check=True)
        result = subprocess.run([str(IMG2DATASET_VENV / "bin" / "pip"), "install", "-q", "img2dataset"])
        if result.returncode != 0:
            return None
    return IMG2DATASET_VENV / "bin" / "img2dataset"


def run_img2dataset(binary: Path, urls: list[str], workdir: Path, concurrency: int) -> tuple[float, int]:
    url_list = workdir / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    out = workdir / "img2dataset"
    started = time.perf_counter()
    subprocess.run([str(binary), "--url_list", str(url_list), "--output_folder", str(out), "--input_format", "txt",
                    "--output_format", "files", "--resize_mode", "no", "--processes_count", "1",
                    "--thread_count", str(concurrency), "--disable_all_reencoding", "True", "--timeout", "15",
                    "--number_sample_per_shard", "100000", "--disallowed_header_directives", "[]",
                    "--enable_wandb", "False"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    stats = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return elapsed, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pie-bench-crawl-"))
    try:
        nsids = build_folder(workdir / "replay", args.users, args.per_user)
        process, rest_url = start_replay(workdir / "replay")
        try:
            urls = photo_urls(rest_url, nsids)
            for url in urls[:50]:  # warm the server's file cache equally for everyone
                requests.get(url, timeout=15)
            results = {"pie crawl": run_pie(rest_url, nsids, args.per_user, workdir, args.concurrency),
                       "sequential requests": run_sequential(urls, workdir)}
            binary = ensure_img2dataset()
            if binary is not None:
                results["img2dataset"] = run_img2dataset(binary, urls, workdir, args.concurrency)
            else:
                print("img2dataset could not be installed; its column is missing")
        finally:
            process.terminate()
            process.wait()
        print(f"{len(urls)} photos of 640 px from a loopback replay server, {args.concurrency} downloads in flight, "
              f"{os.cpu_count()} cores")
        rates = {name: count / seconds for name, (seconds, count) in results.items()}
        for name, (seconds, count) in results.items():
            print(f"  {name:22s} {count:6d} images in {seconds:7.2f} s = {rates[name]:8.1f} images/s")
        for baseline in ("img2dataset", "sequential requests"):
            if baseline in rates:
                print(f"  pie crawl / {baseline}: {rates['pie crawl'] / rates[baseline]:.2f}x")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
