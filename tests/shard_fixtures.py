"""A small workspace with every kind of pair ``pie shard`` reads, written directly as records and files.

Three Flickr users (two ``train``, one ``valid`` with ``valid_ref`` photos),
each photo with a pseudo original (JPEG, or PNG for one user), and two rule
users with prepared originals, in the record formats of the crawl, degrade and
rules stages.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from manifests.licenses import lookup
from manifests.records import PHOTO_SCHEMA
from manifests.workspace import Workspace
from pipeline.imageio import encode_jpeg, encode_png

USERS = {"48600001@N01": "train", "48600002@N02": "train", "48600003@N03": "valid"}
PHOTOS_PER_USER = 5
RULES = ("cold-tone", "punch")
IMAGES = ("a0001", "a0002", "a0003")
MODEL = "0" * 64


def _picture(seed: int, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)


def _write(workspace: Workspace, path: Path, data: bytes) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"file": workspace.relative(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def photo_record(workspace: Workspace, nsid: str, photo_id: str, split: str, payload: bytes) -> dict:
    """An ``ok`` crawl record of a photo whose file holds ``payload``."""
    written = _write(workspace, workspace.flickr_photo(nsid, photo_id), payload)
    return {"schema": PHOTO_SCHEMA, "user": nsid, "photo_id": photo_id, "secret": "ab", "server": "1", "size": "z",
            "url": f"https://live.staticflickr.com/1/{photo_id}_ab_z.jpg",
            "page_url": f"https://www.flickr.com/photos/{nsid}/{photo_id}/", "license": lookup("4").as_record(),
            "owner_name": f"owner of {nsid}", "title": f"photo {photo_id}", "date_taken": None, **written,
            "width": 32, "height": 24, "status": "ok", "reason": None, "attempts": 1,
            "fetched_at": "2026-01-01T00:00:00+00:00", "split": split}


def degrade_record(workspace: Workspace, record: dict, payload: bytes, image_format: str = "jpeg",
                   model: str = MODEL) -> dict:
    """``record`` with a ``degraded`` entry whose pseudo original holds ``payload``."""
    suffix = ".png" if image_format == "png" else ".jpg"
    path = workspace.degraded_photo(record["user"], record["photo_id"], suffix)
    written = _write(workspace, path, payload)
    degraded = {"file": written["file"], "sha256": written["sha256"], "format": image_format, "model": model,
                "source_sha256": record["sha256"]}
    return {**record, "degraded": degraded}


def build_workspace(root: Path) -> Workspace:
    """The workspace described in the module docstring."""
    workspace = Workspace(root)
    seed = 0
    for user_index, (nsid, split) in enumerate(USERS.items()):
        records = []
        for photo in range(PHOTOS_PER_USER):
            seed += 1
            photo_id = str(5000 + 10 * user_index + photo)
            photo_split = "valid_ref" if split == "valid" and photo < 2 else split
            record = photo_record(workspace, nsid, photo_id, photo_split, encode_jpeg(_picture(seed)))
            image_format = "png" if user_index == 1 else "jpeg"
            pseudo = _picture(seed + 1000)
            payload = encode_png(pseudo) if image_format == "png" else encode_jpeg(pseudo)
            records += [record, degrade_record(workspace, record, payload, image_format)]
        workspace.flickr_manifest(nsid).append(records)
    for index, name in enumerate(IMAGES):
        prepared = _write(workspace, workspace.root / "fivek" / f"{name}.png", encode_png(_picture(100 + index)))
        for rule_index, rule in enumerate(RULES):
            output = _write(workspace, workspace.rule_output(rule, name), encode_png(_picture(200 + 10 * index
                                                                                               + rule_index)))
            workspace.rules_manifest(rule).append([{
                "schema": "pie.rule-output/1", "rule": rule, "kind": "preset", "reference": "", "parameters": {},
                "name": name, "source": f"/fivek/{name}.dng", "source_sha256": "1" * 64, "max_side": None,
                **output, "width": 32, "height": 24, "status": "ok", "reason": None, "seconds": 0.1,
                "created_at": "2026-01-01T00:00:00+00:00", "input_file": prepared["file"],
                "input_sha256": prepared["sha256"], "input_bytes": prepared["bytes"]}])
    return workspace


def total_pairs() -> int:
    """Pairs :func:`build_workspace` makes."""
    return len(USERS) * PHOTOS_PER_USER + len(RULES) * len(IMAGES)
