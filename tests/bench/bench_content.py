"""Content-aware style prediction in miniature: masked style modeling against content-blind baselines.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. IV. The paper's claim is that a user's
retouching depends on what the photo shows, and that the transformer, given
the user's preferred (original, retouched) pairs and the content of a new
photo, predicts the style for that photo better than the mean preferred
style (Table I's PieNet-like, content-blind ``mean-style``) and better than
the content-similarity ``weighted-average`` of the preferred styles (the
ablation of Table IV). This script builds pseudo-users for whom that is true
by construction, trains the small networks on them with ``model.train`` and
scores the held-out users with ``model.evaluation``:

* **content classes**: random square crops of the bundled sample photographs
  (scikit-image, matplotlib), resized to the model side, are ranked by their
  blue-red balance (:func:`pipeline.stages.demo.corpus.blue_red_balance`,
  the content measure of the demo corpus), which
  overall gain does not change; the lowest third are *warm* (skin, fur,
  coffee, retina), the highest third *cool* (sky, space, blue cloth), and the
  middle third is left out so that the classes are clearly apart;
* **looks**: a user has two retouching looks (:func:`pipeline.stages.demo.corpus.look_pair`,
  the looks of the demo corpus's users), look A for warm crops and look B for
  cool ones, opposite on brightness (gamma), white balance (warmth) and
  saturation, each with a random sign;
  every look pair is given to two users, once in each order, so no
  content-blind style can serve a user (its mean style is the same for both
  orders);
* **users**: ``--users`` training users with equal numbers of warm and cool
  crops, written as ``pie shard`` writes them (``train`` shards, users
  contiguous, ``index.json`` with per-user counts); ``--test-users``
  held-out users with look pairs never seen in training and crops never seen
  in training, in a ``valid`` shard (``valid_ref`` = preferred pool, ``valid``
  = unseen), so step 2 is also validated (and its best epoch chosen) on them.

Training is ``model.train.train`` on the CPU with the small networks at
64 px (embeddings at 32 px), N = 10 preferred pairs, batches of 16, Adam at
3e-4 for both steps (at 1e-3 step 1 learns but the transformer of step 2
does not), no perceptual term and no pretrained backbone.

Mean-style is weak here on purpose: it averages two opposite looks. The
script prints mean PSNR over the test users of identity, mean-style,
weighted-average and msm at N preferred pairs, the margins of msm, the
training and total wall time, and exits with status 1 when msm does not beat
mean-style. About 8 minutes on two idle CPU cores; shards and checkpoints live in
a temporary folder that is removed at the end.

    python tests/bench/bench_content.py [--users 64] [--step1-epochs 4] [--step2-epochs 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset
from PIL import Image

from model.evaluation import Settings, TestUser, aggregate, evaluate_user, format_table, memory_loader
from model.inference import load
from model.networks import MSMConfig
from model.train import TrainConfig, TrainData, train
from pipeline.stages.demo.corpus import Style, blue_red_balance, look_pair, source_photographs
from pipeline.imageio import read_image, shrink_to_max_side

#: Side of the stored crops and of the enhancer (the step-2 embeddings see half of it).
SIDE = 64
#: Photographs are shrunk to this longest side before cropping.
PHOTO_SIDE = 256
#: Crop side as a fraction of the photograph's shorter side.
CROP_RANGE = (0.35, 0.8)
#: Training users per train shard.
USERS_PER_SHARD = 8
CLASSES = ("warm", "cool")


# ---------------------------------------------------------------- content classes


def photographs() -> dict[str, np.ndarray]:
    """The sample photographs, float32 RGB in [0, 1], longest side at most :data:`PHOTO_SIDE`."""
    return {name: shrink_to_max_side(read_image(path).as_float(), PHOTO_SIDE)
            for name, path in sorted(source_photographs().items())}


def random_crops(photos: dict[str, np.ndarray], per_photo: int,
                 rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """``per_photo`` random square crops of each photograph, resized to :data:`SIDE` (float32)."""
    crops = []
    for name, photo in photos.items():
        height, width = photo.shape[:2]
        for _ in range(per_photo):
            side = int(min(height, width) * rng.uniform(*CROP_RANGE))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = photo[top:top + side, left:left + side]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            crops.append((name, cv2.resize(np.ascontiguousarray(crop), (SIDE, SIDE), interpolation=cv2.INTER_AREA)))
    return crops


def content_classes(crops: list[tuple[str, np.ndarray]]) -> tuple[dict[str, list], tuple[float, float]]:
    """The warmest and the coolest third of the crops by :func:`blue_red_balance`, and the two thresholds.

    The middle third is dropped.
    """
    balance = np.array([blue_red_balance(crop) for _, crop in crops])
    low, high = np.quantile(balance, [1 / 3, 2 / 3])
    return {"warm": [crop for crop, value in zip(crops, balance) if value <= low],
            "cool": [crop for crop, value in zip(crops, balance) if value >= high]}, (float(low), float(high))


def print_split(classes: dict, thresholds: tuple[float, float]) -> None:
    """Crops per photograph in each class."""
    print(f"content classes by blue-red balance: warm <= {thresholds[0]:+.3f}, cool >= {thresholds[1]:+.3f} "
          f"(middle third left out)")
    for label in CLASSES:
        counts = Counter(name for name, _ in classes[label])
        listed = ", ".join(f"{Path(name).stem} {count}" for name, count in counts.most_common())
        print(f"  {label}: {len(classes[label])} crops ({listed})")


def held_out(classes: dict, fraction: float, rng: np.random.Generator) -> tuple[dict, dict]:
    """Each class split at random into (training crops, test crops), ``fraction`` of them for testing."""
    train_crops, test_crops = {}, {}
    for label, crops in classes.items():
        order = rng.permutation(len(crops))
        cut = int(round(len(crops) * fraction))
        test_crops[label] = [crops[i][1] for i in order[:cut]]
        train_crops[label] = [crops[i][1] for i in order[cut:]]
    return train_crops, test_crops


# ---------------------------------------------------------------- users


@dataclasses.dataclass
class PseudoUser:
    """A user's pairs: uint8 (n, 3, SIDE, SIDE) inputs and targets, and each pair's split."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    splits: list[str]


