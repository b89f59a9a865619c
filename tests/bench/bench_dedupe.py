"""Near-duplicate lookups/s of the crawl's duplicate index at 10^5 and 10^6 kept photos.

For each size the index (:class:`pipeline.stages.crawl.dedupe.DuplicateIndex`) is
filled with that many uniformly random 64-bit perceptual hashes, 1 in 50 of
them planted 0 to 4 bits from an earlier one (a re-encoded photo the crawl kept
under another user). Queries are the crawl's mix: mostly new photos (fresh
random hashes), 1 in 10 a near copy, 0 to 6 bits off a kept hash. One line per
size gives lookups/s of

* ``DuplicateIndex.find`` (multi-index hashing on 5 bands of 13/12 bits),
* a scan of every kept hash with ``numpy.bitwise_count``: what the index falls
  back to when the query's bands are shared by over a quarter of the kept
  hashes (its worst case), and
* the baseline, the linear scan the index used before: XOR against every kept
  hash and a popcount by ``numpy.unpackbits``, measured in the same run,

the ratio of the index to the baseline, whether the three gave the same
answers (each scan answers the first of the index's queries), and the fill time
per ``add``. About 10 s on two cores.

Run: ``python tests/bench/bench_dedupe.py``.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.stages.crawl.dedupe import NEAR_DUPLICATE_BITS, DuplicateIndex

SIZES = (100_000, 1_000_000)
PLANTED_EVERY = 50
NEAR_QUERY_EVERY = 10


def flip(value: int, bits: int, rng: np.random.Generator) -> int:
    """``value`` with ``bits`` distinct random bit positions inverted."""
    for position in rng.choice(64, size=bits, replace=False):
        value ^= 1 << int(position)
    return value


def kept_hashes(size: int, rng: np.random.Generator) -> list[int]:
    """``size`` random hashes, every ``PLANTED_EVERY``-th within 4 bits of an earlier one."""
    hashes = [int(value) for value in rng.integers(0, 2**64, size=size, dtype=np.uint64)]
    for number in range(PLANTED_EVERY, size, PLANTED_EVERY):
        hashes[number] = flip(hashes[int(rng.integers(number))], int(rng.integers(NEAR_DUPLICATE_BITS + 1)), rng)
    return hashes


def queries(hashes: list[int], count: int, rng: np.random.Generator) -> list[int]:
    """Fresh random hashes, every ``NEAR_QUERY_EVERY``-th 0 to 6 bits from a kept one."""
    fresh = [int(value) for value in rng.integers(0, 2**64, size=count, dtype=np.uint64)]
    return [flip(hashes[int(rng.integers(len(hashes)))], int(rng.integers(NEAR_DUPLICATE_BITS + 3)), rng)
            if number % NEAR_QUERY_EVERY == 0 else value for number, value in enumerate(fresh)]


def unpackbits_scan(hashes: np.ndarray, keys: list[str], key: str, phash: int) -> str | None:
    """Baseline: popcount of every kept hash XOR the query by unpacking bytes to bits."""
    xor = hashes ^ np.uint64(phash)
    distances = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    for index in np.flatnonzero(distances <= NEAR_DUPLICATE_BITS):
        if keys[index] != key:
            return f"near-duplicate: {int(distances[index])} bits from {keys[index]}"
    return None


def bitwise_count_scan(hashes: np.ndarray, keys: list[str], key: str, phash: int) -> str | None:
    """Every kept hash with ``numpy.bitwise_count``: the index's fallback for crowded bands."""
    distances = np.bitwise_count(hashes ^ np.uint64(phash))
    for index in np.flatnonzero(distances <= NEAR_DUPLICATE_BITS):
        if keys[index] != key:
            return f"near-duplicate: {int(distances[index])} bits from {keys[index]}"
    return None


def rate(lookup, phashes: list[int]) -> tuple[float, list[str | None]]:
    """Lookups/s of ``lookup(key, phash)`` over ``phashes``, and its answers."""
    started = time.perf_counter()
    answers = [lookup(f"new@N01/{number}", phash) for number, phash in enumerate(phashes)]
    return len(phashes) / (time.perf_counter() - started), answers


def main() -> None:
    rng = np.random.default_rng(0)
    for size in SIZES:
        hashes = kept_hashes(size, rng)
        keys = [f"{number % 5000}@N01/{number}" for number in range(size)]
        index = DuplicateIndex()
        started = time.perf_counter()
        for number, (key, phash) in enumerate(zip(keys, hashes)):
            index.add(key, f"{number:064x}", phash)
        fill = (time.perf_counter() - started) / size
        packed = np.array(hashes, dtype=np.uint64)
        asked = queries(hashes, 5000, rng)
        baseline_count = max(20, 5_000_000 // size)

        indexed, answers = rate(lambda key, phash: index.find(key, "new-photo-sha256", phash), asked)
        scanned, scan_answers = rate(lambda key, phash: bitwise_count_scan(packed, keys, key, phash),
                                     asked[:10 * baseline_count])
        baseline, baseline_answers = rate(lambda key, phash: unpackbits_scan(packed, keys, key, phash),
                                          asked[:baseline_count])
        same = answers[:len(scan_answers)] == scan_answers and answers[:baseline_count] == baseline_answers
        found = sum(answer is not None for answer in answers)
        print(f"{size:>9,} kept hashes: multi-index {indexed:,.0f} lookups/s, bitwise_count scan "
              f"{scanned:,.0f} lookups/s, unpackbits scan (baseline) {baseline:,.0f} lookups/s; "
              f"{indexed / baseline:,.0f}x the baseline; same answers: {'yes' if same else 'NO'} "
              f"({found} of {len(asked)} queries near a kept hash); add {1e6 * fill:.1f} us")


if __name__ == "__main__":
    main()
