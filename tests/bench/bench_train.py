"""Training throughput of masked style modeling: step 1 and step 2, small and paper config.

Runs real optimiser steps (forward, loss, backward, Adam) of ``model.train``'s
two assemblies on random images already in memory, so the figure is the
networks' speed, not the loader's (``bench_shard.py`` measures the loader).
The baseline, measured in the same run, is the same work done one sample at a
time (batch 1): the ratio is what batching buys. On CUDA the run uses bf16
autocast and channels-last as ``pie train`` does and also prints the fraction
of the card's bf16 dense peak reached, from the multiply-accumulates of
``model.complexity`` (a training step counted as 3 forward passes of the
trainable modules plus 1 of the frozen ones).

    python tests/bench/bench_train.py [--paper-steps 2] [--small-steps 6]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from model.complexity import training_macs
from model.losses import step1_loss
from model.networks import MSM, MSMConfig, normalize
from model.pca import StylePCA
from model.train import Step1Net, Step2Net

#: bf16 dense tensor-core peaks (TFLOP/s, no sparsity) of cards this may run on.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in BF16_PEAK_TFLOPS.items() if key in name), None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step1(model: MSM, batch: int, device: torch.device):
    net = Step1Net(model).train()
    size = model.config.image_size
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = normalize(torch.rand(batch, 3, size, size, device=device)).contiguous(memory_format=memory)
    y = normalize(torch.rand(batch, 3, size, size, device=device)).contiguous(memory_format=memory)

    def run():
        with _autocast(device):
            delta = net(x, y).float()
        loss, _ = step1_loss(x, delta, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def _step2(model: MSM, batch: int, device: torch.device, n: int = 10):
    net = Step2Net(model).train()
    model.style_embedding.eval()
    size, dim = model.config.embed_size, model.config.style_dim
    pca = StylePCA(torch.zeros(dim, device=device), torch.eye(dim, device=device), torch.ones(dim, device=device))
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    inputs = normalize(torch.rand(batch * (n + 1), 3, size, size, device=device))
    targets = normalize(torch.rand(batch * (n + 1), 3, size, size, device=device))

    def run():
        with _autocast(device):
            with torch.no_grad():
                styles = model.style_embedding(inputs, targets).float().view(batch, n + 1, -1)
            images = inputs.view(batch, n + 1, 3, size, size)
            whitened = net(images[:, :-1], images[:, -1], styles[:, :-1]).float()
        loss = pca.loss(whitened, styles[:, -1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _rate(run, samples_per_call: int, steps: int, device) -> float:
    run()  # warm-up (allocations, cuDNN choices)
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return samples_per_call * steps / (time.perf_counter() - started)


def bench(name: str, config: MSMConfig, device: torch.device, steps: int, batches: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = MSM(config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    peak = _peak(device)
    for step, make in (("step1", _step1), ("step2", _step2)):
        batch = batches[step]
        rate = _rate(make(model, batch, device), batch, steps, device)
        single = _rate(make(model, 1, device), 1, max(2, steps // 2), device)
        unit = "pairs/s" if step == "step1" else "user sets/s (11 pairs each)"
        line = (f"{name:<6} {step} batch {batch:>3}: {rate:8.2f} {unit}; batch 1: {single:8.2f} "
                f"({rate / single:.2f}x from batching)")
        if peak:
            macs = training_macs(config, step)
            achieved = rate * macs["train_step"] * 2 / 1e12
            line += f"; {achieved:.1f} TFLOP/s = {achieved / peak:.1%} of the bf16 peak"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-steps", type=int, default=6)
    parser.add_argument("--paper-steps", type=int, default=2)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"== {label}", flush=True)
        cuda = device.type == "cuda"
        bench("small", MSMConfig.small(), device, args.small_steps * (5 if cuda else 1),
              {"step1": 64 if cuda else 8, "step2": 32 if cuda else 4})
        bench("paper", MSMConfig.paper(), device, args.paper_steps * (5 if cuda else 1),
              {"step1": 64 if cuda else 2, "step2": 32 if cuda else 1})


if __name__ == "__main__":
    main()
