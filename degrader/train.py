"""Training DSN as a degrading model, with exact resume.

One step follows the reference ``IRNModel.optimize_parameters``: a batch of
aligned crops of (rule output, FiveK original) pairs goes through the network
both ways,

    loss = w_degrade * ||DSN(enhanced) - original||^2            (forward)
         + w_enhance * ||DSN(original, rev=True) - enhanced||^2  (reverse)

with each squared error summed over channels and pixels and averaged over the
batch (the reference "l2" reconstruction loss, not a mean squared error), then
Adam with coupled weight decay, gradient-norm clipping, and a learning rate
halved at fixed milestones. The enhanced image is rounded to 8 bits first
(the reference ``Quantization`` of the forward input; a no-op for 8-bit images).

The caller supplies the data as ``PairSource`` objects, so this module never
reads image files. A checkpoint holds plain tensors, numbers and strings
(weights, optimiser and scheduler state, every random generator, the data
order, step and config); it is written atomically and read with
``torch.load(weights_only=True)``. Killing a run and calling ``train`` again
with the same arguments continues where the last checkpoint left off and, on
the CPU, ends with bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from degrader.dsn import DSN, DSNConfig
from degrader.infer import degrade_batch, enhance_batch, to_uint8
from manifests.files import load_error_reason

CHECKPOINT_FORMAT = "pie.degrader.dsn.v1"
# Fields that may change between a run and its resumption without changing the result.
RESUMABLE_FIELDS = frozenset({"steps", "val_every", "checkpoint_every"})


class PairSource(Protocol):
    """Training or validation pairs, indexed from 0.

    ``load(i)`` returns ``(enhanced, original)``: a rule-based enhancer output
    (the network's forward input) and the FiveK original it was made from
    (the forward target), both ``H x W x 3`` RGB of the same size, either
    uint8 or float in [0, 1]. ``name(i)`` is a stable name of pair ``i`` (for
    example ``<rule>/<image>``): a checkpoint records the digest of the names
    in order, so resuming on other pairs is refused.
    """

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...

    def name(self, index: int) -> str: ...


def pairs_digest(pairs: PairSource) -> str:
    """SHA-256 over the names of ``pairs`` in order: which pairs, and in which order, a run trains on."""
    digest = hashlib.sha256()
    for index in range(len(pairs)):
        digest.update(pairs.name(index).encode() + b"\0")
    return digest.hexdigest()


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, truncated, or belongs to another run."""


class ConfigurationMismatch(CheckpointError):
    """A checkpoint of another configuration: ``differences`` are ``(setting, saved, asked)`` triples,
    ``saved_model`` the network configuration it was trained with."""

    def __init__(self, path, differences: list[tuple[str, object, object]], saved_model: dict):
        listed = "; ".join(f"{name}: {saved!r} in the checkpoint, {asked!r} now" for name, saved, asked in differences)
        super().__init__(f"{path}: checkpoint belongs to another configuration ({listed})")
        self.differences, self.saved_model = differences, saved_model


def config_differences(saved: dict, config: "TrainConfig") -> list[tuple[str, object, object]]:
    """``(setting, saved, asked)`` for each setting that may not change on resumption; the network's
    settings one by one (``model.coupling_blocks``)."""
    differences = []
    for name, value in config.to_dict().items():
        if name in RESUMABLE_FIELDS:
            continue
        value = _as_saved(value)
        if isinstance(value, dict) and isinstance(saved.get(name), dict):
            differences += [(f"{name}.{key}", saved[name].get(key), item) for key, item in value.items()
                            if saved[name].get(key) != item]
        elif saved.get(name) != value:
            differences.append((name, saved.get(name), value))
    return differences


@dataclass(frozen=True)
class TrainConfig:
    """Every number of a DSN training run; defaults are the reference recipe
    (``options/train/train_for_fiveK.yml``).

    Attributes
    ----------
    model : DSNConfig
        Network sizes (default: the paper's).
    steps : int
        Optimiser steps (1,000,000; about 445 epochs of 4,500 pairs).
    batch_size : int
        Pairs per step (2).
    crop_size : int
        Side of the aligned square random crops, in pixels (180). Every pair
        must be at least this large.
    flips : bool
        Random vertical flip, horizontal flip and transpose, each with p = 0.5,
        the same for both images of a pair (on).
    learning_rate : float
        Adam learning rate before the first milestone (2e-4).
    betas : tuple of float
        Adam betas (0.9, 0.999).
    weight_decay : float
        Adam's coupled L2 weight decay (1e-5).
    grad_clip_norm : float
        Largest global gradient L2 norm (10).
    lr_milestones : tuple of int
        Steps at which the learning rate is multiplied by ``lr_gamma``.
    lr_gamma : float
        Learning-rate factor at each milestone (0.5).
    degrade_weight, enhance_weight : float
        Weights of the forward (degrading) and reverse (enhancing) losses (1, 1).
    seed : int
        Seed of the weights and of the data order and augmentation (10).
    val_every : int
        Validate every this many steps, and after the last (1000).
    checkpoint_every : int
        Save a checkpoint every this many steps, and after the last (1000).
    mixed_precision : bool
        bfloat16 autocast on CUDA (on); the CPU always runs float32.
    """

    model: DSNConfig = field(default_factory=DSNConfig.paper)
    steps: int = 1_000_000
    batch_size: int = 2
    crop_size: int = 180
    flips: bool = True
    learning_rate: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    grad_clip_norm: float = 10.0
    lr_milestones: tuple[int, ...] = (150_000, 300_000, 450_000, 600_000, 750_000)
    lr_gamma: float = 0.5
    degrade_weight: float = 1.0
    enhance_weight: float = 1.0
    seed: int = 10
    val_every: int = 1000
    checkpoint_every: int = 1000
    mixed_precision: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "crop_size", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        values["model"] = DSNConfig.from_dict(values["model"])
        values["betas"] = tuple(values["betas"])
        values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)


