"""Speed of the develop engine on the fifteen built-in presets.

Figures (each with a baseline measured in the same run), on scikit-image's
astronaut photograph resized to 512x512 (the size the paper trains at):

* milliseconds per picture for each preset, and for all fifteen in a row
  (pictures/s), against the sRGB decode + encode round trip of the same
  picture, the least per-pixel work any develop does;
* reading the fifteen XMP presets (presets/s) against parsing the same bytes
  with defusedxml alone;
* what keeping highlights and colours inside the gamut costs: exposure with
  its highlight shoulder against the plain gain, and vibrance/saturation
  with chroma compressed toward luma against plain chroma scaling.

Run: ``python tests/bench/bench_presets.py``.
"""

from __future__ import annotations

import time
from importlib import resources

import cv2
import defusedxml.ElementTree as SafeElementTree
import numpy as np
from skimage import data

from rules.develop.color import apply_vibrance_saturation
from rules.develop.engine import develop
from rules.develop.maths import linear_to_srgb, luma, srgb_to_linear
from rules.develop.tone import apply_exposure
from rules.develop.preset import builtin_presets

SIZE = 512
REPEATS = 5


def seconds_per_call(function, repeats: int = REPEATS) -> float:
    """Best of ``repeats`` timings of ``function()`` after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    picture = cv2.resize(data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    picture = picture.astype(np.float32) / 255.0
    presets = builtin_presets()

    baseline = seconds_per_call(lambda: linear_to_srgb(srgb_to_linear(picture)))
    print(f"baseline sRGB round trip {SIZE}x{SIZE}: {1000 * baseline:.2f} ms")
    total = 0.0
    for name, preset in presets.items():
        elapsed = seconds_per_call(lambda settings=preset.settings: develop(picture, settings))
        total += elapsed
        print(f"{name:18s} {1000 * elapsed:8.2f} ms  ({elapsed / baseline:5.1f}x baseline)")
    print(f"all {len(presets)} presets: {len(presets) / total:.1f} pictures/s, "
          f"{total / len(presets) / baseline:.1f}x baseline per picture")

    folder = resources.files("rules") / "presets"
    blobs = [entry.read_bytes() for entry in folder.iterdir() if entry.name.endswith(".xmp")]
    parse_only = seconds_per_call(
        lambda: [SafeElementTree.fromstring(blob, forbid_dtd=True) for blob in blobs])
    reading = seconds_per_call(builtin_presets)
    print(f"read {len(blobs)} XMP presets: {len(blobs) / reading:.0f} presets/s "
          f"({reading / parse_only:.1f}x defusedxml parsing alone, "
          f"{len(blobs) / parse_only:.0f} presets/s)")

    linear = srgb_to_linear(picture)
    shoulder = seconds_per_call(lambda: apply_exposure(linear, 0.6))
    gain = seconds_per_call(lambda: (linear * np.float32(2.0**0.6)).astype(np.float32))
    print(f"exposure +0.6 with highlight shoulder: {1000 * shoulder:.2f} ms "
          f"({shoulder / gain:.1f}x the plain gain, {1000 * gain:.2f} ms)")

    def plain_saturation():
        y = luma(picture)[..., None]
        return (y + np.float32(1.15) * (picture - y)).astype(np.float32)

    compressed = seconds_per_call(lambda: apply_vibrance_saturation(picture, 0.0, 15.0))
    plain = seconds_per_call(plain_saturation)
    print(f"saturation +15 compressed to the gamut: {1000 * compressed:.2f} ms "
          f"({compressed / plain:.1f}x plain chroma scaling, {1000 * plain:.2f} ms)")


if __name__ == "__main__":
    main()
