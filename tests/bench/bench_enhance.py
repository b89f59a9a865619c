"""Enhancing new photos for a user: preferred-set reuse and the full-resolution step.

Three measurements, on CPU and (when present) CUDA:

1. ms per image at N = 20 preferred pairs with the preferred set encoded once
   (:class:`model.personalize.Personalizer`: ``fit`` once, then ``enhance``)
   against encoding it again for every image; the ratio is what reuse buys.
   The small networks at 128 px and the paper's at 512 px (``--paper-images
   0`` leaves the paper config out), images at the model side.
2. The full-resolution step at 12 MP (4000x3000): ``residual``, ``guided``
   and ``network`` (the enhancer run at 12 MP, where memory allows), seconds
   per photo including the model-size work.
3. Quality: PSNR of ``residual`` and ``guided`` against ``network`` on the
   bundled sample photographs at their own sizes (300 to 1411 px), and of all
   three against the true retouch. The small networks are first trained for
   ``--train-steps`` step-1 steps on the sample photographs retouched by the
   sample corpus styles (L1 only), so that the enhancer's residual looks like
   a retouch rather than random noise; styles come from N = 20 preferred
   pairs of one style (``mean-style``).

    python tests/bench/bench_enhance.py [--train-steps 150] [--paper-images 3] [--no-12mp-network]

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from model.inference import encode_preferred, enhance, resize
from model.losses import psnr
from model.networks import MSM, MSMConfig, normalize
from model.pca import StylePCA
from model.personalize import FULL_RESOLUTION, Personalizer, as_image_tensor, guided, network, residual
from model.train import Step1Net
from pipeline.stages.demo.corpus import sample_styles, source_photographs
from pipeline.imageio import read_image, shrink_to_max_side


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _identity_pca() -> StylePCA:
    return StylePCA(mean=torch.zeros(512), components=torch.eye(512), std=torch.ones(512))


def photographs() -> list[np.ndarray]:
    """The sample photographs as float32 RGB in [0, 1]."""
    return [read_image(path).as_float() for _, path in sorted(source_photographs().items())]


def _pair_tensors(photos, styles, size, rng, count):
    """``count`` (original, retouched) random crops resized to ``size``, normalised, on CPU."""
    xs, ys = [], []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        style = styles[rng.integers(len(styles))]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = photo[top:top + side, left:left + side]
        target = style.apply(crop)
        xs.append(resize(torch.from_numpy(crop).permute(2, 0, 1)[None], size))
        ys.append(resize(torch.from_numpy(target).permute(2, 0, 1)[None], size))
    return normalize(torch.cat(xs)), normalize(torch.cat(ys))


def train_small(photos, styles, steps: int, device: torch.device, seed: int = 0, batch: int = 6) -> MSM:
    """The small networks with the enhancer and style embedding trained for ``steps`` L1 steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    photos = [shrink_to_max_side(photo, 2 * MSMConfig.small().image_size) for photo in photos]
    model = MSM(MSMConfig.small()).to(device)
    net = Step1Net(model).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        x, y = (t.to(device) for t in _pair_tensors(photos, styles, model.config.image_size, rng, batch))
        loss = F.l1_loss(x + net(x, y), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def _time(function, device, repeats: int = 1) -> float:
    function()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def preferred_reuse(config: MSMConfig, device: torch.device, images: int, num_preferred: int = 20) -> None:
    """ms per image: preferred set encoded once against re-encoded for every image."""
    torch.manual_seed(0)
    model = MSM(config).to(device).eval()
    pca = _identity_pca()
    side = config.image_size
    inputs = torch.rand(num_preferred, 3, side, side, device=device)
    targets = torch.rand(num_preferred, 3, side, side, device=device)
    photos = [torch.rand(1, 3, side, side, device=device) for _ in range(images)]
    personalizer = Personalizer(model, pca, method="msm", full_resolution="residual")
    with torch.no_grad():
        fit = _time(lambda: personalizer.fit(zip(inputs, targets)), device)

        def reuse():
            for photo in photos:
                personalizer.enhance_tensors([photo])

        def every():
            for photo in photos:
                enhance(model, pca, encode_preferred(model, inputs, targets), photo)

        once, again = _time(reuse, device) / images, _time(every, device) / images
    name = "paper" if config == MSMConfig.paper() else "small"
    print(f"  {device.type:<4} {name} {config.image_size:>3} px, N = {num_preferred}, {images} images: fit once "
          f"{fit * 1e3:.0f} ms; per image {once * 1e3:.1f} ms encoded once, {again * 1e3:.1f} ms re-encoded, "
          f"ratio {again / once:.1f}x")


def twelve_megapixels(model: MSM, device: torch.device, preferred, photo: np.ndarray, with_network: bool) -> None:
    """Seconds per 4000x3000 photo for each full-resolution method, model-size work included."""
    full = F.interpolate(as_image_tensor(photo), size=(3000, 4000), mode="bicubic",
                         align_corners=False).clamp_(0, 1).to(device)
    personalizer = Personalizer(model, None, method="mean-style")
    personalizer.preferred = preferred
    results = {}
    for method in FULL_RESOLUTION:
        if method == "network" and not with_network:
            continue
        personalizer.full_resolution = method
        try:
            results[method] = _time(lambda: personalizer.enhance_tensors([full]), device)
        except (RuntimeError, MemoryError) as error:  # out of memory
            print(f"  {device.type:<4} 12 MP {method:<8}: did not fit ({str(error).splitlines()[0][:80]})")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    base = results.get("residual")
    for method, seconds in results.items():
        print(f"  {device.type:<4} 12 MP {method:<8}: {seconds:7.2f} s/photo ({seconds / base:5.1f}x residual)")


def quality(model: MSM, device: torch.device, photos, style, num_preferred: int = 20) -> None:
    """PSNR of residual and guided against network, and of all three against the true retouch."""
    rng = np.random.default_rng(1)
    x, y = _pair_tensors(photos, [style], model.config.embed_size, rng, num_preferred)
    from model.networks import denormalize

    preferred = encode_preferred(model, denormalize(x).to(device).clamp(0, 1), denormalize(y).to(device).clamp(0, 1))
    side = model.config.image_size
    scores = {"residual": [], "guided": [], "residual-target": [], "guided-target": [], "network-target": [],
              "input-target": []}
    with torch.no_grad():
        for photo in photos:
            full = as_image_tensor(photo).to(device)
            target = as_image_tensor(style.apply(photo)).to(device)
            small = resize(full, side)
            styles = preferred.styles.mean(0, keepdim=True)
            enhanced = enhance(model, None, preferred, small, "mean-style")
            reference = network(model, full, styles)
            outs = {"residual": residual(full, small, enhanced), "guided": guided(full, small, enhanced)}
            for name, out in outs.items():
                scores[name].append(float(psnr(out, reference)))
                scores[f"{name}-target"].append(float(psnr(out, target)))
            scores["network-target"].append(float(psnr(reference, target)))
            scores["input-target"].append(float(psnr(full, target)))
    mean = {name: float(np.mean(values)) for name, values in scores.items()}
    print(f"  {device.type:<4} against network ({len(photos)} photos, mean PSNR): residual {mean['residual']:.2f} dB, "
          f"guided {mean['guided']:.2f} dB (guided - residual {mean['guided'] - mean['residual']:+.2f} dB)")
    print(f"  {device.type:<4} against the true retouch: input {mean['input-target']:.2f} dB, residual "
          f"{mean['residual-target']:.2f} dB, guided {mean['guided-target']:.2f} dB, network "
          f"{mean['network-target']:.2f} dB")
    return preferred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=150, help="Step-1 steps of the small networks.")
    parser.add_argument("--small-images", type=int, default=10, help="Images per reuse measurement, small config.")
    parser.add_argument("--paper-images", type=int, default=3, help="Images per reuse measurement, paper config.")
    parser.add_argument("--no-12mp-network", action="store_true", help="Leave the 12-MP network run out.")
    parser.add_argument("--cpu-only", action="store_true", help="Leave CUDA out even when present.")
    args = parser.parse_args()

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    photos = photographs()
    style = dataclasses.replace(sample_styles(1, seed=3)[0], vignette=0.0)
    styles = sample_styles(8, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if len(devices) > 1 else ""))
    print("preferred set encoded once vs re-encoded per image (images at the model side, msm):")
    for device in devices:
        preferred_reuse(MSMConfig.small(), device, args.small_images)
        if args.paper_images:
            preferred_reuse(MSMConfig.paper(), device, args.paper_images)
    start = time.perf_counter()
    model = train_small(photos, styles, args.train_steps, devices[-1])
    print(f"small networks trained {args.train_steps} steps on {devices[-1].type} in "
          f"{time.perf_counter() - start:.0f} s")
    for device in devices:
        print(f"full resolution, small networks at {model.config.image_size} px:")
        model = model.to(device)
        preferred = quality(model, device, photos, style)
        twelve_megapixels(model, device, preferred, photos[0], not args.no_12mp_network)


if __name__ == "__main__":
    main()
