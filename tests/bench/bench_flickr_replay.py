"""Throughput of the Flickr replay server over keep-alive HTTP on 127.0.0.1.

Figures (each with a baseline measured in the same run):

* ``flickr.people.getPublicPhotos`` with the crawler's extras, 500 photos a
  page, in calls/s, against ``flickr.test.echo`` calls/s;
* ``url_z`` downloads: first fetch (LANCZOS resize + JPEG encode) against the
  repeat fetch from the LRU cache, images/s;
* ``url_o`` downloads (stored bytes), images/s.

Run: ``python tests/bench/bench_flickr_replay.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image
from skimage import data

from pipeline.replay.server import ReplayServer
from pipeline.replay.corpus import SIZES_BY_EXTRA

USER = "12345678@N01"
PHOTOS = 120
EXTRAS = "url_z,url_c,url_l,url_o,o_dims,license,owner_name,date_taken,tags,media,original_format"


def build_folder(root: Path) -> None:
    """PHOTOS real photographs at 1024 px on the longest edge, for one user."""
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    folder = root / USER
    folder.mkdir()
    for index in range(PHOTOS):
        picture = Image.fromarray(sources[index % len(sources)])
        scale = 1024 / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
        picture.save(folder / f"{1000 + index}.jpg", quality=90)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(function, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return rate(repeats, time.perf_counter() - start)


def main() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    with tempfile.TemporaryDirectory() as tmp:
        build_folder(Path(tmp))
        with ReplayServer(tmp) as server, requests.Session() as session:
            form = {"format": "json", "nojsoncallback": "1"}
            echo = timed(lambda: session.post(server.rest_url, data={**form, "method": "flickr.test.echo"}), 200)
            listing = timed(lambda: session.post(server.rest_url, data={
                **form, "method": "flickr.people.getPublicPhotos", "user_id": USER, "per_page": "500",
                "extras": EXTRAS}).content, 50)
            print(f"getPublicPhotos ({PHOTOS} photos, {len(EXTRAS.split(','))} extras): {listing:.1f} calls/s; "
                  f"test.echo baseline {echo:.1f} calls/s; ratio {listing / echo:.2f}")

            photos = list(server.corpus.photos.values())
            z_urls = [server.api.image_url(photo, SIZES_BY_EXTRA["z"]) for photo in photos]
            o_urls = [server.api.image_url(photo, SIZES_BY_EXTRA["o"]) for photo in photos]
            start = time.perf_counter()
            for url in z_urls:
                session.get(url).content
            rendered = rate(len(z_urls), time.perf_counter() - start)
            start = time.perf_counter()
            for url in z_urls:
                session.get(url).content
            cached = rate(len(z_urls), time.perf_counter() - start)
            start = time.perf_counter()
            for url in o_urls:
                session.get(url).content
            originals = rate(len(o_urls), time.perf_counter() - start)
            print(f"url_z from cache: {cached:.1f} images/s; first fetch (resize) baseline {rendered:.1f} images/s; "
                  f"ratio {cached / rendered:.2f}")
            print(f"url_o (stored bytes): {originals:.1f} images/s; ratio to first url_z fetch "
                  f"{originals / rendered:.2f}")


if __name__ == "__main__":
    main()