def _uint8(images: list[np.ndarray]) -> torch.Tensor:
    """float32 HxWx3 images -> uint8 (n, 3, H, W)."""
    return torch.from_numpy(np.round(np.stack(images) * 255.0).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def make_user(name: str, looks: tuple[Style, Style], crops: dict, splits: dict[str, int],
              rng: np.random.Generator) -> PseudoUser:
    """A user with ``splits[split]`` pairs per split (half warm, half cool, shuffled).

    Warm crops are retouched with ``looks[0]``, cool ones with ``looks[1]``.
    """
    inputs, targets, labels = [], [], []
    for split, count in splits.items():
        chosen = [(label, crops[label][i]) for label in CLASSES
                  for i in rng.choice(len(crops[label]), count // 2, replace=False)]
        for index in rng.permutation(len(chosen)):
            label, crop = chosen[index]
            inputs.append(crop)
            targets.append(looks[CLASSES.index(label)].apply(crop))
            labels.append(split)
    return PseudoUser(name, _uint8(inputs), _uint8(targets), labels)


def make_users(crops: dict, count: int, splits: dict[str, int], prefix: int,
               rng: np.random.Generator) -> list[PseudoUser]:
    """``count`` users (rounded down to even): each look pair once in each order."""
    users = []
    for _ in range(count // 2):
        looks = look_pair(rng)
        for order in (looks, looks[::-1]):
            users.append(make_user(f"{prefix + len(users)}@N01", order, crops, splits, rng))
    return users


# ---------------------------------------------------------------- shards


def _jpeg(image: torch.Tensor) -> bytes:
    """A uint8 (3, H, W) image as JPEG bytes (quality 95)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _meta(user: str, photo_id: str, split: str) -> dict:
    """The ``json`` member (schema ``pie.sample/1``) of a Flickr-like pair."""
    return {"schema": "pie.sample/1", "user": user, "source": "flickr", "photo_id": photo_id, "name": None,
            "rule": None, "split": split, "license": None, "owner_name": "", "title": "", "page_url": None,
            "input_sha256": "0" * 64, "target_sha256": "0" * 64, "degrader": None}


def write_shard(path: Path, split: str, users: list[PseudoUser]) -> dict:
    """One shard of ``users`` (contiguous, keys ``<user>/<photo id>``); returns its ``index.json`` entry."""
    counts = {}
    with webdataset.TarWriter(str(path), encoder=False) as tar:
        for user in users:
            for index, pair_split in enumerate(user.splits):
                photo_id = str(50_000_000_000 + index)
                tar.write({"__key__": f"{user.name}/{photo_id}", "input.jpg": _jpeg(user.inputs[index]),
                           "target.jpg": _jpeg(user.targets[index]),
                           "json": json.dumps(_meta(user.name, photo_id, pair_split)).encode()})
            counts[user.name] = len(user.splits)
    return {"name": path.name, "split": split, "samples": sum(counts.values()), "users": list(counts),
            "user_samples": counts, "bytes": path.stat().st_size, "sha256": "0" * 64}


def write_shards(folder: Path, train_users: list[PseudoUser], test_users: list[PseudoUser]) -> Path:
    """``train`` shards of :data:`USERS_PER_SHARD` users, one ``valid`` shard, and ``index.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [write_shard(folder / f"train-{number:06d}.tar", "train", train_users[start:start + USERS_PER_SHARD])
               for number, start in enumerate(range(0, len(train_users), USERS_PER_SHARD))]
    entries.append(write_shard(folder / "valid-000000.tar", "valid", test_users))
    index = folder / "index.json"
    index.write_text(json.dumps({"schema": "pie.shard-index/1", "shards": entries}), encoding="utf-8")
    return index


# ---------------------------------------------------------------- training and evaluation


def print_epoch(part: str, metrics: dict) -> None:
    """``on_log`` callback: one line per finished epoch."""
    row = metrics.get("row")
    if row is None:
        return
    valid = "no validation" if math.isnan(row["valid_psnr"]) else f"valid {row['valid_psnr']:.2f} dB"
    print(f"  {part} epoch {row['epoch']}: {row['global_step']} steps, loss {row['loss']:.4f}, {valid}, "
          f"{row['seconds']:.0f} s", flush=True)


def evaluation_user(user: PseudoUser) -> TestUser:
    """The evaluation's view of a held-out user: ``valid_ref`` pairs are the pool, ``valid`` pairs unseen."""
    pool = [i for i, split in enumerate(user.splits) if split == "valid_ref"]
    unseen = [i for i, split in enumerate(user.splits) if split == "valid"]
    keys = [f"{user.name}/{i}" for i in range(len(user.splits))]
    return TestUser(user.name, keys, memory_loader(user.inputs, user.targets), pool, unseen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=64, help="Training users (even: look pairs in both orders).")
    parser.add_argument("--pairs", type=int, default=24, help="Pairs per training user (half warm, half cool).")
    parser.add_argument("--test-users", type=int, default=4, help="Held-out users (even).")
    parser.add_argument("--test-pairs", type=int, default=20, help="Preferred pool and unseen pairs per test user.")
    parser.add_argument("--num-preferred", type=int, default=10, help="N, preferred pairs (training and test).")
    parser.add_argument("--draws", type=int, default=2, help="Preferred sets drawn per test user.")
    parser.add_argument("--step1-epochs", type=int, default=4)
    parser.add_argument("--step2-epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="Adam, both steps.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(args.seed)
    crops, thresholds = content_classes(random_crops(photographs(), 180, rng))
    print_split(crops, thresholds)
    train_crops, test_crops = held_out(crops, 0.2, rng)
    train_users = make_users(train_crops, args.users, {"train": args.pairs}, 10_000_000, rng)
    test_users = make_users(test_crops, args.test_users, {"valid_ref": args.test_pairs, "valid": args.test_pairs},
                            20_000_000, rng)
    print(f"{len(train_users)} training users x {args.pairs} pairs, {len(test_users)} test users x "
          f"{args.test_pairs} + {args.test_pairs} pairs, {SIDE} px; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)

    config = TrainConfig(model=dataclasses.replace(MSMConfig.small(), image_size=SIDE, embed_size=SIDE // 2),
                         step1_epochs=args.step1_epochs, step2_epochs=args.step2_epochs, step1_batch_size=16,
                         step2_batch_size=16, learning_rate=args.learning_rate, num_preferred=args.num_preferred,
                         valid_preferred=args.num_preferred, valid_pairs_per_user=0, shuffle_buffer=512,
                         num_workers=0, seed=args.seed, save_every=1_000_000, mixed_precision=False)
    with tempfile.TemporaryDirectory(prefix="pie-bench-content-") as folder:
        index = write_shards(Path(folder) / "shards", train_users, test_users)
        training_started = time.perf_counter()
        train(config, TrainData.from_index(index), Path(folder) / "msm", device="cpu", on_log=print_epoch)
        training = time.perf_counter() - training_started
        model, pca = load(Path(folder) / "msm" / "model.pt")

    settings = Settings(num_preferred=(args.num_preferred,), draws=args.draws, size=SIDE, seed=args.seed, examples=0)
    summary = aggregate([evaluate_user(model, pca, evaluation_user(user), settings) for user in test_users], settings)
    print(format_table(summary))
    psnr = {method: scores["psnr"]["mean"] for method, scores in summary["table"][str(args.num_preferred)].items()}
    print(f"mean PSNR over {len(test_users)} test users, N = {args.num_preferred}: "
          + ", ".join(f"{method} {value:.2f} dB" for method, value in psnr.items()))
    print(f"msm - mean-style {psnr['msm'] - psnr['mean-style']:+.2f} dB, "
          f"msm - weighted-average {psnr['msm'] - psnr['weighted-average']:+.2f} dB")
    print(f"training {training:.0f} s, total {time.perf_counter() - started:.0f} s")
    margin = psnr["msm"] - psnr["mean-style"]
    if margin <= 0:
        print(f"FAIL: msm does not beat mean-style ({psnr['msm']:.2f} dB <= {psnr['mean-style']:.2f} dB): "
              f"the transformer did not learn to use the content of the photo")
        return 1
    print(f"msm beats mean-style by {margin:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
