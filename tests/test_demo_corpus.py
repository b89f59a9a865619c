"""The demo corpus: content-dependent looks, true originals, and the degrader measured against them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from manifests.workspace import Workspace
from pipeline.imageio import encode_jpeg, encode_png, read_image
from pipeline.replay.server import ReplayServer
from pipeline.stages.crawl.crawler import CrawlOptions
from pipeline.stages.crawl.stage import Network, Source, crawl
from pipeline.stages.demo.corpus import (LOOK_CENTRE, WARM_COOL_THRESHOLD, Style, UserLooks, blue_red_balance,
                                         build_corpus, look_pair, sample_looks)
from pipeline.stages.demo.headroom import look_headroom
from pipeline.stages.demo.truth import write_ground_truth
from pipeline.stages.report.images import ground_truth_path, ground_truth_psnr, psnr
from pipeline.stages.status import flickr_photos

KEY, SECRET = "demo-corpus-key", "demo-corpus-secret"


def flat(rgb: tuple[float, float, float], size: int = 16) -> np.ndarray:
    return np.tile(np.array(rgb, dtype=np.float32), (size, size, 1))


def test_warm_and_cool_photos_of_one_user_get_different_looks():
    warm, cool = flat((0.7, 0.5, 0.3)), flat((0.3, 0.5, 0.7))
    assert blue_red_balance(warm) < WARM_COOL_THRESHOLD < blue_red_balance(cool)
    for looks in sample_looks(4, seed=1):
        assert looks.look_for(warm) is looks.warm and looks.look_for(cool) is looks.cool
        assert looks.warm != looks.cool
        assert not np.allclose(looks.apply(warm), looks.cool.apply(warm), atol=0.02)


def test_look_is_a_deterministic_function_of_content():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (24, 24, 3)).astype(np.float32) * np.array([1.0, 0.8, 0.5], np.float32)
    looks = sample_looks(2, seed=7)[0]
    assert looks.look_for(image) is looks.look_for(image.copy())
    assert looks.look_for(image) is looks.look_for(image * np.float32(0.6))  # exposure does not move it
    np.testing.assert_array_equal(looks.apply(image), looks.apply(image.copy()))
    assert sample_looks(3, seed=7) == sample_looks(3, seed=7)


def test_look_pairs_go_to_two_users_in_both_orders():
    users = sample_looks(4, seed=2)
    assert (users[0].warm, users[0].cool) == (users[1].cool, users[1].warm)
    assert users[0].warm != users[2].warm
    # Opposite looks around the common centre: one is brighter than it, the other darker.
    for looks in users:
        assert (looks.warm.gamma - LOOK_CENTRE.gamma) * (looks.cool.gamma - LOOK_CENTRE.gamma) < 0
        assert (looks.warm.warmth - LOOK_CENTRE.warmth) * (looks.cool.warmth - LOOK_CENTRE.warmth) < 0
    first, second = look_pair(np.random.default_rng(5))
    assert (first.saturation - 1.0) * (second.saturation - 1.0) < 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("corpus")
    nsids = build_corpus(root / "served", users=2, photos_per_user=12, valid_users=1, longest_edge=(340, 420),
                         seed=3, truth=root / "truth")
    return root / "served", root / "truth", nsids


def test_corpus_writes_one_true_original_per_photo_of_the_same_size(corpus):
    served, truth, nsids = corpus
    for nsid in nsids:
        photos = sorted(served.joinpath(nsid).glob("*.jpg"))
        truths = sorted(truth.joinpath(nsid).glob("*.png"))
        assert len(photos) == 12 and [p.stem for p in photos] == [t.stem for t in truths]
        for photo, original in zip(photos, truths):
            assert read_image(photo).as_uint8().shape == read_image(original).as_uint8().shape
    assert not list(served.rglob("*.png"))


def test_corpus_looks_follow_content_of_the_true_original(corpus):
    served, truth, nsids = corpus
    for nsid in nsids:
        info = json.loads((served / nsid / "user.json").read_text())["looks"]
        looks = UserLooks(Style(**info["warm"]), Style(**info["cool"]), info["threshold"])
        chosen = set()
        for original in sorted(truth.joinpath(nsid).glob("*.png")):
            pixels = read_image(original).as_float()
            label = json.loads((served / nsid / f"{original.stem}.json").read_text())["look"]
            expected = "warm" if looks.look_for(pixels) is looks.warm else "cool"
            assert label == expected
            chosen.add(label)
            retouched = read_image(served / nsid / f"{original.stem}.jpg").as_float()
            redone = getattr(looks, label).apply(pixels)
            assert np.abs(retouched - redone).mean() < 0.02  # JPEG and rounding only
        assert chosen == {"warm", "cool"}


def test_corpus_is_deterministic(corpus, tmp_path):
    served, truth, nsids = corpus
    again = build_corpus(tmp_path / "served", users=2, photos_per_user=12, valid_users=1, longest_edge=(340, 420),
                         seed=3, truth=tmp_path / "truth")
    assert again == nsids
    first = next(truth.joinpath(nsids[0]).glob("*.png"))
    assert (tmp_path / "truth" / nsids[0] / first.name).read_bytes() == first.read_bytes()


def test_ground_truth_matches_the_kept_photos_after_a_resized_crawl(corpus, tmp_path):
    served, truth, nsids = corpus
    users = tmp_path / "users.txt"
    users.write_text("\n".join(nsids) + "\n")
    workspace = Workspace(tmp_path / "root")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    with ReplayServer(served, api_key=KEY) as server:
        crawl(workspace, Source(users_file=users), CrawlOptions(num_users=2, per_user=6, size="n", valid_refs=2),
              Network(KEY, SECRET, server.rest_url, retry_base=0.01, timeout=5.0, min_side=100))
    kept = {}
    for nsid in workspace.crawled_users():
        for line in workspace.flickr_manifest(nsid).read().records:
            if line["status"] == "ok":
                kept[(nsid, line["photo_id"])] = line
    assert kept
    assert write_ground_truth(workspace, truth) == len(kept)
    written = sorted(workspace.root.joinpath("ground-truth", "flickr").rglob("*.png"))
    assert len(written) == len(kept)
    for (nsid, photo_id), record in kept.items():
        photo = read_image(workspace.resolve_relative(record["file"])).as_uint8()
        original = read_image(ground_truth_path(workspace, nsid, photo_id)).as_uint8()
        assert photo.shape == original.shape and max(photo.shape[:2]) == 320
    assert write_ground_truth(workspace, truth) == 0  # done work is skipped


def write_photo(workspace: Workspace, relative: str, pixels: np.ndarray) -> str:
    path = workspace.root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(pixels) if relative.endswith(".png") else encode_jpeg(pixels, quality=95))
    return relative


def test_ground_truth_psnr_on_a_tiny_workspace(tmp_path):
    workspace = Workspace(tmp_path)
    rng = np.random.default_rng(1)
    nsid = "12345@N01"
    records, expected_pseudo, expected_retouched = [], [], []
    for index, (pseudo_noise, retouch_shift) in enumerate([(2, 40), (6, 25), (1, 60)]):
        photo_id = str(1000 + index)
        truth = rng.integers(70, 180, (20, 30, 3)).astype(np.uint8)
        pseudo = np.clip(truth.astype(int) + rng.integers(-pseudo_noise, pseudo_noise + 1, truth.shape), 0, 255)
        retouched = np.clip(truth.astype(int) + retouch_shift, 0, 255)
        write_photo(workspace, f"ground-truth/flickr/{nsid}/{photo_id}.png", truth)
        records.append({"photo_id": photo_id, "status": "ok",
                        "file": write_photo(workspace, f"flickr/{nsid}/{photo_id}.png", retouched.astype(np.uint8)),
                        "degraded": {"file": write_photo(workspace, f"degraded/{nsid}/{photo_id}.png",
                                                         pseudo.astype(np.uint8))}})
        expected_pseudo.append(psnr(pseudo.astype(np.uint8), truth))
        expected_retouched.append(psnr(retouched.astype(np.uint8), truth))
    # A kept photo without a pseudo original, and a dropped one, are not measured.
    records.append({"photo_id": "2000", "status": "ok", "file": records[0]["file"]})
    records.append({"photo_id": "2001", "status": "dropped", "file": None, "degraded": records[0]["degraded"]})
    workspace.flickr_manifest(nsid).append(records)

    truth = ground_truth_psnr(workspace, flickr_photos(workspace))
    assert truth.count == 3
    assert np.mean(truth.pseudo) == pytest.approx(np.mean(expected_pseudo))
    assert np.mean(truth.retouched) == pytest.approx(np.mean(expected_retouched))
    assert np.mean(truth.pseudo) > np.mean(truth.retouched)
    assert psnr(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)) == pytest.approx(0.0)


def test_ground_truth_psnr_without_truth_is_empty(tmp_path):
    assert ground_truth_psnr(Workspace(tmp_path), {}).as_dict() == {
        "count": 0, "unreadable": 0, "pseudo_psnr": None, "retouched_psnr": None}


def headroom_workspace(root: Path, degrade) -> tuple[Workspace, Path]:
    """One user, four photos per look (warm: red up, blue down; cool: the reverse); ``degrade(retouched, truth)``."""
    workspace, corpus = Workspace(root), root / "corpus"
    rng = np.random.default_rng(3)
    nsid = "12345@N01"
    records = []
    for index in range(8):
        look = "warm" if index % 2 else "cool"
        photo_id = str(1000 + index)
        truth = rng.integers(40, 200, (24, 24, 3)).astype(np.float64)
        gains = np.array([1.25, 1.0, 0.75]) if look == "warm" else np.array([0.75, 1.0, 1.25])
        retouched = np.clip(truth * gains, 0, 255).astype(np.uint8)
        pseudo = np.clip(degrade(retouched.astype(np.float64), truth), 0, 255).astype(np.uint8)
        write_photo(workspace, f"ground-truth/flickr/{nsid}/{photo_id}.png", truth.astype(np.uint8))
        (corpus / nsid).mkdir(parents=True, exist_ok=True)
        (corpus / nsid / f"{photo_id}.json").write_text(json.dumps({"look": look}))
        records.append({"photo_id": photo_id, "status": "ok",
                        "file": write_photo(workspace, f"flickr/{nsid}/{photo_id}.png", retouched),
                        "degraded": {"file": write_photo(workspace, f"degraded/{nsid}/{photo_id}.png", pseudo)}})
    workspace.flickr_manifest(nsid).append(records)
    return workspace, corpus


def test_look_headroom_survives_a_degrader_that_recovers_the_originals(tmp_path):
    workspace, corpus = headroom_workspace(tmp_path, lambda retouched, truth: truth)
    headroom = look_headroom(workspace, flickr_photos(workspace), corpus)
    assert len(headroom.true_blind) == len(headroom.pseudo_blind) == 8
    assert headroom.true_gain > 5.0
    assert headroom.pseudo_gain == pytest.approx(headroom.true_gain, abs=0.5)
    assert "on the true pairs" in headroom.line()


def test_look_headroom_vanishes_behind_a_content_blind_degrader(tmp_path):
    workspace, corpus = headroom_workspace(tmp_path, lambda retouched, truth: retouched * 0.8 + 10)
    headroom = look_headroom(workspace, flickr_photos(workspace), corpus)
    assert headroom.true_gain > 5.0
    assert abs(headroom.pseudo_gain) < 0.5


def test_look_headroom_without_looks_is_empty(tmp_path):
    workspace, _ = headroom_workspace(tmp_path, lambda retouched, truth: truth)
    headroom = look_headroom(workspace, flickr_photos(workspace), tmp_path / "no-corpus")
    assert not headroom.true_blind and headroom.line().startswith("content: no user")
