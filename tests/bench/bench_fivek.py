"""Speed of ``pie fivek``'s decoding: a camera raw DNG developed by LibRaw, a ProPhoto TIFF through littleCMS.

1. Develops a DNG (an RGGB mosaic of scikit-image's ``astronaut`` photograph
   enlarged to the chosen size, written as the tests write theirs) with
   :func:`pipeline.stages.fivek.decode.decode_original`, and decodes the same
   picture as a 16-bit TIFF with :func:`pipeline.imageio.decode_image` (what
   ``pie rules`` read before DNGs were accepted) as the baseline; prints both
   in megapixels a second, their ratio, and the hours for FiveK's 5,000
   originals (about 12 MP each) on one core.
2. Converts the picture as a 16-bit ProPhoto RGB TIFF with its ICC profile to
   sRGB, against decoding the same TIFF without a profile, and prints the ratio:
   the cost of the colour conversion.

One thread; median of a few runs after a warm-up. Run:
``python tests/bench/bench_fivek.py [--side 3000]`` (long side in pixels).
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import tifffile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.imageio import decode_image  # noqa: E402
from pipeline.stages.fivek.decode import decode_original  # noqa: E402
from test_fivek import dng_bytes, prophoto_icc  # noqa: E402

FIVEK_IMAGES = 5000
FIVEK_MEGAPIXELS = 12.0


def median_seconds(function, repeats=3):
    """Median wall time of ``function()`` over ``repeats`` runs, after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def picture(side):
    """``astronaut`` at ``side`` x ``side * 2 / 3`` (even), float64 RGB in [0, 1]."""
    height = (side * 2 // 3) // 2 * 2
    rgb = cv2.resize(skimage.data.astronaut(), (side // 2 * 2, height), interpolation=cv2.INTER_CUBIC)
    return rgb.astype(np.float64) / 255.0


def tiff_bytes(rgb, icc=None):
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.round(rgb * 65535).astype(np.uint16), photometric="rgb", iccprofile=icc)
    return buffer.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000, help="long side of the test picture, pixels")
    side = parser.parse_args().side
    rgb = picture(side)
    megapixels = rgb.shape[0] * rgb.shape[1] / 1e6
    cv2.setNumThreads(1)

    dng, plain, tagged = dng_bytes(rgb ** 2.2), tiff_bytes(rgb), tiff_bytes(rgb, prophoto_icc())
    raw_s = median_seconds(lambda: decode_original(dng, "bench.dng"))
    tiff_s = median_seconds(lambda: decode_image(plain, "bench.tif").as_float())
    print(f"picture {rgb.shape[1]}x{rgb.shape[0]} ({megapixels:.1f} MP), one thread")
    print(f"DNG developed by LibRaw:      {raw_s:7.3f} s  {megapixels / raw_s:6.2f} MP/s")
    print(f"16-bit TIFF decoded (base):   {tiff_s:7.3f} s  {megapixels / tiff_s:6.2f} MP/s")
    print(f"DNG / TIFF time ratio:        {raw_s / tiff_s:7.2f}x")
    hours = FIVEK_IMAGES * FIVEK_MEGAPIXELS / (megapixels / raw_s) / 3600
    print(f"FiveK's {FIVEK_IMAGES} originals of ~{FIVEK_MEGAPIXELS:.0f} MP: about {hours:.1f} core-hours to develop")

    icc_s = median_seconds(lambda: decode_original(tagged, "bench.tif"))
    untagged_s = median_seconds(lambda: decode_original(plain, "bench.tif"))
    print(f"ProPhoto TIFF to sRGB (ICC):  {icc_s:7.3f} s  {megapixels / icc_s:6.2f} MP/s")
    print(f"same TIFF, no profile (base): {untagged_s:7.3f} s  {megapixels / untagged_s:6.2f} MP/s")
    print(f"ICC / no-profile time ratio:  {icc_s / untagged_s:7.2f}x")


if __name__ == "__main__":
    main()
