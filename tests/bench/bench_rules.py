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
4. Encodes the 25 outputs of one image as PNG at zlib levels 1, 2 and 3
   (level 3 was the stage's setting before level 1) and prints time and size
   per output against level 3, and the time to hash a written output (what
   deciding that a pair is done costs) against running the rules.
5. Runs the ``pie rules`` work (all 25 rules on ``--images`` originals of at
   most ``--side`` px, preparing them included) in this process, then as the
   stage on a local Dask cluster with one worker and with two, and prints
   seconds per image and per worker with the ratio to in-process (target:
   at most 1.3).

Run: ``python tests/bench/bench_rules.py [--images 8] [--side 512]``.
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
    """Wall time of the rules stage on a fresh local cluster of ``workers`` processes (startup excluded)."""
    from manifests.workspace import Workspace
    from pipeline.cluster import dask_client
    from pipeline.stages.rules import run_rules

    with dask_client(None, workers) as client:
        client.wait_for_workers(workers)
        started = time.perf_counter()
        summary = run_rules(Workspace(root), sources, rules, client=client)
        elapsed = time.perf_counter() - started
    assert summary.done["ok"] == len(sources) * len(rules), summary.line()
    return elapsed


def in_process_seconds(sources, rules, root):
    """Wall time of the same work as the stage's tasks (prepare, then every rule on each image) in this process."""
    from pipeline.stages.rules import prepare_original, run_image

    started = time.perf_counter()
    for source in sources:
        prepared = prepare_original(str(root), source, None)
        records = run_image(str(root), prepared, list(rules.values()))
        assert all(record["status"] == "ok" for record in records)
    return time.perf_counter() - started


def png_levels(rules, image, levels=(1, 2, 3), repeats=5):
    """Milliseconds (best of ``repeats``, levels interleaved) and mean bytes of each rule's output as PNG per level."""
    from pipeline.imageio import encode_png, float_to_uint8

    outputs = [float_to_uint8(rule(image)) for rule in rules.values()]
    best = {level: [float("inf")] * len(outputs) for level in levels}
    sizes = {level: [] for level in levels}
    for index, pixels in enumerate(outputs):
        for _ in range(repeats):
            for level in levels:  # interleaved, so a load change on the machine hits every level alike
                start = time.perf_counter()
                encode_png(pixels, level)
                best[level][index] = min(best[level][index], time.perf_counter() - start)
        for level in levels:
            sizes[level].append(len(encode_png(pixels, level)))
    return {level: (1000.0 * float(np.mean(best[level])), float(np.mean(sizes[level]))) for level in levels}, outputs


def hash_milliseconds(outputs, folder):
    """Median milliseconds to SHA-256 one written level-1 output file, as the done-ness check does."""
    from manifests.files import file_sha256
    from pipeline.imageio import encode_png

    path = Path(folder) / "output.png"
    times = []
    for pixels in outputs:
        path.write_bytes(encode_png(pixels, 1))
        start = time.perf_counter()
        file_sha256(path)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main():
    import argparse
    import tempfile

    from pipeline.stages.demo.run import prepare_originals
    from pipeline.stages.rules import find_sources

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="originals for the stage comparison")
    parser.add_argument("--side", type=int, default=512, help="longest side of those originals, px")
    args = parser.parse_args()

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

    levels, outputs = png_levels(rules, image)
    base_ms, base_bytes = levels[3]
    for level, (milliseconds, size) in levels.items():
        print(f"PNG zlib level {level}: {milliseconds:6.2f} ms, {size / 1024:6.0f} KiB per output "
              f"({milliseconds / base_ms:.2f} x the time, {size / base_bytes:.3f} x the bytes of level 3)")
    with tempfile.TemporaryDirectory(prefix="pie-bench-hash-") as folder:
        hashing = hash_milliseconds(outputs, folder)
    print(f"SHA-256 of one written output: {hashing:.2f} ms; all 25 of an image {25 * hashing:.1f} ms "
          f"against {total:.0f} ms to run the rules ({25 * hashing / total:.4f} x)")

    with tempfile.TemporaryDirectory(prefix="pie-bench-rules-") as folder:
        originals = Path(folder) / "originals"
        prepare_originals(originals, max_side=args.side)
        sources = find_sources(originals)[0][:args.images]
        local = in_process_seconds(sources, rules, Path(folder) / "local")
        one = dask_seconds(1, sources, rules, Path(folder) / "one")
        two = dask_seconds(2, sources, rules, Path(folder) / "two")
    count = len(sources)
    print(f"pie rules, {count} originals <= {args.side} px x {len(rules)} rules "
          f"({count * len(rules)} outputs), seconds per image per worker:")
    print(f"  in-process         {local / count:6.2f} s")
    for workers, elapsed in ((1, one), (2, two)):
        per_worker = elapsed * workers / count
        print(f"  {workers} Dask worker{'s' if workers > 1 else ' '}     {per_worker:6.2f} s "
              f"({elapsed / count:.2f} s per image), {per_worker / (local / count):.2f} x in-process "
              f"(target <= 1.3)")
    print(f"  speed-up 2 workers / 1: {one / two:.2f} x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