# ---------------------------------------------------------------- data


class CropStream:
    """Endless batches of aligned, augmented random crops (reference MTC loader).

    Pairs are visited in a fresh random order every epoch, dropping the last
    incomplete batch. All randomness comes from one ``numpy`` generator whose
    state, together with the current order and position, is saved in the
    checkpoint.
    """

    def __init__(self, pairs: PairSource, config: TrainConfig):
        if len(pairs) < config.batch_size:
            raise ValueError(f"{len(pairs)} training pairs are fewer than one batch of {config.batch_size}")
        self.pairs = pairs
        self.batch_size = config.batch_size
        self.crop_size = config.crop_size
        self.flips = config.flips
        self.rng = np.random.default_rng(config.seed)
        self.order = np.zeros(0, np.int64)
        self.position = 0

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Two float32 arrays ``B x crop x crop x 3``: enhanced inputs, original targets."""
        if self.position + self.batch_size > len(self.order):
            self.order = self.rng.permutation(len(self.pairs))
            self.position = 0
        indices = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        crops = [self._crop(int(index)) for index in indices]
        return np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])

    def _crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        enhanced, original = self.pairs.load(index)
        if enhanced.shape != original.shape or enhanced.ndim != 3 or enhanced.shape[2] != 3:
            raise ValueError(f"training pair {index}: shapes {enhanced.shape} and {original.shape} "
                             "are not the same H x W x 3")
        height, width = enhanced.shape[:2]
        size = self.crop_size
        if height < size or width < size:
            raise ValueError(f"training pair {index} is {width}x{height}, smaller than crop_size {size}")
        top = int(self.rng.integers(0, height - size + 1))
        left = int(self.rng.integers(0, width - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        enhanced = quantize_8bit(to_unit_float(enhanced[window]))
        original = to_unit_float(original[window])
        if self.flips:
            flip_vertical, flip_horizontal, transpose = self.rng.random(3) < 0.5
            for apply, change in ((flip_vertical, np.flipud), (flip_horizontal, np.fliplr),
                                  (transpose, lambda image: image.transpose(1, 0, 2))):
                if apply:
                    enhanced, original = change(enhanced), change(original)
        return enhanced, original

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self.order.copy()),
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = state["order"].numpy().astype(np.int64)
        self.position = int(state["position"])


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255; a float image is taken as already in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float image, got {image.dtype}")
    return image.astype(np.float32)


def quantize_8bit(image: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] and round to multiples of 1/255 (reference ``Quantization``)."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0


# ---------------------------------------------------------------- training


def train(config: TrainConfig, pairs: PairSource, val_pairs: PairSource | None,
          checkpoint_path: str | os.PathLike, *,
          encoder_filters: tuple[torch.Tensor, torch.Tensor] | None = None,
          device: torch.device | str | None = None,
          on_log: Callable[[int, dict], None] | None = None) -> DSN:
    """Train DSN from enhanced photos back to originals, resuming if possible.

    Parameters
    ----------
    config : TrainConfig
        The run's settings.
    pairs : PairSource
        Training pairs ``(enhanced, original)``.
    val_pairs : PairSource or None
        Validation pairs, run whole; the PSNR of both directions is reported.
    checkpoint_path : path
        Where the checkpoint is written (atomically). If the file exists, the
        run resumes from it; its config must equal ``config`` except for
        ``steps``, ``val_every`` and ``checkpoint_every``.
    encoder_filters : tuple of torch.Tensor, optional
        Encoder filters for a new run (``encoder_from_vgg16``); default: the
        deterministic ``default_encoder_filters``. Ignored when resuming.
    device : torch.device or str, optional
        Default: CUDA if available, else the CPU. A new run seeds torch's
        global generator with ``config.seed`` to initialise the weights.
    on_log : callable, optional
        Called after every step as ``on_log(step, metrics)``. ``metrics`` holds
        ``loss``, ``loss_degrade``, ``loss_enhance`` (summed squared errors per
        pair) and ``lr``, plus ``val_psnr_degrade`` and ``val_psnr_enhance``
        (dB, on 8-bit outputs) on validation steps.

    Returns
    -------
    DSN
        The trained network, on ``device``, in eval mode.

    Raises
    ------
    CheckpointError
        If an existing checkpoint is unreadable or belongs to another config.
    """
    device = torch.device(device) if device is not None else _default_device()
    on_cuda = device.type == "cuda"
    checkpoint_path = Path(checkpoint_path)

    torch.manual_seed(config.seed)
    model = DSN(config.model, encoder_filters).to(device)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=config.betas,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), config.lr_gamma)
    stream = CropStream(pairs, config)
    step = 0
    if checkpoint_path.exists():
        step = _resume(checkpoint_path, config, model, optimizer, scheduler, stream)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda and config.mixed_precision
                else contextlib.nullcontext())
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    while step < config.steps:
        model.train()
        enhanced, original = (_to_tensor(batch, device, memory_format) for batch in stream.next_batch())
        with autocast:
            degraded = model(enhanced)
            re_enhanced = model(original, rev=True)
        loss_degrade = _summed_squared_error(degraded, original)
        loss_enhance = _summed_squared_error(re_enhanced, enhanced)
        loss = config.degrade_weight * loss_degrade + config.enhance_weight * loss_enhance
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        metrics = {"loss": loss.item(), "loss_degrade": loss_degrade.item(),
                   "loss_enhance": loss_enhance.item(), "lr": optimizer.param_groups[0]["lr"]}
        optimizer.step()
        scheduler.step()
        step += 1

        last = step == config.steps
        if val_pairs is not None and len(val_pairs) and (step % config.val_every == 0 or last):
            metrics.update(validate(model, val_pairs, device))
        if step % config.checkpoint_every == 0 or last:
            save_checkpoint(checkpoint_path, _training_state(step, config, model, optimizer, scheduler, stream))
        if on_log is not None:
            on_log(step, metrics)
    return model.eval()


def validate(model: DSN, val_pairs: PairSource, device: torch.device) -> dict:
    """Mean PSNR (dB) of both directions on whole validation pairs, 8-bit outputs.

    ``val_psnr_degrade`` compares DSN(enhanced) with the original,
    ``val_psnr_enhance`` compares DSN(original, rev=True) with the enhanced image.
    """
    degrade_scores, enhance_scores = [], []
    for index in range(len(val_pairs)):
        enhanced, original = (to_uint8(image) for image in val_pairs.load(index))
        degrade_scores.append(psnr(degrade_batch(model, [enhanced], device)[0], original))
        enhance_scores.append(psnr(enhance_batch(model, [original], device)[0], enhanced))
    return {"val_psnr_degrade": float(np.mean(degrade_scores)),
            "val_psnr_enhance": float(np.mean(enhance_scores))}


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf if equal)."""
    error = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint safely (``weights_only=True``) onto the CPU.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, not a checkpoint, or of another format.
    """
    state = _safe_load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a DSN training checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def load_degrader(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[DSN, str]:
    """Load a trained DSN for inference.

    Accepts a checkpoint written by ``train`` or a bare state dict of the
    reference implementation (paper configuration; e.g. the degrading model
    released with MSM).

    Returns
    -------
    model : DSN
        On ``device``, in eval mode.
    digest : str
        ``weights_digest`` of the loaded weights (hex sha256), for provenance.

    Raises
    ------
    CheckpointError
        If the file is unreadable or its weights do not fit the network.
    """
    state = _safe_load(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        config, weights = DSNConfig.from_dict(state["config"]["model"]), state["model"]
    elif isinstance(state, dict) and all(isinstance(value, torch.Tensor) for value in state.values()):
        config, weights = DSNConfig.paper(), state
    else:
        raise CheckpointError(f"{path}: neither a DSN training checkpoint nor a DSN state dict")
    model = DSN(config)
    _load_weights(path, model, weights)
    model = model.to(device, memory_format=torch.channels_last)  # the layout inference feeds it
    return model.eval(), weights_digest(weights)


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of a state dict.

    Independent of how the file was pickled or where the tensors live, so a
    resumed and an uninterrupted run with equal weights share a digest.
    """
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- helpers


