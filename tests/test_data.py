"""The step-1 and step-2 WebDataset loaders (model/data.py) on small shards written here."""

from __future__ import annotations

import io
import json
import logging
import pickle
import random
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
import webdataset
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from model import augment as aug
from model.data import collate, pairs, shard_urls, user_sets

# torchvision 0.29 deprecates its image decoders (model.data's only permitted ones) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SIZE = 16
HEIGHT, WIDTH = 24, 32

# (user, number of pairs) per shard. Users are contiguous; "D" is split across
# shards 2 and 3 as `pie shard` does for a user too big for one shard.
LAYOUT = [
    [("10000001@N01", 5), ("10000002@N01", 3)],
    [("10000003@N01", 4), ("rules-CLAHE", 3)],
    [("10000004@N01", 6)],
    [("10000004@N01", 2), ("10000005@N01", 1)],
    [("rules-LIME", 4)],
]


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]))
    assert ok
    return data.tobytes()


def _meta(user: str, item: str) -> dict:
    rules = user.startswith("rules-")
    return {"schema": "pie.sample/1", "user": user, "source": "rules" if rules else "flickr",
            "photo_id": None if rules else item, "name": item if rules else None,
            "rule": user[len("rules-"):] if rules else None, "split": "train",
            "license": None if rules else {"id": "4", "name": "CC BY 2.0", "url": "https://example.org"},
            "owner_name": "" if rules else "someone", "page_url": None,
            "input_sha256": "0" * 64, "target_sha256": "1" * 64}


def write_shards(folder, layout=LAYOUT, *, spoil=None):
    """Write shards of `layout`; `spoil(key, sample)` may alter a sample. Returns (urls, {key: arrays})."""
    rng = np.random.default_rng(0)
    urls, arrays, counters = [], {}, Counter()
    for number, users in enumerate(layout):
        url = str(folder / f"train-{number:06d}.tar")
        with webdataset.TarWriter(url, encoder=False) as tar:
            for user, count in users:
                for _ in range(count):
                    counters[user] += 1
                    item = f"a{counters[user]:04d}" if user.startswith("rules-") else str(1000 + counters[user])
                    key = f"{user}/{item}"
                    if user.startswith("rules-"):
                        source = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
                        target = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
                        sample = {"input.png": _png(source), "target.png": _png(target)}
                    else:
                        source = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
                        target = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
                        sample = {"input.jpg": _jpeg(source), "target.jpg": _jpeg(target)}
                    sample = {"__key__": key, **sample, "json": json.dumps(_meta(user, item)).encode()}
                    if spoil is not None:
                        spoil(key, sample)
                    tar.write(sample)
                    arrays[key] = (source, target)
        urls.append(url)
    return urls, arrays


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


def _user(key: str) -> str:
    return key.rsplit("/", 1)[0]


def _epoch_keys(make, *, field):
    """Keys of one epoch read by 2 ranks x 2 DataLoader workers, and every sample seen."""
    keys, samples = [], []
    for rank in (0, 1):
        loader = DataLoader(make(rank=rank, world_size=2), num_workers=2, batch_size=None)
        for sample in loader:
            keys.append(field(sample))
            samples.append(sample)
    return keys, samples


# ---------------------------------------------------------------- pairs


def test_pairs_each_sample_once_per_epoch_across_ranks_and_workers(shards):
    urls, arrays = shards
    keys, samples = _epoch_keys(lambda **kw: pairs(urls, size=SIZE, shuffle_buffer=8, **kw),
                                field=lambda sample: sample[2]["__key__"])
    assert Counter(keys) == Counter(arrays.keys())
    for source, target, meta in samples:
        for image in (source, target):
            assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert meta["user"] == _user(meta["__key__"]) and meta["schema"] == "pie.sample/1"


def test_pairs_same_seed_same_stream_other_epoch_other_order(shards):
    urls, _ = shards

    def epoch(**kw):
        stream = list(pairs(urls, size=SIZE, shuffle_buffer=8, seed=3, **kw))
        return [meta["__key__"] for _, _, meta in stream], torch.stack([x for x, _, _ in stream])

    keys, inputs = epoch(epoch=0)
    again_keys, again_inputs = epoch(epoch=0)
    other_keys, other_inputs = epoch(epoch=1)
    assert keys == again_keys and torch.equal(inputs, again_inputs)
    assert sorted(other_keys) == sorted(keys) and other_keys != keys

    dataset = pickle.loads(pickle.dumps(pairs(urls, size=SIZE, shuffle_buffer=8, seed=3)))  # as spawned workers get it
    dataset.set_epoch(1)
    assert [meta["__key__"] for _, _, meta in dataset] == other_keys


