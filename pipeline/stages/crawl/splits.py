"""Deterministic train / valid / valid_ref splits.

The paper holds out 10% of the Flickr users for evaluation; of each held-out
user, 20 photos are the reference set that conditions the model and the rest
are evaluated (notes/msm.md, "Evaluation protocol"). A user's split depends only
on its NSID, so it never changes when the crawl grows or resumes, and the
reference photos of a valid user are the ones with the smallest hash of their
id among its kept photos.
"""

from __future__ import annotations

import hashlib

VALID_FRACTION = 0.10
VALID_REFERENCES = 20


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def user_split(nsid: str, valid_fraction: float = VALID_FRACTION) -> str:
    """``"valid"`` for about ``valid_fraction`` of NSIDs, otherwise ``"train"``."""
    return "valid" if _unit_hash(f"pie-split/{nsid}") < valid_fraction else "train"


def reference_photos(nsid: str, photo_ids: list[str], count: int = VALID_REFERENCES) -> set[str]:
    """The ``count`` photos of a valid user used as its reference set."""
    ranked = sorted(photo_ids, key=lambda photo_id: (_unit_hash(f"pie-ref/{nsid}/{photo_id}"), photo_id))
    return set(ranked[:count])
