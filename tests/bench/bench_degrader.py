"""Benchmark of DSN inference (degrader/): compute per pixel and images per second.

Prints the multiply-accumulates per pixel of each configuration, then, for a
small configuration and the paper's, the throughput at Flickr's 640x427 of

* the baseline: an unbatched float32 loop calling the network once per image
  (as MSM's ``data/degrade.py`` does; on CUDA its convolutions use TF32, as
  PyTorch's cuDNN default allows), and
* ``degrader.infer.degrade_batch`` with batches of ``--batch`` images
  (channels-last; bfloat16 autocast on CUDA),

measured in the same run, with their ratio. On CUDA it also prints the achieved
multiply-accumulate rate as a fraction of the card's dense bfloat16 peak (from
a table of known cards, or ``--peak-tflops``). The paper configuration needs
about 3.2 TMAC per 640x427 image, so on the CPU it is timed at a smaller size
(``--paper-cpu-size``, default 160x107) and the 640x427 rate is scaled from it
by pixel count; every line says which device and size gave it.

Then ``pie degrade`` itself (:func:`pipeline.stages.degrade.run_degrade`) on a
workspace of ``--stage-photos`` crawled 640x427 JPEGs with a ``--stage-config``
DSN (tiny by default): in-process on the CPU (torch's own threads, all cores),
then on a local Dask cluster of 1 and of 2 one-thread workers. Each line gives
images/s for the whole run (cluster start included) and after the first batch
is back, the cluster's rate against in-process, also per worker, and for 2
workers the scaling from 1.

Usage: ``python tests/bench/bench_degrader.py [--batch 4] [--peak-tflops 989] [--stage-photos 32]``
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from degrader.dsn import DSN, DSNConfig, macs_per_pixel
from degrader.infer import degrade_batch
from degrader.train import CHECKPOINT_FORMAT, save_checkpoint
from manifests.licenses import lookup
from manifests.records import PHOTO_SCHEMA
from manifests.workspace import Workspace
from pipeline.cluster import dask_client
from pipeline.imageio import encode_jpeg
from pipeline.stages.degrade import run_degrade

FLICKR_SIZE = (640, 427)  # width, height of a landscape Flickr "url_z" photo
# Dense bfloat16 tensor-core peaks in TFLOPS (2 FLOPs per multiply-accumulate);
# the first name contained in the device name wins.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photos(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """``count`` real photographs resized to ``size`` (width, height), uint8 RGB."""
    return [cv2.resize(getattr(data, PHOTOS[i % len(PHOTOS)])(), size, interpolation=cv2.INTER_AREA)
            for i in range(count)]


def unbatched_fp32(model: DSN, images: list[np.ndarray], device: torch.device) -> None:
    """Baseline: one float32 forward call per image, default memory layout."""
    with torch.inference_mode():
        for image in images:
            inputs = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div(255).contiguous()
            model(inputs).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def seconds(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpuinfo = Path("/proc/cpuinfo")
    model = platform.processor()
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def measure(label: str, config: DSNConfig, size: tuple[int, int], count: int, batch: int,
            device: torch.device, peak: float | None) -> None:
    """Time the baseline loop and ``degrade_batch`` on ``count`` images of ``size``."""
    torch.manual_seed(0)
    model = DSN(config).to(device).eval()
    images = photos(size, count)
    width, height = size
    unbatched_fp32(model, images[:1], device)  # warm-up: kernel selection, allocations
    degrade_batch(model, images[:1], device)
    baseline = seconds(lambda: unbatched_fp32(model, images, device), device)
    batched = seconds(lambda: degrade_batch(model, images, device, max_batch_pixels=batch * width * height),
                      device)
    macs_per_image = macs_per_pixel(config) * width * height
    scale = width * height / (FLICKR_SIZE[0] * FLICKR_SIZE[1])
    line = (f"[{device_name(device)}] {label} at {width}x{height}, {count} images: "
            f"unbatched fp32 loop {count / baseline:.3f} img/s ({count * macs_per_image / baseline / 1e9:.1f} GMAC/s)"
            f" | degrade_batch batch {batch} {count / batched:.3f} img/s "
            f"({count * macs_per_image / batched / 1e9:.1f} GMAC/s) | ratio {baseline / batched:.2f}")
    if (width, height) != FLICKR_SIZE:
        line += (f" | scaled to 640x427: {scale * count / baseline:.4f} vs {scale * count / batched:.4f} img/s")
    if device.type == "cuda":
        achieved = count * macs_per_image / batched
        line += f" | {achieved / 1e12:.1f} TMAC/s"
        if peak:
            line += f" = {100 * achieved / (peak * 1e12 / 2):.1f}% of the {peak:g} TFLOPS bf16 peak"
        else:
            line += " (unknown card: pass --peak-tflops for the fraction of peak)"
    print(line, flush=True)


def crawled_workspace(root: Path, count: int) -> Workspace:
    """A workspace holding ``count`` crawled 640x427 JPEGs of one user, with their photo records."""
    workspace = Workspace(root)
    nsid = "48600000@N01"
    records = []
    for index, pixels in enumerate(photos(FLICKR_SIZE, count)):
        photo_id = str(1000 + index)
        path = workspace.flickr_photo(nsid, photo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = encode_jpeg(np.roll(pixels, index, axis=1))
        path.write_bytes(payload)
        records.append({
            "schema": PHOTO_SCHEMA, "user": nsid, "photo_id": photo_id, "secret": "ab", "server": "1", "size": "z",
            "url": f"https://live.staticflickr.com/1/{photo_id}_ab_z.jpg", "page_url": "https://www.flickr.com/",
            "license": lookup("4").as_record(), "owner_name": "", "title": "", "date_taken": None,
            "file": workspace.relative(path), "width": FLICKR_SIZE[0], "height": FLICKR_SIZE[1],
            "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "status": "ok", "reason": None,
            "attempts": 1, "fetched_at": "2026-01-01T00:00:00+00:00", "split": "train"})
    workspace.flickr_manifest(nsid).append(records)
    return workspace


def degrade_run(folder: Path, checkpoint: Path, count: int, batch: int, workers: int | None) -> tuple[float, float]:
    """``run_degrade`` on a fresh workspace: images/s overall and after the first batch came back."""
    workspace = crawled_workspace(folder, count)
    factory = None if workers is None else (lambda: dask_client(workers=workers))
    stamps: list[tuple[float, int]] = []
    started = time.perf_counter()
    summary = run_degrade(workspace, checkpoint, client_factory=factory, batch_size=batch,
                          on_done=lambda done: stamps.append((time.perf_counter(), done)))
    elapsed = time.perf_counter() - started
    assert summary.statuses["ok"] == count, summary.line()
    after_first = sum(done for _, done in stamps[1:]) / (stamps[-1][0] - stamps[0][0]) if len(stamps) > 1 else 0.0
    return count / elapsed, after_first


def measure_stage(config_name: str, count: int, batch: int) -> None:
    """``pie degrade`` in-process against local Dask clusters of 1 and 2 workers, same photos and model."""
    folder = Path(tempfile.mkdtemp(prefix="pie-bench-degrade-"))
    try:
        torch.manual_seed(0)
        config = getattr(DSNConfig, config_name)()
        checkpoint = folder / "dsn.pt"
        save_checkpoint(checkpoint, {"format": CHECKPOINT_FORMAT, "config": {"model": config.to_dict()},
                                     "model": DSN(config).state_dict()})
        baseline, baseline_steady = degrade_run(folder / "in-process", checkpoint, count, batch, None)
        print(f"[cpu, {torch.get_num_threads()} torch threads] pie degrade, {config_name} config, {count} photos of "
              f"640x427, batches of {batch}: in-process {baseline:.2f} img/s ({baseline_steady:.2f} after the "
              f"first batch)", flush=True)
        single = None
        for workers in (1, 2):
            rate, steady = degrade_run(folder / f"dask-{workers}", checkpoint, count, batch, workers)
            scaling = "" if single is None else (f"; {steady / single:.2f}x one worker after the first batch "
                                                 f"({steady / single / workers:.2f} per worker)")
            single = single or steady
            print(f"  local Dask cluster, {workers} one-thread worker{'s' if workers > 1 else ''}: {rate:.2f} img/s "
                  f"({steady:.2f} after the first batch) = {rate / baseline:.2f}x in-process "
                  f"({steady / baseline_steady:.2f}x after the first batch, "
                  f"{steady / baseline_steady / workers:.2f}x per worker){scaling}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images per degrade_batch call (default 4)")
    parser.add_argument("--cpu-images", type=int, default=4, help="images per CPU measurement (default 4)")
    parser.add_argument("--paper-cpu-size", default="160x107",
                        help="WxH at which the paper config is timed on the CPU (default 160x107)")
    parser.add_argument("--gpu-images", type=int, default=16, help="images per GPU measurement (default 16)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak in TFLOPS, if not in the built-in table")
    parser.add_argument("--stage-photos", type=int, default=32, help="photos for the pie degrade runs (default 32)")
    parser.add_argument("--stage-config", default="tiny", choices=("tiny", "small", "paper"),
                        help="DSN configuration of the pie degrade runs (default tiny)")
    parser.add_argument("--stage-batch", type=int, default=4, help="photos per degrade task (default 4)")
    args = parser.parse_args(argv)
    paper_cpu_size = tuple(int(side) for side in args.paper_cpu_size.lower().split("x"))

    flickr_pixels = FLICKR_SIZE[0] * FLICKR_SIZE[1]
    for name in ("tiny", "small", "paper"):
        macs = macs_per_pixel(getattr(DSNConfig, name)())
        print(f"MACs per pixel, {name} config: {macs:,} ({macs * flickr_pixels / 1e12:.3f} TMAC per 640x427 image)")

    cpu = torch.device("cpu")
    measure("small config", DSNConfig.small(), FLICKR_SIZE, args.cpu_images, args.batch, cpu, None)
    measure("paper config", DSNConfig.paper(), paper_cpu_size, args.cpu_images, args.batch, cpu, None)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        peak = peak_tflops(gpu, args.peak_tflops)
        for label, config in (("small config", DSNConfig.small()), ("paper config", DSNConfig.paper())):
            measure(label, config, FLICKR_SIZE, args.gpu_images, args.batch, gpu, peak)
    else:
        print("CUDA not available: no GPU figures")
    measure_stage(args.stage_config, args.stage_photos, args.stage_batch)


if __name__ == "__main__":
    main()