def test_pairs_without_augment_are_plain_resizes(shards):
    urls, arrays = shards
    seen = 0
    for source, target, meta in pairs(urls, size=SIZE, augment=False):
        if meta["source"] != "rules":
            continue
        reference_source, reference_target = arrays[meta["__key__"]]
        for image, reference, scale in ((source, reference_source, 65535.0), (target, reference_target, 255.0)):
            expected = TF.resize(torch.from_numpy(reference.astype(np.float32) / scale).permute(2, 0, 1),
                                 [SIZE, SIZE], antialias=True)
            torch.testing.assert_close(image, expected, atol=1e-5, rtol=0)
        seen += 1
    assert seen == 7


def test_pairs_accept_a_brace_pattern_and_batch_with_collate(shards):
    urls, arrays = shards
    pattern = urls[0].replace("000000.tar", "{000000..000004}.tar")
    loader = DataLoader(pairs(pattern, size=SIZE, shuffle_buffer=4), batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert batches[0][0].shape == (4, 3, SIZE, SIZE) and len(batches[0][2]) == 4
    assert Counter(meta["__key__"] for batch in batches for meta in batch[2]) == Counter(arrays.keys())


def test_explicit_rank_wins_over_environment(shards, monkeypatch):
    urls, arrays = shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for dataset in (pairs(urls, size=SIZE, rank=0, world_size=1), pairs(urls, size=SIZE)):
        assert Counter(meta["__key__"] for _, _, meta in dataset) == Counter(arrays.keys())
    with pytest.raises(ValueError):
        pairs(urls, rank=2, world_size=2)


# ---------------------------------------------------------------- user sets


def test_user_sets_every_pair_is_the_target_once_and_preferred_come_from_its_group(shards):
    urls, arrays = shards
    n = 3
    keys, samples = _epoch_keys(lambda **kw: user_sets(urls, n, size=SIZE, **kw), field=lambda s: s["key"])
    assert Counter(keys) == Counter(arrays.keys())
    shard_of_d_tail = {f"10000004@N01/{1000 + i}" for i in (7, 8)}  # the part of D in shard 3
    copies = 0
    for sample in samples:
        key, user, preferred = sample["key"], sample["user"], sample["preferred_keys"]
        assert sample["inputs"].shape == sample["targets"].shape == (n + 1, 3, SIZE, SIZE)
        assert sample["inputs"].dtype == torch.float32 and sample["padding_mask"].dtype == torch.bool
        assert sample["padding_mask"].shape == (n + 1,) and user == _user(key) and len(preferred) == n
        assert all(_user(other) == user for other in preferred)
        if user.startswith("rules-") or user == "10000005@N01":  # rule user / one-pair group: copies
            assert preferred == [key] * n
            assert sample["padding_mask"].tolist() == [True] * (n - 1) + [False, False]
            continue
        assert not sample["padding_mask"].any()
        assert key not in preferred[:-1]
        copies += preferred[-1] == key
        if user == "10000001@N01":  # 4 other pairs >= n: drawn without replacement
            others = preferred[:-1] if preferred[-1] == key else preferred
            assert len(set(others)) == len(others)
        if user == "10000004@N01":  # one group per shard
            assert (key in shard_of_d_tail) == all(other in shard_of_d_tail for other in preferred)
    flickr = sum(not s["user"].startswith("rules-") and s["user"] != "10000005@N01" for s in samples)
    assert 0 < copies < flickr  # the last preferred pair is a copy of the target about half the time


def test_user_sets_without_augment_are_plain_and_copy_free(shards):
    urls, arrays = shards
    for sample in user_sets(urls, 2, size=SIZE, augment=False):
        if sample["user"].startswith("rules-"):
            assert all(torch.equal(sample["inputs"][i], sample["inputs"][-1]) for i in range(2))
            assert all(torch.equal(sample["targets"][i], sample["targets"][-1]) for i in range(2))
        elif sample["user"] != "10000005@N01":
            assert sample["key"] not in sample["preferred_keys"]


def test_user_sets_batch_with_default_collate_and_collate(shards):
    urls, _ = shards
    samples = list(user_sets(urls, 2, size=SIZE, seed=1))[:3]
    for batched in (default_collate(samples), collate(samples)):
        assert batched["inputs"].shape == (3, 3, 3, SIZE, SIZE) and batched["padding_mask"].shape == (3, 3)
        assert batched["user"] == [s["user"] for s in samples]
    assert collate(samples)["preferred_keys"] == [s["preferred_keys"] for s in samples]


def test_user_sets_same_seed_same_stream(shards):
    urls, _ = shards
    first, second = (list(user_sets(urls, 2, size=SIZE, seed=5)) for _ in range(2))
    assert [s["key"] for s in first] == [s["key"] for s in second]
    assert all(torch.equal(a["inputs"], b["inputs"]) for a, b in zip(first, second))
    assert [s["key"] for s in user_sets(urls, 2, size=SIZE, seed=5, epoch=1)] != [s["key"] for s in first]


# ---------------------------------------------------------------- bad samples and shards


BAD = "10000003@N01/1002"


@pytest.mark.parametrize("spoil, reason", [
    (lambda sample: sample.update({"target.jpg": b"not an image"}), "cannot decode target.jpg"),
    (lambda sample: sample.update({"target.jpg": sample["target.jpg"][:200]}), "cannot decode target.jpg"),
    (lambda sample: sample.pop("input.jpg"), "input"),
    (lambda sample: sample.update({"json": b"{not json"}), "cannot decode json"),
    (lambda sample: sample.update({"json": b"[1, 2]"}), "json member is not an object"),
])
@pytest.mark.parametrize("loader", ["pairs", "user_sets"])
def test_a_bad_sample_is_skipped_with_one_warning(tmp_path, caplog, spoil, reason, loader):
    urls, arrays = write_shards(tmp_path, spoil=lambda key, sample: spoil(sample) if key == BAD else None)
    if loader == "pairs":
        dataset, key_of = pairs(urls, size=SIZE), (lambda sample: sample[2]["__key__"])
    else:
        dataset, key_of = user_sets(urls, 2, size=SIZE), (lambda sample: sample["key"])
    with caplog.at_level(logging.WARNING, logger="pie.model.data"):
        keys = [key_of(sample) for sample in DataLoader(dataset, num_workers=0, batch_size=None)]
    assert Counter(keys) == Counter(key for key in arrays if key != BAD)
    records = [r for r in caplog.records if r.name == "pie.model.data"]
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert BAD in message and urls[1] in message and reason in message


def test_a_truncated_shard_keeps_the_epoch_going(tmp_path, caplog):
    urls, arrays = write_shards(tmp_path)
    data = open(urls[2], "rb").read()
    open(urls[2], "wb").write(data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="pie.model.data"):
        keys = {meta["__key__"] for _, _, meta in pairs(urls, size=SIZE)}
    assert keys >= {key for key in arrays if not key.startswith("10000004@N01/")}
    assert any(urls[2] in r.getMessage() for r in caplog.records if r.name == "pie.model.data")


# ---------------------------------------------------------------- shard index


def test_shard_urls_reads_the_index_beside_the_shards(tmp_path):
    shards = [{"name": f"{split}-{i:06d}.tar", "split": split, "samples": 3, "users": ["10000001@N01"],
               "bytes": 100, "sha256": "0" * 64} for split, i in (("train", 0), ("train", 1), ("valid", 0))]
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"schema": "pie.shard-index/1", "shards": shards}))
    assert shard_urls(tmp_path, "train") == [f"{tmp_path}/train-000000.tar", f"{tmp_path}/train-000001.tar"]
    assert shard_urls(index, "valid") == [f"{tmp_path}/valid-000000.tar"]
    with pytest.raises(ValueError):
        shard_urls(tmp_path, "valid_ref")
    index.write_text(json.dumps({"shards": [{**shards[0], "name": "../elsewhere.tar"}]}))
    with pytest.raises(ValueError):
        shard_urls(tmp_path, "train")


# ---------------------------------------------------------------- augmentations


def test_views_cover_the_same_scene_part_at_any_size():
    rng = random.Random(0)
    image = torch.rand(3, 40, 60)
    half = TF.resize(image, [20, 30], antialias=True)
    for _ in range(20):
        view = aug.random_view(rng)
        assert aug.MIN_CROP_RATIO <= view.height <= 1 and view.top + view.height <= 1
        big, small = aug.render(image, view, 10), aug.render(half, view, 10)
        assert big.shape == (3, 10, 10) and float((big - small).abs().mean()) < 0.05
    flipped = aug.render(image, aug.View(hflip=True, transpose=True), 12)
    torch.testing.assert_close(flipped, aug.resize(image, 12).flip(2).transpose(1, 2))


def test_colour_jitter_keeps_range_and_saturation_factor_one_is_identity():
    image = torch.rand(3, 8, 8)
    torch.testing.assert_close(aug.adjust_saturation(image, 1.0), image)
    grey = aug.adjust_saturation(image, 0.0)
    torch.testing.assert_close(grey, image.amax(0, keepdim=True).expand_as(image))
    out = aug.color_jitter(image, random.Random(1))
    assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 1
