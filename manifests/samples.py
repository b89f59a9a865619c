"""The WebDataset sample and shard index formats (DESIGN.md, "Records and layout").

A sample is one (input, target) pair. Its key is ``<nsid>/<photo_id>`` for a
Flickr user and ``rules-<RULE>/<name>`` for a rule-based pseudo-user; keys hold
no dots, because WebDataset splits a member name at the first dot of its last
path component. Members are ``input.<ext>``, ``target.<ext>`` (the files' own
bytes, extension from their content) and ``json``, the metadata built here.

``index.json`` beside the shards lists every shard and the totals; it is the
one document a reader, the audit and the trainer trust to say which shards
form the data set.
"""

from __future__ import annotations

from . import ids

SAMPLE_SCHEMA = "pie.sample/1"
SHARD_INDEX_SCHEMA = "pie.shard-index/1"

#: The splits shards are written for; ``valid_ref`` samples live in ``valid`` shards.
SHARD_SPLITS = ("train", "valid")

#: Leading bytes of the image formats a member may carry, and their extension.
IMAGE_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"II*\x00", "tif"), (b"MM\x00*", "tif"))


def rule_user(rule: str) -> str:
    """The pseudo-user name of a rule, e.g. ``rules-CLAHE``."""
    return f"rules-{ids.check_rule_name(rule)}"


def shard_split(split: str) -> str:
    """The shard split a record split belongs to: ``valid_ref`` pairs go with their ``valid`` user."""
    return "valid" if split in ("valid", "valid_ref") else "train"


def image_extension(data: bytes) -> str | None:
    """The file extension of encoded image bytes (``jpg``, ``png``, ``webp``, ``tif``), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, extension in IMAGE_MAGIC:
        if data.startswith(magic):
            return extension
    return None


def flickr_sample(record: dict) -> dict:
    """The ``json`` member of a Flickr pair from its latest photo record (with ``degraded``)."""
    return {
        "schema": SAMPLE_SCHEMA, "user": ids.check_nsid(record["user"]), "source": "flickr",
        "photo_id": ids.check_photo_id(record["photo_id"]), "name": None, "rule": None,
        "split": record["split"], "license": record.get("license"), "owner_name": record.get("owner_name", ""),
        "title": record.get("title", ""), "page_url": record.get("page_url"),
        "input_sha256": record["degraded"]["sha256"], "target_sha256": record["sha256"],
        "degrader": record["degraded"].get("model"),
    }


def rule_sample(record: dict) -> dict:
    """The ``json`` member of a rule pair from its latest rule record (with the prepared original)."""
    return {
        "schema": SAMPLE_SCHEMA, "user": rule_user(record["rule"]), "source": "rules", "photo_id": None,
        "name": ids.check_rule_name(record["name"]), "rule": record["rule"], "split": "train", "license": None,
        "owner_name": "", "title": "", "page_url": None, "input_sha256": record["input_sha256"],
        "target_sha256": record["sha256"], "degrader": None,
    }


def sample_key(meta: dict) -> str:
    """The WebDataset key of a sample from its ``json`` member."""
    if meta["source"] == "flickr":
        return f"{meta['user']}/{meta['photo_id']}"
    return f"{meta['user']}/{meta['name']}"
