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

Usage: ``python tests/bench/bench_degrader.py [--batch 4] [--peak-tflops 989]``
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from degrader.dsn import DSN, DSNConfig, macs_per_pixel
from degrader.infer import degrade_batch

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="images per degrade_batch call (default 4)")
    parser.add_argument("--cpu-images", type=int, default=4, help="images per CPU measurement (default 4)")
    parser.add_argument("--paper-cpu-size", default="160x107",
                        help="WxH at which the paper config is timed on the CPU (default 160x107)")
    parser.add_argument("--gpu-images", type=int, default=16, help="images per GPU measurement (default 16)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak in TFLOPS, if not in the built-in table")
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


if __name__ == "__main__":
    main()
