"""Speed of the rule-based pseudo-users on one core, and LIME against a straightforward solver.

1. Times each of the 25 pseudo-users (``rules.registry.builtin_rules``: ten
   conventional methods and fifteen presets) on a real 512 x 341 photograph
   (scikit-image's ``coffee``), one thread, median of a few runs, and prints
   the totals against the 10 s budget.
2. Times ``rules.lime.lime`` beside a straightforward implementation of the
   same model written here: the approach of the well-known public Python port
   of LIME, i.e. the sparse matrix assembled entry by entry in Python loops
   over pixels, then a direct sparse solve.  Both use the same weights, so the
   comparison isolates assembly and solve; it prints both times, the speed-up
   and the PSNR between the two outputs.
3. Times ``rules.jiep.jiep`` with its conjugate-gradient solves beside the
   same method with every linear system solved exactly (sparse LU), and
   prints both times, their ratio and the PSNR between the two outputs.
4. Runs the ``pie rules`` stage (all 25 rules on eight 512-px originals) on a
   local Dask cluster with one worker, then with two, and prints the speed-up.

Run: ``python tests/bench/bench_rules.py``.
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

from rules.jiep import jiep  # noqa: E402
from rules.lime import lime, lime_weights  # noqa: E402
from rules.registry import builtin_rules  # noqa: E402

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


def dask_seconds(workers, sources, rules, root):
    """Wall time of the rules stage on a fresh local cluster of ``workers`` processes."""
    from manifests.workspace import Workspace
    from pipeline.cluster import dask_client
    from pipeline.stages.rules import run_rules

    with dask_client(None, workers) as client:
        started = time.perf_counter()
        summary = run_rules(Workspace(root), sources, rules, client=client)
        elapsed = time.perf_counter() - started
    assert summary.done["ok"] == len(sources) * len(rules), summary.line()
    return elapsed


def main():
    import tempfile

    from pipeline.stages.demo.run import prepare_originals
    from pipeline.stages.rules import find_sources

    cv2.setNumThreads(1)
    image = benchmark_image()
    print(f"input: coffee {image.shape[1]}x{image.shape[0]}, 1 thread, median of 3 runs")

    rules = builtin_rules()
    timings = time_rules(rules, image)
    for name, milliseconds in timings.items():
        print(f"  {rules[name].kind:<6s} {name:<16s} {milliseconds:8.1f} ms")
    methods = sum(ms for name, ms in timings.items() if rules[name].kind == "method")
    total = sum(timings.values())
    print(f"ten methods: {methods / 1000:.2f} s; all 25 rules: {total / 1000:.2f} s, "
          f"{total / 1000 / BUDGET_SECONDS:.2f} x the {BUDGET_SECONDS:.0f} s budget")

    fast = median_seconds(lime, image)
    slow = median_seconds(straightforward_lime, image, repeats=1)
    print(f"LIME (vectorised assembly + DCT-preconditioned CG): {1000 * fast:8.1f} ms")
    print(f"LIME (Python-loop assembly + direct spsolve):       {1000 * slow:8.1f} ms")
    print(f"speed-up: {slow / fast:.1f} x, PSNR between outputs: "
          f"{psnr(lime(image), straightforward_lime(image)):.1f} dB")

    iterative = median_seconds(jiep, image)
    start = time.perf_counter()
    exact_output = jiep(image, solver="direct")
    exact = time.perf_counter() - start
    print(f"JieP (warm-started PCG, rtol 1e-4): {1000 * iterative:8.1f} ms")
    print(f"JieP (sparse LU of every system):   {1000 * exact:8.1f} ms")
    print(f"LU / PCG time: {exact / iterative:.1f} x, PSNR between outputs: "
          f"{psnr(jiep(image), exact_output):.1f} dB")

    with tempfile.TemporaryDirectory(prefix="pie-bench-rules-") as folder:
        originals = Path(folder) / "originals"
        prepare_originals(originals, max_side=512)
        sources = find_sources(originals)[0][:8]
        one = dask_seconds(1, sources, rules, Path(folder) / "one")
        two = dask_seconds(2, sources, rules, Path(folder) / "two")
    pairs = len(sources) * len(rules)
    print(f"pie rules stage, {pairs} (image, rule) tasks: 1 worker {one:.1f} s ({pairs / one:.2f} tasks/s), "
          f"2 workers {two:.1f} s ({pairs / two:.2f} tasks/s); speed-up {one / two:.2f} x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
