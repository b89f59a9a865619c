"""A workspace in which every stage has left something, for ``pie status`` and ``pie report``.

Built on :func:`shard_fixtures.build_workspace` (three complete users of five
photos, two rules on three originals), plus: a user with ground truth (real
photographs: the true original, a retouched version and a pseudo original
close to the truth), a short user, a missing user, a user still pending, one
prepared original that failed and one rule output that failed, a tiny DSN
checkpoint under which some pseudo originals are stale, a degrader loss log,
a shard index, the MSM trainer's ``metrics.csv`` and one evaluation run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import shard_fixtures
from manifests.workspace import Workspace
from pipeline.imageio import encode_jpeg, encode_png
from pipeline.stages.shard.write import build_index

PER_USER = 5
TRUTH_USER = "48600004@N04"
SHORT_USER = "48600005@N05"
MISSING_USER = "48600006@N06"
PENDING_USER = "48600007@N07"
#: Complete users of the shard fixture, then the ground-truth user.
COMPLETE_USERS = (*shard_fixtures.USERS, TRUTH_USER)
#: Pseudo originals of the shard fixture made by another degrader than dsn.pt (all of them).
STALE = len(shard_fixtures.USERS) * shard_fixtures.PHOTOS_PER_USER
MSM_PSNR = {"step1": (20.5, 21.75), "step2": (23.25,)}
EVAL_PSNR = {"48600003@N03": {"msm": [25.0, 27.0], "identity": [20.0, 20.0]},
             "48600008@N08": {"msm": [23.0, 23.0], "identity": [18.0, 22.0]}}


def _real_photos(count: int) -> list[np.ndarray]:
    from PIL import Image
    from skimage import data

    photos = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    return [np.asarray(Image.fromarray(photo).resize((64, 48))) for photo in photos[:count]]


def _retouched(truth: np.ndarray) -> np.ndarray:
    """A strong look: brighter, warmer, gamma 0.6."""
    scaled = (truth / 255.0) ** 0.6 * np.array([1.1, 1.0, 0.8])
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def _pseudo(truth: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-3, 4, truth.shape)
    return np.clip(truth.astype(int) + noise, 0, 255).astype(np.uint8)


def _degrader(workspace: Workspace) -> str:
    """Write a tiny DSN training checkpoint as ``ROOT/degrader/dsn.pt``; return its weights digest."""
    import torch

    from degrader.dsn import DSN, DSNConfig
    from degrader.train import CHECKPOINT_FORMAT, weights_digest

    torch.manual_seed(0)
    config = DSNConfig.tiny()
    weights = DSN(config).state_dict()
    path = workspace.degrader_checkpoint()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"model": dataclasses.asdict(config)}, "model": weights}, path)
    return weights_digest(weights)


def build(root: Path) -> Workspace:
    """The workspace of the module docstring (about a second, most of it the DSN)."""
    workspace = shard_fixtures.build_workspace(root)
    digest = _degrader(workspace)
    records = []
    for index, truth in enumerate(_real_photos(PER_USER)):
        photo_id = str(7000 + index)
        truth_path = workspace.root / "ground-truth" / "flickr" / TRUTH_USER / f"{photo_id}.png"
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        truth_path.write_bytes(encode_png(truth))
        record = shard_fixtures.photo_record(workspace, TRUTH_USER, photo_id, "train", encode_jpeg(_retouched(truth)))
        record["license"] = {"id": "9", "name": "Public Domain Dedication (CC0)",
                             "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
        record.update(width=64, height=48)
        records += [record, shard_fixtures.degrade_record(workspace, record, encode_png(_pseudo(truth, index)), "png",
                                                          model=digest)]
    workspace.flickr_manifest(TRUTH_USER).append(records)

    short = [shard_fixtures.photo_record(workspace, SHORT_USER, str(8000 + index), "train",
                                         encode_jpeg(_real_photos(1)[0])) for index in range(2)]
    failed = {**short[0], "photo_id": "8010", "status": "failed", "reason": "HTTP 503", "file": None,
              "sha256": None, "width": None, "height": None, "bytes": None}
    rejected = {**failed, "photo_id": "8011", "status": "rejected", "reason": "too small (100x80)"}
    workspace.flickr_manifest(SHORT_USER).append([*short, failed, rejected])
    workspace.flickr_users_manifest().append([
        *[{"schema": "pie.flickr-user/1", "user": nsid, "status": "complete", "photos_ok": PER_USER}
          for nsid in COMPLETE_USERS],
        {"schema": "pie.flickr-user/1", "user": SHORT_USER, "status": "short", "photos_ok": 2},
        {"schema": "pie.flickr-user/1", "user": MISSING_USER, "status": "missing", "reason": "User not found"}])
    listing = workspace.flickr_listing(PENDING_USER)
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(json.dumps({"size": "z", "photos": []}))

    workspace.prepared_manifest().append(
        [{"name": name, "status": "ok", "file": f"fivek/{name}.png"} for name in shard_fixtures.IMAGES]
        + [{"name": "a0009", "status": "failed", "reason": "not an image", "file": None}])
    cold = workspace.rules_manifest("cold-tone")
    latest = cold.read().records[-1]
    cold.append([{**latest, "status": "failed", "reason": "boom", "file": None}])  # a0003 failed at last

    (workspace.degrader_checkpoint().parent / "dsn.metrics.jsonl").write_text(
        "".join(json.dumps({"step": step, "loss": 100.0 / step}) + "\n" for step in (1, 2, 3, 2, 4)))

    states = [{"name": "train-000000.tar", "split": "train", "samples": 16, "users": ["48600001@N01", "rules-punch"],
               "user_samples": {}, "bytes": 4096, "sha256": "a" * 64},
              {"name": "valid-000000.tar", "split": "valid", "samples": 5, "users": ["48600003@N03"],
               "user_samples": {}, "bytes": 1024, "sha256": "b" * 64}]
    workspace.shards_dir().mkdir(parents=True, exist_ok=True)
    (workspace.shards_dir() / "index.json").write_text(json.dumps(build_index(states, ["x/1"])))

    msm = workspace.root / "msm"
    msm.mkdir()
    lines = ["step,epoch,global_step,lr,loss,l1,perceptual,tv,images,seconds,images_per_s,valid_psnr,skipped"]
    global_step = 0
    for name, values in MSM_PSNR.items():
        for epoch, value in enumerate(values, start=1):
            global_step += 10
            lines.append(f"{name},{epoch},{global_step},0.0001,{1.0 / epoch},,,,40,1.0,40.0,{value},0")
    (msm / "metrics.csv").write_text("\n".join(lines) + "\n")
    (msm / "step1.pt").write_bytes(b"")

    run = workspace.root / "evaluation" / "0123456789abcdef"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"checkpoint": {"path": str(msm / "model.pt"), "sha256": "c" * 64}}))
    (run / "users.jsonl").write_text("".join(
        json.dumps({"user": user, "unseen": 3, "skipped": [],
                    "scores": {"2": {method: {"psnr": values, "ssim": [0.9, 0.9], "delta_e": [5.0, 5.0]}
                                     for method, values in methods.items()}}}) + "\n"
        for user, methods in EVAL_PSNR.items()))
    return workspace
