"""Exact and near-duplicate detection across the whole crawl.

Exact duplicates share a SHA-256 of their bytes. Near duplicates (the same
photo re-encoded or resized) share a 64-bit perceptual hash (DCT pHash,
``imagehash.phash``) up to a small Hamming distance. Lookups compare a new hash
against every kept one at once with vectorised XOR and popcount.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import imagehash
import numpy as np
from PIL import Image

#: Hamming distance (of 64 bits) at or below which two photos are near duplicates.
NEAR_DUPLICATE_BITS = 4


def perceptual_hash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash (``imagehash.phash``) of an HxWx3 uint8 image.

    The image is first reduced to 64x64 with OpenCV's area filter, which
    ``phash`` would otherwise do with a much slower Lanczos resize of the full
    image; the hash itself (32x32 DCT, 8x8 low frequencies against their median)
    is imagehash's.
    """
    small = cv2.resize(pixels, (64, 64), interpolation=cv2.INTER_AREA)
    bits = imagehash.phash(Image.fromarray(small)).hash.flatten()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def _popcount64(values: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


@dataclass
class DuplicateIndex:
    """Kept photos by content: SHA-256 and perceptual hash to ``"<nsid>/<photo_id>"``."""

    max_distance: int = NEAR_DUPLICATE_BITS
    _by_sha: dict[str, str] = field(default_factory=dict)
    _keys: list[str] = field(default_factory=list)
    _hashes: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, sha256: str, phash: int | None) -> None:
        """Remember a kept photo."""
        self._by_sha.setdefault(sha256, key)
        if phash is None:
            return
        if len(self._keys) == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[len(self._keys)] = np.uint64(phash)
        self._keys.append(key)

    def find(self, key: str, sha256: str, phash: int | None) -> str | None:
        """A reason naming the kept photo this one duplicates, or None."""
        other = self._by_sha.get(sha256)
        if other is not None and other != key:
            return f"duplicate: same bytes as {other}"
        if phash is None or not self._keys:
            return None
        distances = _popcount64(self._hashes[: len(self._keys)] ^ np.uint64(phash))
        for index in np.flatnonzero(distances <= self.max_distance):
            if self._keys[index] != key:
                return f"near-duplicate: {int(distances[index])} bits from {self._keys[index]}"
        return None
