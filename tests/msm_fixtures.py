"""Tiny shards with an index for the trainer tests, written directly with webdataset.

Each user retouches by a fixed colour transform of its own (a gain per channel
and a gamma), so a model can learn something; rule users are content
independent like the real ones. The layout follows ``pie shard``: users
contiguous, ``train`` and ``valid`` shards, ``index.json`` with per-user counts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset
from PIL import Image

HEIGHT, WIDTH = 40, 48

#: (user, split counts) per shard: train shards, then valid shards.
TRAIN_LAYOUT = [
    [("10000001@N01", 12), ("10000002@N01", 12)],
    [("10000003@N01", 12), ("10000004@N01", 3), ("rules-CLAHE", 8)],
    [("rules-warm-preset", 8)],
]
VALID_LAYOUT = [
    [("10000011@N01", {"valid_ref": 6, "valid": 3}), ("10000012@N01", {"valid_ref": 6, "valid": 3})],
]

#: The preset-like rule users, for step-1 validation.
PRESET_USERS = frozenset({"rules-warm-preset"})


def _look(user: str) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(sum(map(ord, user)))
    return rng.uniform(0.7, 1.3, 3), float(rng.uniform(0.6, 1.5))


def retouch(user: str, image: np.ndarray) -> np.ndarray:
    """The user's look applied to a uint8 RGB image."""
    gains, gamma = _look(user)
    out = np.clip((image / 255.0) ** gamma * gains, 0, 1)
    return np.round(out * 255).astype(np.uint8)


def _picture(rng: np.random.Generator) -> np.ndarray:
    """A smooth random picture: a colour gradient plus a few blobs."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] / max(HEIGHT, WIDTH)
    base = rng.uniform(0.1, 0.9, 3)
    slope = rng.uniform(-0.4, 0.4, (2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        image = image + blob[..., None] * rng.uniform(-0.3, 0.3, 3)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _meta(user: str, item: str, split: str) -> dict:
    rules = user.startswith("rules-")
    return {"schema": "pie.sample/1", "user": user, "source": "rules" if rules else "flickr",
            "photo_id": None if rules else item, "name": item if rules else None,
            "rule": user[len("rules-"):] if rules else None, "split": split,
            "license": None if rules else {"id": "4", "name": "CC BY 2.0", "url": "https://example.org"},
            "owner_name": "" if rules else "someone", "title": "", "page_url": None,
            "input_sha256": "0" * 64, "target_sha256": "1" * 64, "degrader": None}


def write_msm_shards(folder: Path, *, seed: int = 0, user_counts: bool = True) -> Path:
    """Write the train and valid shards and ``index.json`` into ``folder``; returns the index path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    item = 1000
    layouts = [("train", layout) for layout in TRAIN_LAYOUT] + [("valid", layout) for layout in VALID_LAYOUT]
    numbers = {"train": 0, "valid": 0}
    for split, users in layouts:
        name = f"{split}-{numbers[split]:06d}.tar"
        numbers[split] += 1
        counts: dict[str, int] = {}
        with webdataset.TarWriter(str(folder / name), encoder=False) as tar:
            for user, spec in users:
                splits = spec if isinstance(spec, dict) else {"train": spec}
                for pair_split, count in splits.items():
                    for _ in range(count):
                        item += 1
                        source = _picture(rng)
                        target = retouch(user, source)
                        rules = user.startswith("rules-")
                        key = f"{user}/a{item}" if rules else f"{user}/{item}"
                        encode = _png if rules else _jpeg
                        tar.write({"__key__": key, ("input.png" if rules else "input.jpg"): encode(source),
                                   ("target.png" if rules else "target.jpg"): encode(target),
                                   "json": json.dumps(_meta(user, key.split("/")[1], pair_split)).encode()})
                        counts[user] = counts.get(user, 0) + 1
        entry = {"name": name, "split": split, "samples": sum(counts.values()), "users": list(counts),
                 "bytes": (folder / name).stat().st_size, "sha256": "0" * 64}
        if user_counts:
            entry["user_samples"] = counts
        shards.append(entry)
    index = folder / "index.json"
    index.write_text(json.dumps({"schema": "pie.shard-index/1", "shards": shards}), encoding="utf-8")
    return index
