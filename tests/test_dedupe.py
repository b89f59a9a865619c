"""The duplicate index against a straightforward linear scan over every kept photo."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.crawl.dedupe import NEAR_DUPLICATE_BITS, DuplicateIndex


class LinearReference:
    """Every kept photo in a list; each lookup scans all of them in the order they were added."""

    def __init__(self, max_distance: int):
        self.max_distance = max_distance
        self.keys: list[str] = []
        self.shas: list[str] = []
        self.hashes: list[int | None] = []

    def __len__(self) -> int:
        return sum(phash is not None for phash in self.hashes)

    def add(self, key: str, sha256: str, phash: int | None) -> None:
        self.keys.append(key)
        self.shas.append(sha256)
        self.hashes.append(phash)

    def find(self, key: str, sha256: str, phash: int | None) -> str | None:
        if sha256 in self.shas and self.keys[self.shas.index(sha256)] != key:
            return f"duplicate: same bytes as {self.keys[self.shas.index(sha256)]}"
        if phash is None:
            return None
        for kept_key, kept_hash in zip(self.keys, self.hashes):
            if kept_hash is not None and kept_key != key:
                distance = (kept_hash ^ phash).bit_count()
                if distance <= self.max_distance:
                    return f"near-duplicate: {distance} bits from {kept_key}"
        return None


def flip(value: int, bits: int, rng: np.random.Generator) -> int:
    """``value`` with ``bits`` distinct random bit positions inverted."""
    for position in rng.choice(64, size=bits, replace=False):
        value ^= 1 << int(position)
    return value


def random_hashes(rng: np.random.Generator, count: int, kind: str) -> list[int]:
    """64-bit hashes: ``uniform``; ``clustered`` (a few scenes, each photo a few bits off its
    scene, so bands repeat); or ``shared-band`` (the top 32 bits the same for all)."""
    uniform = [int(value) for value in rng.integers(0, 2**64, size=count, dtype=np.uint64)]
    if kind == "uniform":
        return uniform
    if kind == "shared-band":
        return [0xDEADBEEF_00000000 | (value & 0xFFFFFFFF) for value in uniform]
    scenes = uniform[:40]
    return [flip(scenes[int(rng.integers(len(scenes)))], int(rng.integers(0, 12)), rng) for _ in range(count)]


@pytest.mark.parametrize("kind", ["uniform", "clustered", "shared-band"])
@pytest.mark.parametrize("max_distance", [0, 1, NEAR_DUPLICATE_BITS, 7])
def test_same_answers_as_the_linear_scan(kind, max_distance):
    rng = np.random.default_rng(max_distance * 10 + len(kind))
    index, reference = DuplicateIndex(max_distance=max_distance), LinearReference(max_distance)
    hashes = random_hashes(rng, 2000, kind)
    for number, phash in enumerate(hashes):
        entry = (f"{number % 97}@N01/{number}", f"{number:064x}", phash)
        index.add(*entry)
        reference.add(*entry)
    # Copies of a kept hash, the first under a key queried below: which copy is named
    # depends on the order they were added in.
    base = hashes[5]
    for copy in range(4):
        entry = ("5@N01/5" if copy == 0 else f"copy/{copy}", f"copy{copy:060x}", base)
        index.add(*entry)
        reference.add(*entry)
    # The crawler's pattern: look up, then keep what is not a duplicate.
    for number in range(300):
        phash = flip(hashes[int(rng.integers(len(hashes)))], int(rng.integers(0, max_distance + 3)), rng)
        entry = (f"new@N01/{number}", f"new{number:061x}", phash)
        expected = reference.find(*entry)
        assert index.find(*entry) == expected
        if expected is None:
            index.add(*entry)
            reference.add(*entry)
    assert len(index) == len(reference)

    queries = []
    for number in range(600):
        source = int(rng.integers(len(hashes)))
        distance = number % (max_distance + 3)  # 0 .. max_distance + 2 bits from a kept hash
        queries.append((f"q@N01/{number}", f"q{number:063x}", flip(hashes[source], distance, rng)))
        queries.append((f"{source % 97}@N01/{source}", f"s{number:063x}", flip(hashes[source], distance, rng)))
    queries += [(f"r@N01/{number}", f"r{number:063x}", phash)
                for number, phash in enumerate(random_hashes(rng, 200, kind))]
    queries += [("other@N01/1", f"{7:064x}", hashes[7]), ("7@N01/7", f"{7:064x}", hashes[7]),
                ("other@N01/2", f"{8:064x}", None), ("8@N01/8", f"{8:064x}", None),
                ("5@N01/5", "z" * 64, base), ("5@N01/5", "z" * 64, flip(base, 1, rng)),
                ("q@N01/x", "z" * 64, 0), ("q@N01/y", "z" * 64, 2**64 - 1)]
    answers = [index.find(*query) for query in queries]
    assert answers == [reference.find(*query) for query in queries]
    assert sum(answer is not None and answer.startswith("near-duplicate: 0 bits") for answer in answers) > 10
    assert any(answer is not None and answer.startswith("duplicate:") for answer in answers)


def test_the_earliest_kept_photo_under_another_key_is_named():
    rng = np.random.default_rng(2)
    index = DuplicateIndex()
    for number, phash in enumerate(random_hashes(rng, 1000, "uniform")):
        index.add(f"k/{number}", f"{number:064x}", phash)
    base = int(rng.integers(0, 2**64, dtype=np.uint64))
    index.add("query/1", "q" * 64, base)
    index.add("first/1", "f" * 64, flip(base, 3, rng))
    index.add("closer/1", "c" * 64, base)
    assert index.find("query/1", "n" * 64, base) == "near-duplicate: 3 bits from first/1"
    assert index.find("other/1", "n" * 64, base) == "near-duplicate: 0 bits from query/1"


def test_every_distance_up_to_the_limit_is_found_and_beyond_it_is_not():
    rng = np.random.default_rng(1)
    index = DuplicateIndex()
    kept = random_hashes(rng, 2000, "uniform")
    for number, phash in enumerate(kept):
        index.add(f"k/{number}", f"{number:064x}", phash)
    for distance in range(NEAR_DUPLICATE_BITS + 3):
        for number in range(0, 2000, 50):
            reason = index.find("new/1", "n" * 64, flip(kept[number], distance, rng))
            if distance <= NEAR_DUPLICATE_BITS:
                assert reason == f"near-duplicate: {distance} bits from k/{number}"
            else:
                assert reason is None or not reason.endswith(f" from k/{number}")


def test_empty_index_and_missing_hashes():
    index = DuplicateIndex()
    assert len(index) == 0
    assert index.find("1@N01/1", "a" * 64, 0) is None
    assert index.find("1@N01/1", "a" * 64, None) is None
    index.add("1@N01/1", "a" * 64, None)  # kept, but without a perceptual hash
    assert len(index) == 0
    assert index.find("2@N01/2", "a" * 64, None) == "duplicate: same bytes as 1@N01/1"
    assert index.find("2@N01/2", "b" * 64, 0) is None
    index.add("3@N01/3", "c" * 64, 2**64 - 1)
    assert index.find("2@N01/2", "b" * 64, None) is None
    assert index.find("2@N01/2", "b" * 64, 2**64 - 1 - 8) == "near-duplicate: 1 bits from 3@N01/3"
    assert index.find("3@N01/3", "c" * 64, 2**64 - 1) is None


@pytest.mark.parametrize("max_distance", [-1, 64])
def test_distance_limit_outside_the_64_bits_is_refused(max_distance):
    with pytest.raises(ValueError, match="0 to 63 bits"):
        DuplicateIndex(max_distance=max_distance)


def test_reduced_hash_has_the_bits_of_imagehash_phash():
    """The 8x8 low-frequency DCT taken as two matrix products gives imagehash's pHash bit for bit."""
    import imagehash
    from PIL import Image
    from skimage import data

    from pipeline.stages.crawl.dedupe import reduced_hash

    rng = np.random.default_rng(4)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.camera()]
    images = [Image.fromarray(rng.integers(0, 256, (rng.integers(32, 90), rng.integers(32, 90), 3), dtype=np.uint8))
              for _ in range(40)]
    images += [Image.fromarray(photo).resize((80, 60)) for photo in photos]
    for image in images:
        expected = int(np.packbits(imagehash.phash(image).hash.flatten().astype(np.uint8)).view(">u8")[0])
        assert reduced_hash(image) == expected