def _safe_load(path) -> object:
    """``torch.load`` that unpickles only tensors and plain containers, onto the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({load_error_reason(error)})") from None


def _to_tensor(batch: np.ndarray, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """``B x H x W x 3`` float32 array -> ``B x 3 x H x W`` tensor on ``device``."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).to(device, memory_format=memory_format)


def _summed_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reference "l2" loss: squared error summed over C, H, W, mean over the batch."""
    return ((output.float() - target) ** 2).sum() / output.shape[0]


def _training_state(step: int, config: TrainConfig, model: DSN, optimizer, scheduler, stream: CropStream) -> dict:
    numpy_state = np.random.get_state()
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": config.to_dict(),
        "pairs": {"count": len(stream.pairs), "digest": pairs_digest(stream.pairs)},
        "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "data": stream.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                      "position": numpy_state[2], "has_gauss": numpy_state[3], "gauss": numpy_state[4]},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def _resume(path: Path, config: TrainConfig, model: DSN, optimizer, scheduler, stream: CropStream) -> int:
    """Restore everything from a checkpoint; return its step."""
    state = read_checkpoint(path)
    try:
        saved = state["config"]
        differences = config_differences(saved, config)
        if differences:
            raise ConfigurationMismatch(path, differences, saved.get("model") or {})
        trained_on = state.get("pairs")
        if trained_on is not None and trained_on.get("digest") != pairs_digest(stream.pairs):
            raise CheckpointError(f"{path}: the training pairs changed since this checkpoint ({trained_on['count']} "
                                  f"pairs then, {len(stream.pairs)} now); train another with --out FILE, or "
                                  "restore the pairs it was trained on")
        _load_weights(path, model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["data"])
        rng = state["rng"]
        random.setstate(rng["python"])
        numpy_state = rng["numpy"]
        np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["position"], numpy_state["has_gauss"], numpy_state["gauss"]))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(state["step"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint ({type(error).__name__}: {error})"
                              ) from error


def _load_weights(path, model: DSN, weights: dict) -> None:
    for name, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values; use another checkpoint")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the network ({error})") from error


def _as_saved(value):
    """A config value as it reads back from a checkpoint (nested dataclasses become dicts)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
