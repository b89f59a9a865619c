"""The two-step trainer of masked style modeling, from ``pie shard`` output.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III, and the public reference code
(``train1.py``, ``train2.py``):

1. **step 1**: the style embedding and the stylized enhancer learn from every
   pair of every user (:func:`model.data.pairs`, 512 x 512, style embeddings
   at 256 x 256) with L1 + 0.4 perceptual + 0.01 edge-aware TV
   (:mod:`model.losses`); validated on the rule users given as
   ``step1_valid_users`` (the reference uses its 15 preset users);
2. **pca**: a 512-component PCA of the style embeddings of the training pairs
   (:mod:`model.pca`), with the best step-1 weights;
3. **step 2**: the content embedding, masked token and transformer learn, with
   the style embedding and the enhancer frozen, to predict the masked pair's
   style in whitened PCA coordinates from N = 10 preferred pairs of the same
   user (:func:`model.data.user_sets`), L1 loss; validated on the ``valid``
   Flickr users with their first 20 ``valid_ref`` pairs as the preferred set.

Each step is Adam (lr 1e-4) with a cosine schedule stepped once per epoch,
and keeps, in the output folder:

* ``<step>.pt``: the resumable state (trainable weights, optimiser,
  scheduler, loader position, random generators, metrics history), written
  atomically every ``save_every`` optimiser steps and after every epoch;
* ``<step>-best.pt``: the weights of the epoch with the best validation PSNR
  (the last epoch when there is nothing to validate on).

``pca.pt`` holds the PCA and the digest of the step-1 weights it was fitted
with; ``model.pt`` is the finished model (every module, the PCA, the config)
that ``pie evaluate`` and ``pie enhance`` read; ``metrics.csv`` lists one row
per epoch and validation. Running the same call again skips finished parts
and resumes an interrupted one where its last checkpoint left off: on the
CPU the result is bit for bit that of an uninterrupted run. The loader
position is restored by reading the interrupted epoch's first batches again
(the loaders are deterministic given seed and epoch), which costs their
decoding time but no training.

Several processes (``torchrun``) train with DistributedDataParallel; each
reads its own shards, and an epoch ends for all of them when the first runs
out of data, so every rank takes the same number of steps. Only rank 0
validates and writes files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import math
import multiprocessing
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from manifests.files import load_error_reason

from . import data as msm_data
from .inference import PreferredSet, styles_from_contents
from .losses import PERCEPTUAL_WEIGHT, TV_WEIGHT, PerceptualLoss, psnr, step1_loss
from .networks import MSM, MSMConfig, denormalize, normalize
from .pca import CovarianceAccumulator, StylePCA

log = logging.getLogger("pie.model.train")

CHECKPOINT_FORMAT = "pie.msm.train/1"
BEST_FORMAT = "pie.msm.best/1"
PCA_FORMAT = "pie.msm.pca/1"
MODEL_FORMAT = "pie.msm.model/1"

#: The parts of a run, in order.
PARTS = ("step1", "pca", "step2")

#: Trainable modules of each step (reference module names).
STEP_MODULES = {"step1": ("style_embedding", "stylized_enhancer"),
                "step2": ("content_embedding", "masked_token", "transformer_encoder")}

#: Config fields that may change between a run and its resumption.
RESUMABLE_FIELDS = frozenset({"save_every", "valid_pairs_per_user", "num_workers"})

METRIC_COLUMNS = ("step", "epoch", "global_step", "lr", "loss", "l1", "perceptual", "tv", "images", "seconds",
                  "images_per_s", "valid_psnr", "skipped")


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, truncated, foreign or of another configuration."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a masked style modeling run; defaults are the paper's.

    Attributes
    ----------
    model : MSMConfig
        Network sizes (paper: :meth:`MSMConfig.paper`).
    step1_epochs, step2_epochs : int
        Epochs of each step (30, 30).
    step1_batch_size, step2_batch_size : int
        Samples per optimiser step and process (64 pairs; 32 user sets).
    learning_rate : float
        Adam learning rate at the start of each step's cosine schedule (1e-4).
    num_preferred : int
        N, preferred pairs per step-2 sample (10).
    perceptual_weight, tv_weight : float
        Step-1 loss weights (0.4, 0.01).
    pca_components : int
        Principal components of the style space (512 = the style dimension).
    valid_preferred : int
        Preferred (``valid_ref``) pairs per validation user in step 2 (20).
    valid_pairs_per_user : int
        Most validation pairs per user and step (100; 0 = all).
    shuffle_buffer : int
        Step-1 shuffle buffer per loader worker, in samples (1000).
    num_workers : int
        DataLoader worker processes per rank (2).
    seed : int
        Seed of the initial weights, the data order and the augmentations.
    save_every : int
        Write the resumable checkpoint every this many optimiser steps (500).
    mixed_precision : bool
        bfloat16 autocast on CUDA (on); the CPU always runs float32.
    """

    model: MSMConfig = field(default_factory=MSMConfig.paper)
    step1_epochs: int = 30
    step2_epochs: int = 30
    step1_batch_size: int = 64
    step2_batch_size: int = 32
    learning_rate: float = 1e-4
    num_preferred: int = 10
    perceptual_weight: float = PERCEPTUAL_WEIGHT
    tv_weight: float = TV_WEIGHT
    pca_components: int = 512
    valid_preferred: int = 20
    valid_pairs_per_user: int = 100
    shuffle_buffer: int = 1000
    num_workers: int = 2
    seed: int = 0
    save_every: int = 500
    mixed_precision: bool = True

    def __post_init__(self):
        for name in ("step1_epochs", "step2_epochs", "step1_batch_size", "step2_batch_size", "num_preferred",
                     "pca_components", "valid_preferred", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("valid_pairs_per_user", "shuffle_buffer", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must not be negative, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.pca_components > self.model.style_dim:
            raise ValueError(f"TrainConfig.pca_components ({self.pca_components}) exceeds the style dimension "
                             f"({self.model.style_dim})")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        values = dict(values)
        values["model"] = MSMConfig.from_dict(values["model"])
        return cls(**values)


@dataclass(frozen=True)
class TrainData:
    """The shards a run reads.

    Attributes
    ----------
    train_urls, valid_urls : list of str
        ``train`` and ``valid`` shards.
    step1_valid_users : frozenset of str
        Users whose training pairs validate step 1 (the reference: its preset
        rule users).
    step1_valid_urls : list of str
        The train shards holding them.
    user_samples : dict
        Training samples per user where the index says (else empty).
    """

    train_urls: list[str]
    valid_urls: list[str] = field(default_factory=list)
    step1_valid_users: frozenset = frozenset()
    step1_valid_urls: list[str] = field(default_factory=list)
    user_samples: dict = field(default_factory=dict)

    @classmethod
    def from_index(cls, index: str | os.PathLike, step1_valid_users: Iterable[str] = ()) -> "TrainData":
        """Read ``index.json`` (or the folder holding it) written by ``pie shard``."""
        train = msm_data.shard_entries(index, "train")
        valid = msm_data.shard_entries(index, "valid")
        wanted = frozenset(step1_valid_users)
        counts: dict[str, int] = {}
        for entry in train:
            for user, count in (entry.get("user_samples") or {}).items():
                counts[user] = counts.get(user, 0) + int(count)
        return cls([e["url"] for e in train], [e["url"] for e in valid], wanted,
                   [e["url"] for e in train if wanted & set(e.get("users") or ())], counts)

    def step2_users(self, num_preferred: int) -> tuple[frozenset | None, list[str]]:
        """Users step 2 trains on, and the Flickr users left out for having fewer than N + 1 pairs.

        Rule users always stay (their preferred set is copies of the masked
        pair). Without per-user counts in the index, every user is kept
        (None).
        """
        if not self.user_samples:
            return None, []
        small = sorted(user for user, count in self.user_samples.items()
                       if count < num_preferred + 1 and not user.startswith("rules-"))
        return frozenset(self.user_samples) - set(small), small


@dataclass
class Context:
    """Where and how a run executes: device, output folder, process group, callbacks."""

    out: Path
    device: torch.device
    rank: int = 0
    world_size: int = 1
    perceptual: PerceptualLoss | None = None
    on_log: Callable[[str, dict], None] | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------- process group and device


def setup_distributed(device: str = "auto") -> tuple[torch.device, int, int]:
    """Join the ``torchrun`` process group when launched by it; pick this process's device.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With more
    than one process the group is initialised (NCCL on CUDA, gloo on CPUs) and
    each process takes ``cuda:LOCAL_RANK``. ``device`` is ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N``.

    Returns
    -------
    device, rank, world_size
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device is available")
    chosen = torch.device(f"cuda:{local_rank}" if device == "cuda" and world_size > 1 else device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return chosen, rank, dist.get_world_size() if dist.is_initialized() else 1


# ---------------------------------------------------------------- checkpoint files


def _save(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
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


def read_checkpoint(path: str | os.PathLike, fmt: str) -> dict:
    """Load one of the trainer's files safely (``weights_only=True``) onto the CPU.

    Raises
    ------
    CheckpointError
        Unreadable, truncated, not a pie file, or of another kind than ``fmt``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({load_error_reason(error)})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {fmt} file (found {found!r})")
    return state


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, dtypes, shapes and bytes of a state dict."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


def _load_module(path, module: nn.Module, weights: dict) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the network "
                              f"({str(error).strip().splitlines()[0][:300]})") from None


# ---------------------------------------------------------------- bad samples


class _SkipCounter(logging.Handler):
    """Counts the loaders' skipped-sample warnings, in this process and forked loader workers."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.value = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Value("q", 0)

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("skipping sample"):
            with self.value.get_lock():
                self.value.value += 1

    @property
    def count(self) -> int:
        return int(self.value.value)


@contextlib.contextmanager
def _counting_skips():
    counter = _SkipCounter()
    logger = logging.getLogger(msm_data.log.name)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


# ---------------------------------------------------------------- the two trainable assemblies


class Step1Net(nn.Module):
    """Style embedding + enhancer: normalised (x, y) at image_size -> residual delta."""

    def __init__(self, model: MSM):
        super().__init__()
        self.style_embedding, self.enhancer = model.style_embedding, model.enhancer
        self.embed_size = model.config.embed_size

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = (self.embed_size, self.embed_size)
        style = self.style_embedding(F.interpolate(x, size=size, mode="bilinear", align_corners=False),
                                     F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.enhancer(x, style)


class Step2Net(nn.Module):
    """Content embedding + masked token + transformer: a user set -> whitened style of the masked pair."""

    def __init__(self, model: MSM):
        super().__init__()
        self.content_embedding, self.masked_token, self.transformer = (
            model.content_embedding, model.masked_token, model.transformer)

    def forward(self, preferred_inputs: torch.Tensor, inputs: torch.Tensor, preferred_styles: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, count = preferred_inputs.shape[:2]
        # Two calls, as the reference: the preferred images and the unseen ones get their own batch statistics.
        preferred_contents = self.content_embedding(preferred_inputs.flatten(0, 1)).view(batch, count, -1)
        contents = self.content_embedding(inputs)
        styles = torch.cat([preferred_styles, self.masked_token(batch)[:, None].to(preferred_styles)], 1)
        return self.transformer(styles, torch.cat([preferred_contents, contents[:, None]], 1), padding_mask)


def predict_styles(model: MSM, pca: StylePCA, preferred_styles: torch.Tensor, preferred_contents: torch.Tensor,
                   inputs: torch.Tensor) -> torch.Tensor:
    """Styles (B, D) of ``inputs`` (B, 3, embed, embed, normalised) from one preferred set.

    ``preferred_styles`` and ``preferred_contents`` are (N, D), encoded once
    for the set and shared by the batch (:func:`model.inference.styles_from_contents`).
    """
    preferred = PreferredSet(preferred_styles, preferred_contents)
    return styles_from_contents(model, pca, preferred, model.content_embedding(inputs), "msm")


# ---------------------------------------------------------------- validation


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 or [0, 1] float (B, 3, H, W) -> normalised float32 on ``device``."""
    images = images.to(device)
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return normalize(images)


@torch.no_grad()
def validate_step1(model: MSM, config: TrainConfig, data: TrainData, device: torch.device) -> float:
    """Mean PSNR (dB, at the model's image side: 512 px in the paper) of the enhancer with each pair's own
    style, on the step-1 validation users."""
    if not data.step1_valid_urls:
        return math.nan
    model.eval()
    scores = []
    limit = config.valid_pairs_per_user or None
    for user in msm_data.user_groups(data.step1_valid_urls, size=config.model.image_size,
                                     users=data.step1_valid_users):
        for start in range(0, len(user.keys[:limit]), config.step1_batch_size):
            stop = min(start + config.step1_batch_size, len(user.keys[:limit]))
            x, y = _as_input(user.inputs[start:stop], device), _as_input(user.targets[start:stop], device)
            delta = Step1Net(model)(x, y)
            scores.append(psnr(_denormalize(x + delta), _denormalize(y)).cpu())
    return float(torch.cat(scores).mean()) if scores else math.nan


@torch.no_grad()
def validate_step2(model: MSM, pca: StylePCA, config: TrainConfig, data: TrainData, device: torch.device) -> float:
    """Mean over valid users of the mean PSNR (dB, at the model's image side: 512 px in the paper) of their
    unseen ``valid`` pairs.

    Each user's first ``valid_preferred`` ``valid_ref`` pairs are the
    preferred set, encoded once; as in the reference ``train2.py``.
    """
    if not data.valid_urls:
        return math.nan
    model.eval()
    embed = config.model.embed_size
    per_user = []
    limit = config.valid_pairs_per_user or None
    for user in msm_data.user_groups(data.valid_urls, size=config.model.image_size):
        preferred, unseen = user.select("valid_ref"), user.select("valid")
        if not len(preferred) or not len(unseen):
            continue
        pref_x = _resize(_as_input(preferred.inputs[:config.valid_preferred], device), embed)
        pref_y = _resize(_as_input(preferred.targets[:config.valid_preferred], device), embed)
        pref_styles = model.style_embedding(pref_x, pref_y)
        pref_contents = model.content_embedding(pref_x)
        scores = []
        count = len(unseen.keys[:limit])
        for start in range(0, count, config.step2_batch_size):
            stop = min(start + config.step2_batch_size, count)
            x, y = _as_input(unseen.inputs[start:stop], device), _as_input(unseen.targets[start:stop], device)
            styles = predict_styles(model, pca, pref_styles, pref_contents, _resize(x, embed))
            scores.append(psnr(_denormalize(x + model.enhancer(x, styles)), _denormalize(y)).cpu())
        per_user.append(float(torch.cat(scores).mean()))
    return float(sum(per_user) / len(per_user)) if per_user else math.nan


def _denormalize(images: torch.Tensor) -> torch.Tensor:
    return denormalize(images.float())


# ---------------------------------------------------------------- one training step (the generic loop)


@dataclass
class _Step:
    """What differs between step 1 and step 2; the loop in :func:`_run_step` is shared."""

    name: str
    epochs: int
    batch_size: int
    net: nn.Module
    stream: msm_data.ShardStream
    loss: Callable[[nn.Module, object], tuple[torch.Tensor, dict, int]]
    validate: Callable[[], float]
    extra_state: dict = field(default_factory=dict)


def _rng_state(device: torch.device) -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _agree_has_batch(has_batch: bool, ctx: Context) -> bool:
    """Whether every rank still has a batch this step (always the local answer without a group)."""
    if not ctx.distributed:
        return has_batch
    flag = torch.tensor([1 if has_batch else 0], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _broadcast_float(value: float, ctx: Context) -> float:
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.broadcast(tensor, 0)
    return float(tensor.item())


def _sync_buffers(module: nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), so all end with identical state."""
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def _run_step(step: _Step, config: TrainConfig, ctx: Context, model: MSM) -> dict:
    """Train one step to its last epoch, resuming from ``<name>.pt``; returns the final state."""
    path, best_path = ctx.out / f"{step.name}.pt", ctx.out / f"{step.name}-best.pt"
    modules = {name: model.module(name) for name in STEP_MODULES[step.name]}
    parameters = [p for module in modules.values() for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=step.epochs)
    state = {"epoch": 0, "batches": 0, "global_step": 0, "best_psnr": -math.inf, "history": [],
             "sums": {}, "images": 0, "seconds": 0.0}
    if path.exists():
        saved = read_checkpoint(path, CHECKPOINT_FORMAT)
        _check_config(path, saved, config, step)
        try:
            for name, module in modules.items():
                _load_module(path, module, saved["modules"][name])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            _set_rng_state(saved["rng"], ctx.device)
            state = {key: saved[key] for key in state}
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: incomplete or inconsistent checkpoint "
                                  f"({type(error).__name__}: {error})") from None
        if state["epoch"] >= step.epochs:
            return {**state, "ran": False}
        log.info("%s: resuming at epoch %d, batch %d", step.name, state["epoch"], state["batches"])

    net = step.net
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            step.net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" and config.mixed_precision
                else contextlib.nullcontext())

    def checkpoint() -> None:
        if ctx.main:
            _save(path, {"format": CHECKPOINT_FORMAT, "step": step.name, "config": config.to_dict(),
                         **step.extra_state, **state,
                         "modules": {name: _cpu_state(module) for name, module in modules.items()},
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": _rng_state(ctx.device)})
            _write_metrics(ctx.out)

    with _counting_skips() as skips:
        while state["epoch"] < step.epochs:
            epoch = state["epoch"]
            step.stream.set_epoch(epoch)
            loader = DataLoader(step.stream, batch_size=step.batch_size, num_workers=config.num_workers,
                                collate_fn=msm_data.collate, generator=torch.Generator().manual_seed(config.seed),
                                pin_memory=ctx.device.type == "cuda")
            batches = iter(loader)
            for _ in range(state["batches"]):  # back to the saved loader position
                if next(batches, None) is None:
                    break
            started = session_started = time.perf_counter()
            session_images = 0
            skipped_before = skips.count
            while True:
                batch = next(batches, None)
                if not _agree_has_batch(batch is not None, ctx):
                    break
                net.train()
                with autocast:
                    loss, terms, images = step.loss(net, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state["batches"] += 1
                state["global_step"] += 1
                state["images"] += images
                session_images += images
                for key, value in {"loss": loss.item(), **terms}.items():
                    state["sums"][key] = state["sums"].get(key, 0.0) + value
                if ctx.on_log is not None:
                    elapsed = max(time.perf_counter() - session_started, 1e-9)
                    ctx.on_log(step.name, {"epoch": epoch, "batch": state["batches"], "loss": loss.item(),
                                           "images_per_s": session_images * ctx.world_size / elapsed})
                if state["global_step"] % config.save_every == 0:
                    state["seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    checkpoint()
            del batches, loader
            state["seconds"] += time.perf_counter() - started
            scheduler.step()
            _sync_buffers(step.net, ctx)
            valid_psnr = _broadcast_float(step.validate() if ctx.main else math.nan, ctx)
            row = _epoch_row(step.name, epoch, state, optimizer, valid_psnr, skips.count - skipped_before)
            state["history"].append(row)
            if ctx.on_log is not None:
                ctx.on_log(step.name, {"epoch": epoch, "valid_psnr": valid_psnr, "row": row})
            if ctx.main and (math.isnan(valid_psnr) or valid_psnr > state["best_psnr"]
                             or not best_path.exists()):
                state["best_psnr"] = valid_psnr if not math.isnan(valid_psnr) else state["best_psnr"]
                _save(best_path, {"format": BEST_FORMAT, "step": step.name, "config": config.to_dict(),
                                  "epoch": epoch, "valid_psnr": valid_psnr, **step.extra_state,
                                  "modules": {name: _cpu_state(module) for name, module in modules.items()}})
            state.update(epoch=epoch + 1, batches=0, sums={}, images=0, seconds=0.0)
            checkpoint()
    return {**state, "ran": True}


def _epoch_row(name: str, epoch: int, state: dict, optimizer, valid_psnr: float, skipped: int) -> dict:
    batches = max(state["batches"], 1)
    means = {key: value / batches for key, value in state["sums"].items()}
    return {"step": name, "epoch": epoch + 1, "global_step": state["global_step"],
            "lr": optimizer.param_groups[0]["lr"], "loss": means.get("loss", math.nan),
            "l1": means.get("l1", ""), "perceptual": means.get("perceptual", ""), "tv": means.get("tv", ""),
            "images": state["images"], "seconds": round(state["seconds"], 3),
            "images_per_s": round(state["images"] / state["seconds"], 3) if state["seconds"] else "",
            "valid_psnr": valid_psnr, "skipped": skipped}


def _check_config(path: Path, saved: dict, config: TrainConfig, step: _Step) -> None:
    if saved.get("step") != step.name:
        raise CheckpointError(f"{path}: a checkpoint of {saved.get('step')!r}, not {step.name!r}")
    current, before = config.to_dict(), saved.get("config", {})
    differences = [f"{key}: {before.get(key)!r} != {value!r}" for key, value in current.items()
                   if key not in RESUMABLE_FIELDS and before.get(key) != value]
    for key, value in step.extra_state.items():
        if saved.get(key) != value:
            differences.append(f"{key}: {saved.get(key)!r} != {value!r}")
    if differences:
        raise CheckpointError(f"{path}: belongs to another configuration (" + "; ".join(differences)
                              + "); use another output folder or remove it")


def _write_metrics(out: Path) -> None:
    """Rewrite ``metrics.csv`` from the histories of both steps' checkpoints (atomically)."""
    rows = []
    for name in STEP_MODULES:
        path = out / f"{name}.pt"
        if path.exists():
            with contextlib.suppress(CheckpointError):
                rows.extend(read_checkpoint(path, CHECKPOINT_FORMAT).get("history", []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    temporary = out / f".metrics.csv.{os.getpid()}.tmp"
    temporary.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temporary, out / "metrics.csv")
    _tensorboard(out, rows)


def _tensorboard(out: Path, rows: list[dict]) -> None:
    """Mirror the epoch rows into TensorBoard event files when ``tensorboard`` is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for row in rows[-1:]:
            for key in ("loss", "valid_psnr", "images_per_s", "lr"):
                if isinstance(row.get(key), (int, float)) and not math.isnan(row[key]):
                    writer.add_scalar(f"{row['step']}/{key}", row[key], row["global_step"])


# ---------------------------------------------------------------- the three parts


def _step1_loss(config: TrainConfig, ctx: Context):
    memory_format = torch.channels_last if ctx.device.type == "cuda" else torch.contiguous_format

    def loss(net, batch):
        x, y, _ = batch
        x = normalize(x.to(ctx.device, non_blocking=True)).contiguous(memory_format=memory_format)
        y = normalize(y.to(ctx.device, non_blocking=True)).contiguous(memory_format=memory_format)
        delta = net(x, y).float()
        value, terms = step1_loss(x, delta, y, ctx.perceptual, perceptual_weight=config.perceptual_weight,
                                  tv_weight=config.tv_weight)
        return value, terms, x.shape[0]

    return loss


def _step2_loss(model: MSM, pca: StylePCA, ctx: Context):
    def loss(net, batch):
        inputs = normalize(batch["inputs"].to(ctx.device, non_blocking=True).flatten(0, 1))
        targets = normalize(batch["targets"].to(ctx.device, non_blocking=True).flatten(0, 1))
        size, count = batch["inputs"].shape[0], batch["inputs"].shape[1]
        with torch.no_grad():
            model.style_embedding.eval()
            styles = model.style_embedding(inputs, targets).float().view(size, count, -1)
        images = inputs.view(size, count, *inputs.shape[1:])
        whitened = net(images[:, :-1], images[:, -1], styles[:, :-1].to(inputs.dtype),
                       batch["padding_mask"].to(ctx.device)).float()
        return pca.loss(whitened, styles[:, -1]), {}, size * count

    return loss


def _frozen(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False).eval()


def train_step1(model: MSM, config: TrainConfig, data: TrainData, ctx: Context) -> dict:
    """Step 1: style embedding + stylized enhancer on every training pair."""
    stream = msm_data.pairs(data.train_urls, size=config.model.image_size, seed=config.seed,
                            shuffle_buffer=config.shuffle_buffer, rank=ctx.rank, world_size=ctx.world_size)
    step = _Step("step1", config.step1_epochs, config.step1_batch_size, Step1Net(model), stream,
                 _step1_loss(config, ctx), lambda: validate_step1(model, config, data, ctx.device),
                 {"perceptual": ctx.perceptual is not None})
    return _run_step(step, config, ctx, model)


def load_best(path: Path, model: MSM, step: str) -> dict:
    """Load a step's best weights into ``model``; returns the file's content."""
    saved = read_checkpoint(path, BEST_FORMAT)
    if saved.get("step") != step:
        raise CheckpointError(f"{path}: best weights of {saved.get('step')!r}, not {step!r}")
    for name in STEP_MODULES[step]:
        if name not in saved.get("modules", {}):
            raise CheckpointError(f"{path}: no weights for {name}")
        _load_module(path, model.module(name), saved["modules"][name])
    return saved


def step1_digest(model: MSM) -> str:
    """Digest of the step-1 modules' weights, to tie the PCA and step 2 to them."""
    return weights_digest({f"{name}.{key}": value for name in STEP_MODULES["step1"]
                           for key, value in model.module(name).state_dict().items()})


@torch.no_grad()
def fit_pca(model: MSM, config: TrainConfig, data: TrainData, ctx: Context) -> StylePCA:
    """Fit the style PCA on one augmented pass over the training pairs (as the reference ``calcPCA``).

    Every rank embeds its own shards; the sums are added across ranks.
    """
    model.style_embedding.eval()
    accumulator = CovarianceAccumulator(config.model.style_dim)
    stream = msm_data.pairs(data.train_urls, size=config.model.embed_size, seed=config.seed, epoch=0,
                            shuffle_buffer=0, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(stream, batch_size=config.step1_batch_size, num_workers=config.num_workers,
                        collate_fn=msm_data.collate, generator=torch.Generator().manual_seed(config.seed))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" and config.mixed_precision
                else contextlib.nullcontext())
    for x, y, _ in loader:
        with autocast:
            styles = model.style_embedding(normalize(x.to(ctx.device)), normalize(y.to(ctx.device)))
        accumulator.update(styles.float())
    if ctx.distributed:
        for tensor in accumulator.tensors():
            moved = tensor.to(ctx.device) if ctx.device.type == "cuda" else tensor
            dist.all_reduce(moved)
            tensor.copy_(moved.cpu())
    return accumulator.fit(config.pca_components)


def train_step2(model: MSM, pca: StylePCA, config: TrainConfig, data: TrainData, ctx: Context) -> dict:
    """Step 2: content embedding + masked token + transformer, embeddings and enhancer frozen."""
    users, small = data.step2_users(config.num_preferred)
    if small and ctx.main:
        shown = ", ".join(small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
        log.warning("step 2 leaves out %d users with fewer than %d pairs: %s", len(small),
                    config.num_preferred + 1, shown)
    _frozen(model.style_embedding, model.enhancer)
    stream = msm_data.user_sets(data.train_urls, n=config.num_preferred, size=config.model.embed_size,
                                seed=config.seed, rank=ctx.rank, world_size=ctx.world_size, users=users)
    step = _Step("step2", config.step2_epochs, config.step2_batch_size, Step2Net(model), stream,
                 _step2_loss(model, pca, ctx), lambda: validate_step2(model, pca, config, data, ctx.device),
                 {"step1_digest": step1_digest(model)})
    return _run_step(step, config, ctx, model)


# ---------------------------------------------------------------- the whole run


@dataclass
class RunSummary:
    """What :func:`train` did: parts run or skipped, best PSNRs, files written."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    best_psnr: dict = field(default_factory=dict)  # part -> dB, NaN when there was nothing to validate on
    model_path: Path | None = None


def train(config: TrainConfig, data: TrainData, out: str | os.PathLike, *, parts: Iterable[str] = PARTS,
          device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
          perceptual: nn.Module | None = None, backbone: Callable[[MSM], object] | None = None,
          on_log: Callable[[str, dict], None] | None = None) -> RunSummary:
    """Run the given parts of the two-step training in order, skipping finished ones.

    Parameters
    ----------
    config : TrainConfig
        The run's settings; a resumed run must use the same (except
        ``RESUMABLE_FIELDS``).
    data : TrainData
        The shards (:meth:`TrainData.from_index`).
    out : path
        Output folder (``ROOT/msm``).
    parts : iterable of {"step1", "pca", "step2"}
        What to run; ``pca`` and ``step2`` need the earlier parts' files.
    device : torch.device or str
        This process's device.
    rank, world_size : int
        This process in its DDP group (:func:`setup_distributed`).
    perceptual : nn.Module, optional
        Frozen perceptual embedding (:func:`model.reference.load_perceptual`);
        without it the perceptual term is off.
    backbone : callable, optional
        Called with the new MSM before step 1 starts (not when resuming) to
        load pretrained ResNet-18 weights (:func:`model.reference.load_backbone`).
    on_log : callable, optional
        ``on_log(part, metrics)`` after every optimiser step and epoch.

    Returns
    -------
    RunSummary

    Raises
    ------
    CheckpointError
        A file in ``out`` that cannot be used, or a part whose input is missing.
    """
    parts = [part for part in PARTS if part in set(parts)]
    out = Path(out)
    device = torch.device(device)
    ctx = Context(out, device, rank, world_size,
                  PerceptualLoss(perceptual.to(device)) if perceptual is not None else None, on_log)
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = MSM(config.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    summary = RunSummary()

    if "step1" in parts:
        fresh = not (out / "step1.pt").exists()
        if fresh and backbone is not None:
            backbone(model)
        state = train_step1(model, config, data, ctx)
        (summary.ran if state["ran"] else summary.skipped).append("step1")
        summary.best_psnr["step1"] = state["best_psnr"] if math.isfinite(state["best_psnr"]) else math.nan
    _barrier(ctx)

    pca = None
    if "pca" in parts or "step2" in parts:
        best1 = out / "step1-best.pt"
        if not best1.exists():
            raise CheckpointError(f"{best1}: no step-1 weights; run step 1 first")
        load_best(best1, model, "step1")
        digest = step1_digest(model)
        pca_path = out / "pca.pt"
        saved = read_checkpoint(pca_path, PCA_FORMAT) if pca_path.exists() else None
        if saved is not None and saved.get("step1_digest") == digest:
            pca = StylePCA.from_state_dict(saved["pca"])
            summary.skipped.append("pca")
        elif "pca" in parts:
            pca = fit_pca(model, config, data, ctx)
            if ctx.main:
                _save(pca_path, {"format": PCA_FORMAT, "step1_digest": digest, "pca": pca.state_dict()})
            summary.ran.append("pca")
        else:
            raise CheckpointError(f"{pca_path}: no PCA for the current step-1 weights; run the pca part first")
    _barrier(ctx)

    if "step2" in parts:
        state = train_step2(model, pca, config, data, ctx)
        (summary.ran if state["ran"] else summary.skipped).append("step2")
        summary.best_psnr["step2"] = state["best_psnr"] if math.isfinite(state["best_psnr"]) else math.nan
        if ctx.main:
            load_best(out / "step2-best.pt", model, "step2")
            summary.model_path = out / "model.pt"
            save_model(summary.model_path, model, pca, config)
    _barrier(ctx)
    return summary


def _barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


# ---------------------------------------------------------------- the finished model


def save_model(path: str | os.PathLike, model: MSM, pca: StylePCA, config: TrainConfig) -> None:
    """Write the finished model: config, every module's weights, the PCA."""
    _save(Path(path), {"format": MODEL_FORMAT, "config": config.to_dict(), "pca": pca.state_dict(),
                       "modules": {name: _cpu_state(model.module(name)) for name in MSM.MODULES}})


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[MSM, StylePCA, TrainConfig]:
    """Read a file of :func:`save_model` into an MSM in eval mode, its PCA and config.

    Raises
    ------
    CheckpointError
        Unreadable, not a model file, or weights that do not fit.
    """
    saved = read_checkpoint(path, MODEL_FORMAT)
    try:
        config = TrainConfig.from_dict(saved["config"])
        pca = StylePCA.from_state_dict(saved["pca"])
        modules = saved["modules"]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: incomplete model file ({type(error).__name__}: {error})") from None
    model = MSM(config.model)
    for name in MSM.MODULES:
        if name not in modules:
            raise CheckpointError(f"{path}: no weights for {name}")
        _load_module(path, model.module(name), modules[name])
    return model.to(device).eval(), pca, config
