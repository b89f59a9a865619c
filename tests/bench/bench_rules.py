"""Speed of the rule-based pseudo-users on one core, and LIME against a straightforward solver.

1. Times each of the ten conventional methods (``rules.conventional.METHODS``)
   on a real 512 x 341 photograph (scikit-image's ``coffee``), one thread,
   median of a few runs, and prints the total against the 10 s budget.
2. Times ``rules.lime.lime`` beside a straightforward implementation of the
   same model written here: the approach of the well-known public Python port
   of LIME, i.e. the sparse matrix assembled entry by entry in Python loops
   over pixels, then a direct sparse solve.  Both use the same weights, so the
   comparison isolates assembly and solve; it prints both times, the speed-up
   and the PSNR between the two outputs.

Run: ``python tests/bench/bench_rules.py``.  :func:`time_rules` takes any
``{name: function}`` mapping, so presets or other rules can be timed alike.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402
import skimage.data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rules.conventional import METHODS  # noqa: E402
from rules.lime import lime, lime_weights  # noqa: E402

BUDGET_SECONDS = 10.0


def benchmark_image(width=512, height=341):
    """scikit-image's ``coffee`` photograph resized to ``width x height``, float32 RGB."""
    rgb = cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_AREA)
    return rgb.astype(np.float32) / 255.0


def median_seconds(function, image, repeats=3):
    """Median wall time of ``function(image)`` over ``repeats`` runs, after one warm-up."""
    function(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_rules(rules, image, repeats=3):
    """Median milliseconds of each rule on ``image``.

    Parameters
    ----------
    rules : dict of str to callable
        ``{name: function(image) -> image}``.
    image : numpy.ndarray
        float32 RGB input.
    repeats : int, optional
        Timed runs per rule.

    Returns
    -------
    dict of str to float
        Milliseconds per rule, in the order given.
    """
    return {name: 1000.0 * median_seconds(function, image, repeats)
            for name, function in rules.items()}


def straightforward_lime(image, *, gamma=0.7, lam=0.15, sigma=2.0, eps=1e-3):
    """LIME with the system built in Python loops over pixels and solved directly (baseline)."""
    t_hat = image.max(axis=2).astype(np.float64)
    wx, wy = lime_weights(t_hat, sigma=sigma, eps=eps)
    height, width = t_hat.shape
    rows, cols, data = [], [], []
    for p in range(height * width):
        i, j = divmod(p, width)
        diagonal = 1.0
        for k, l, weight in ((i - 1, j, wy[i - 1, j] if i > 0 else 0.0), (i + 1, j, wy[i, j]),
                             (i, j - 1, wx[i, j - 1] if j > 0 else 0.0), (i, j + 1, wx[i, j])):
            if 0 <= k < height and 0 <= l < width:
                rows.append(p)
                cols.append(k * width + l)
                data.append(-lam * weight)
                diagonal += lam * weight
        rows.append(p)
        cols.append(p)
        data.append(diagonal)
    matrix = sp.csc_matrix((data, (rows, cols)), shape=(height * width, height * width))
    illumination = spla.spsolve(matrix, t_hat.ravel()).reshape(height, width)
    illumination = np.clip(illumination, 0.0, 1.0) ** gamma
    return np.clip(image / np.maximum(illumination, eps)[..., None], 0.0, 1.0).astype(np.float32)


def psnr(first, second):
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    mse = float(np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def main():
    cv2.setNumThreads(1)
    image = benchmark_image()
    print(f"input: coffee {image.shape[1]}x{image.shape[0]}, 1 thread, median of 3 runs")

    timings = time_rules({name: method.function for name, method in METHODS.items()}, image)
    total = sum(timings.values())
    for name, milliseconds in timings.items():
        print(f"  {name:<11s} {milliseconds:8.1f} ms")
    print(f"ten methods: {total / 1000:.2f} s, "
          f"{total / 1000 / BUDGET_SECONDS:.2f} x the {BUDGET_SECONDS:.0f} s budget")

    fast = median_seconds(lime, image)
    slow = median_seconds(straightforward_lime, image, repeats=1)
    print(f"LIME (vectorised assembly + DCT-preconditioned CG): {1000 * fast:8.1f} ms")
    print(f"LIME (Python-loop assembly + direct spsolve):       {1000 * slow:8.1f} ms")
    print(f"speed-up: {slow / fast:.1f} x, PSNR between outputs: "
          f"{psnr(lime(image), straightforward_lime(image)):.1f} dB")


if __name__ == "__main__":
    main()
