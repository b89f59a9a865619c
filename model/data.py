"""WebDataset loaders for the two training steps of masked style modeling.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III. Step 1 trains the style embedding and
the stylized enhancer on single (input, target) pairs at 512 x 512
(:func:`pairs`); step 2 trains the content embedding, masked token and
transformer on one user's preferred pairs plus one masked pair at 256 x 256
(:func:`user_sets`).

Shards are the tar files ``pie shard`` writes (``{train,valid}-NNNNNN.tar``
beside ``index.json``; :func:`shard_urls` lists one split). A sample is one
pair: key ``<nsid>/<photo_id>`` or ``rules-<RULE>/<name>``, members
``input.<ext>``, ``target.<ext>`` (jpg, jpeg, png or webp; 8- or 16-bit) and
``json`` (schema ``pie.sample/1``). Samples of one user are contiguous.

Both loaders are ``torch.utils.data.IterableDataset`` objects built from the
``webdataset`` library's own stages. One epoch reads every shard exactly once
across all ranks and DataLoader workers:

1. the url list is shuffled from ``(seed, epoch)`` only, identically on every
   rank;
2. rank ``r`` of ``world_size`` keeps shards ``r, r + world_size, ...``
   (``split_by_node`` style, but with explicit ``rank``/``world_size``; the
   library's own ``split_by_node`` prefers the ``RANK``/``WORLD_SIZE``
   environment variables over anything passed in);
3. ``webdataset.split_by_worker`` gives DataLoader worker ``w`` of ``k`` every
   ``k``-th of those.

So every sample is seen exactly once per epoch and none is skipped (other than
bad ones, below). A rank or worker may receive no shard when there are fewer
shards than ranks x workers; ranks may receive different numbers of samples,
which a DDP trainer has to allow for. Randomness (sample shuffle,
augmentation) comes from generators seeded from ``(seed, epoch, rank,
worker)``: the same values give the same stream, another epoch another one.
Create the loaders after ``torch.distributed.init_process_group`` so the
default rank and world size are the group's; call :meth:`ShardStream.set_epoch`
before each epoch's ``iter()`` (not seen by ``persistent_workers`` workers).

A bad sample (an undecodable or unsupported image, a missing member, a bad
``json``) is skipped with one ``logging`` warning on logger ``pie.model.data``
naming its key and shard; an unreadable or truncated shard is warned about and
the rest of it skipped. Neither stops the epoch.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.utils.data
import webdataset
from torchvision.io import ImageReadMode, decode_image

from manifests.samples import SAMPLE_SCHEMA, SHARD_INDEX_SCHEMA, SHARD_SPLITS

from . import augment as aug

log = logging.getLogger("pie.model.data")

#: Image member extensions the loaders decode (torchvision's decoders).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

#: Values of a sample's ``json["source"]``.
SOURCES = ("flickr", "rules")

#: Name of the shard index beside the shards.
INDEX_NAME = "index.json"


# ---------------------------------------------------------------- shard lists


def shard_entries(index: str | os.PathLike, split: str) -> list[dict]:
    """The entries of one split's shards in ``index.json``, each with its ``url`` added.

    Parameters
    ----------
    index : str or path-like
        ``index.json`` itself or the folder (path or URL) holding it and the
        shards. Read with ``webdataset.gopen``, so any location the shards can
        be read from works here too.
    split : {"train", "valid"}
        The shard split (``valid_ref`` pairs live in ``valid`` shards).

    Returns
    -------
    list of dict
        In index order: ``name``, ``split``, ``samples``, ``users`` (names, in
        shard order), ``user_samples`` (samples per user; absent from indexes
        written before it existed), ``bytes``, ``sha256`` and ``url``
        (``<folder>/<name>``).

    Raises
    ------
    ValueError
        Unknown split, not a shard index, or a shard name that is not a plain
        file name.
    """
    if split not in SHARD_SPLITS:
        raise ValueError(f"split must be one of {', '.join(SHARD_SPLITS)}, not {split!r}")
    location = os.fspath(index).rstrip("/")
    if not location.endswith(".json"):
        location = f"{location}/{INDEX_NAME}"
    with webdataset.gopen(location, "rb") as stream:
        document = json.load(stream)
    if not isinstance(document, dict) or not isinstance(document.get("shards"), list):
        raise ValueError(f"{location}: not a shard index (no 'shards' list)")
    if document.get("schema", SHARD_INDEX_SCHEMA) != SHARD_INDEX_SCHEMA:
        raise ValueError(f"{location}: schema {document['schema']!r}, expected {SHARD_INDEX_SCHEMA!r}")
    folder = location.rpartition("/")[0]
    entries = []
    for shard in document["shards"]:
        if not isinstance(shard, dict) or shard.get("split") != split:
            continue
        name = shard.get("name")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{location}: shard name {name!r} is not a plain file name")
        entries.append({**shard, "url": f"{folder}/{name}" if folder else name})
    return entries


def shard_urls(index: str | os.PathLike, split: str) -> list[str]:
    """The urls of one split's shards, in index order; see :func:`shard_entries`."""
    return [entry["url"] for entry in shard_entries(index, split)]


def _expand(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """A url list from a list of paths/URLs or one brace pattern (``train-{000000..000009}.tar``)."""
    if isinstance(urls, (str, os.PathLike)):
        expanded = webdataset.shardlists.expand_urls(os.fspath(urls))
    else:
        expanded = [os.fspath(url) for url in urls]
    if not expanded:
        raise ValueError("no shard urls given")
    return expanded


# ---------------------------------------------------------------- seeding and splitting


def _derive_seed(*parts) -> int:
    """A 64-bit seed from the given parts (stable across processes and Python runs)."""
    text = "/".join(str(part) for part in ("pie.model.data", *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torch.distributed's when initialised, else 0 of 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    return int(rank), int(world_size)


def _split_by_rank(src: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    """``webdataset.split_by_node`` with the rank and world size given, not looked up."""
    yield from itertools.islice(src, rank, None, world_size)


# ---------------------------------------------------------------- decoding and bad samples


class _BadSample(ValueError):
    """A sample that cannot be used; the message says why in one line."""


def _one_line(exn: BaseException) -> str:
    text = str(exn).strip().splitlines()
    return f"{type(exn).__name__}: {text[0][:200]}" if text else type(exn).__name__


#: The "function, source file:line, " prefix of torchvision's decoding errors.
_TORCHVISION_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def _decode_image_bytes(data: bytes) -> torch.Tensor:
    """RGB uint8 or uint16 (16-bit PNG) CHW tensor, EXIF orientation applied."""
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                            mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as exn:
        raise ValueError(_TORCHVISION_LOCATION.sub("", str(exn))) from None


_image_decoder = webdataset.handle_extension(" ".join(IMAGE_EXTENSIONS), _decode_image_bytes)


def _skip_undecodable(exn: Exception) -> bool:
    """``.decode`` handler: warn once about the sample (webdataset's DecodingError) and go on."""
    cause = exn.__cause__ or exn
    log.warning("skipping sample %s in %s: cannot decode %s (%s)", getattr(exn, "key", None),
                getattr(exn, "url", None), getattr(exn, "k", "a member"), _one_line(cause))
    return True


def _skip_shard_problem(exn: Exception) -> bool:
    """WebDataset handler for opening and reading shards: warn and go on.

    webdataset appends the shard (url or open stream) to the exception's
    arguments; an unopenable file names itself. A truncated shard is reported
    by both the tar reader and the shard expander, so it gives two warnings.
    """
    details = str(exn) if isinstance(exn, OSError) else "; ".join(str(arg) for arg in exn.args if arg is not None)
    log.warning("skipping an unreadable shard or the rest of one: %s: %s", type(exn).__name__, details[:500])
    return True


def _members(sample: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The decoded input and target images and the json dict of a sample, or :class:`_BadSample`."""
    images = []
    for role in ("input", "target"):
        names = [name for name in sample if name.startswith(role + ".")]
        if len(names) != 1:
            raise _BadSample(f"expected one {role}.<ext> member, found {names or 'none'}")
        if not isinstance(sample[names[0]], torch.Tensor):
            raise _BadSample(f"{names[0]}: not one of the image types {', '.join(IMAGE_EXTENSIONS)}")
        images.append(sample[names[0]])
    meta = sample.get("json")
    if not isinstance(meta, dict):
        raise _BadSample("no json member" if meta is None else "json member is not an object")
    if meta.get("schema") != SAMPLE_SCHEMA:
        raise _BadSample(f"json schema {meta.get('schema')!r}, expected {SAMPLE_SCHEMA!r}")
    if not isinstance(meta.get("user"), str) or not meta["user"]:
        raise _BadSample("json has no user")
    if meta.get("source") not in SOURCES:
        raise _BadSample(f"json source {meta.get('source')!r} is not one of {', '.join(SOURCES)}")
    return images[0], images[1], meta


def _warn_bad(sample: dict, exn: _BadSample) -> None:
    log.warning("skipping sample %s in %s: %s", sample.get("__key__"), sample.get("__url__"), exn)


# ---------------------------------------------------------------- the datasets


class ShardStream(torch.utils.data.IterableDataset):
    """One epoch over shards, split across ranks and DataLoader workers.

    The webdataset pipeline is built on each ``iter()``, inside the DataLoader
    worker, where the worker id that seeds it is known. Subclasses add their
    stages in :meth:`_stages`.
    """

    def __init__(self, urls, *, size: int, augment: bool, seed: int, epoch: int, rank: int | None,
                 world_size: int | None, users: Iterable[str] | None = None):
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {size}")
        self.urls = _expand(urls)
        self.users = None if users is None else frozenset(users)
        self.size, self.augment = int(size), bool(augment)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank, self.world_size = _resolve_rank(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next ``iter()``: new shard order, shuffle and augmentation."""
        self.epoch = int(epoch)

    def shard_order(self) -> list[str]:
        """This epoch's url order, before splitting; the same on every rank."""
        urls = list(self.urls)
        random.Random(_derive_seed(self.seed, self.epoch, "shards")).shuffle(urls)
        return urls

    def _worker_seed(self, purpose: str) -> int:
        _, _, worker, _ = webdataset.utils.pytorch_worker_info()
        return _derive_seed(self.seed, self.epoch, self.rank, worker, purpose)

    def __iter__(self):
        # The library's own shard shuffle is off (the order is set above); its
        # seed is given only so that it does not draw one from `random`.
        dataset = webdataset.WebDataset(
            self.shard_order(), handler=_skip_shard_problem, shardshuffle=False,
            nodesplitter=functools.partial(_split_by_rank, rank=self.rank, world_size=self.world_size),
            workersplitter=webdataset.split_by_worker, empty_check=False, seed=self._worker_seed("shards"))
        if self.users is not None:
            dataset = dataset.select(self._wanted)
        return iter(self._stages(dataset, random.Random(self._worker_seed("augment"))))

    def _wanted(self, sample: dict) -> bool:
        """Whether a raw sample belongs to ``users``, from its key ``<user>/<item>`` (nothing decoded)."""
        return sample.get("__key__", "").partition("/")[0] in self.users

    def _stages(self, dataset: webdataset.WebDataset, rng: random.Random) -> webdataset.WebDataset:
        """The stages after reading: decoding and assembling samples with ``rng``."""
        raise NotImplementedError


class _Pairs(ShardStream):
    def __init__(self, urls, *, shuffle_buffer, **kw):
        super().__init__(urls, **kw)
        self.shuffle_buffer = int(shuffle_buffer)

    def _stages(self, dataset, rng):
        return (dataset.shuffle(self.shuffle_buffer, seed=self._worker_seed("samples"))
                .decode(_image_decoder, handler=_skip_undecodable)
                .map(functools.partial(self._pair, rng=rng)))

    def _pair(self, sample: dict, rng: random.Random):
        try:
            source, target, meta = _members(sample)
        except _BadSample as exn:
            _warn_bad(sample, exn)
            return None  # webdataset's map stage drops None results
        view = aug.random_view(rng) if self.augment else aug.FULL
        x, y = aug.render(source, view, self.size), aug.render(target, view, self.size)
        if self.augment:
            x = aug.random_brightness(x, rng)
        return x, y, {**meta, "__key__": sample["__key__"]}


def pairs(urls, *, size: int = 512, seed: int = 0, epoch: int = 0, shuffle_buffer: int = 1000,
          augment: bool = True, rank: int | None = None, world_size: int | None = None,
          users: Iterable[str] | None = None) -> ShardStream:
    """Shuffled (input, target, meta) pairs for step 1 (style embedding + enhancer).

    Kosugi & Yamasaki, TCSVT 2023, Sec. III: step 1 learns from every pair of
    every user (Flickr users and the rule users) at 512 x 512, augmented by a
    random crop (sides 0.75-1 of the image's, resized to ``size`` x ``size``,
    not aspect preserving), horizontal/vertical flips and transpose (each
    p = 0.5) applied identically to input and target, and the input multiplied
    by a random brightness in [0.5, 1.5] (clamped to [0, 1]); see
    :mod:`model.augment`.

    Parameters
    ----------
    urls : list of str or str
        Shard paths/URLs, or one brace pattern; see :func:`shard_urls`.
    size : int
        Output side in pixels (paper: 512).
    seed, epoch : int
        Seed the shard order (``seed``, ``epoch``) and the per-worker shuffle
        and augmentation (``seed``, ``epoch``, rank, worker id).
    shuffle_buffer : int
        Samples held by each worker's ``webdataset`` shuffle stage, as encoded
        bytes before decoding (about 1 GB for 1000 pairs of 0.5 MB JPEGs);
        below 1 keeps the shards' order. The buffer mixes only the shards of
        one worker.
    augment : bool
        Augment as above; if False each image is plainly resized to ``size``.
    rank, world_size : int, optional
        This process's share of the shards; default torch.distributed's when
        initialised, else 0 of 1. Environment variables are not consulted.
    users : iterable of str, optional
        Keep only the samples of these users (the part of the key before
        ``/``), dropped before anything is decoded; default all.

    Returns
    -------
    ShardStream
        An IterableDataset of ``(input, target, meta)``: float32 tensors of
        shape (3, size, size) in [0, 1] and the sample's ``json`` dict plus
        ``"__key__"``. Batch with :func:`collate` (meta holds None values that
        ``default_collate`` refuses), or use ``batch_size=None``.
    """
    return _Pairs(urls, size=size, shuffle_buffer=shuffle_buffer, augment=augment,
                  seed=seed, epoch=epoch, rank=rank, world_size=world_size, users=users)


class _UserSets(ShardStream):
    def __init__(self, urls, *, n, **kw):
        super().__init__(urls, **kw)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = int(n)
        # Images are resized to this side first: the smallest crop of it is
        # still downsampled to `size`.
        self.held_size = math.ceil(self.size / aug.MIN_CROP_RATIO) if self.augment else self.size

    def _stages(self, dataset, rng):
        return (dataset.decode(_image_decoder, handler=_skip_undecodable)
                .compose(functools.partial(self._sets, rng=rng)))

    def _sets(self, samples: Iterable[dict], rng: random.Random) -> Iterator[dict]:
        group: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []  # key, user, input, target
        current = None  # (shard url, user) of the group
        for sample in samples:
            try:
                source, target, meta = _members(sample)
            except _BadSample as exn:
                _warn_bad(sample, exn)
                continue
            if (sample["__url__"], meta["user"]) != current:
                yield from self._flickr_sets(group, rng)
                group, current = [], (sample["__url__"], meta["user"])
            if meta["source"] == "rules":
                source, target = aug.resize(source, self.held_size), aug.resize(target, self.held_size)
                yield self._copies_set(sample["__key__"], meta["user"], source, target, rng)
            else:
                group.append((sample["__key__"], meta["user"], self._hold(source), self._hold(target)))
        yield from self._flickr_sets(group, rng)

    def _hold(self, image: torch.Tensor) -> torch.Tensor:
        """An image resized to ``held_size`` squared and kept as uint8 while its group is read."""
        return aug.resize(image, self.held_size).mul(255.0).round_().to(torch.uint8)

    def _flickr_sets(self, group, rng) -> Iterator[dict]:
        order = list(range(len(group)))
        rng.shuffle(order)
        for index in order:
            key, user, source, target = group[index]
            if len(group) == 1:
                yield self._copies_set(key, user, source, target, rng)
                continue
            others = len(group) - 1
            draws = rng.sample(range(others), self.n) if others >= self.n else rng.choices(range(others), k=self.n)
            chosen = [i + (i >= index) for i in draws]
            if self.augment and rng.random() < 0.5:
                chosen[-1] = index
            preferred = [group[i] for i in chosen]
            yield self._set(key, user, [(s, t) for _, _, s, t in preferred], (source, target),
                            [k for k, _, _, _ in preferred], torch.zeros(self.n + 1, dtype=torch.bool), rng)

    def _copies_set(self, key, user, source, target, rng) -> dict:
        mask = torch.ones(self.n + 1, dtype=torch.bool)
        mask[-2:] = False
        return self._set(key, user, [(source, target)] * self.n, (source, target), [key] * self.n, mask, rng)

    def _set(self, key, user, preferred, masked, preferred_keys, mask, rng) -> dict:
        inputs, targets = [], []
        for source, target in [*preferred, masked]:
            view = aug.random_view(rng) if self.augment else aug.FULL
            x, y = aug.render(source, view, self.size), aug.render(target, view, self.size)
            if self.augment:
                x = aug.random_brightness(aug.color_jitter(x, rng), rng)
            inputs.append(x)
            targets.append(y)
        return {"inputs": torch.stack(inputs), "targets": torch.stack(targets), "padding_mask": mask,
                "user": user, "key": key, "preferred_keys": preferred_keys}


def user_sets(urls, n: int = 10, *, size: int = 256, seed: int = 0, epoch: int = 0, augment: bool = True,
              rank: int | None = None, world_size: int | None = None,
              users: Iterable[str] | None = None) -> ShardStream:
    """Per-user sets of n preferred pairs plus one masked pair, for step 2.

    Kosugi & Yamasaki, TCSVT 2023, Sec. III: step 2 (content embedding, masked
    token, transformer) sees one user's N = 10 preferred pairs and one more
    pair of the same user whose style the transformer predicts, all at
    256 x 256.

    Consecutive samples with the same ``json["user"]`` in one shard form a
    group (shards keep a user's samples together). A user split across shards
    forms one group per shard; nothing is buffered across shards. Each pair of
    a group is the masked (target) pair exactly once per epoch, in a seeded
    random order (a group's samples come out together: there is no shuffle
    across users, so a DataLoader batch holds few users); its n preferred
    pairs are drawn afresh each time:

    * Flickr users: n other pairs of the group without replacement, in random
      order, or with replacement when the group has fewer than n other pairs;
      with ``augment``, with probability 0.5 the last preferred pair is an
      augmented copy of the masked pair. ``padding_mask`` is all False.
    * Rule users (``source == "rules"``, content independent by construction)
      and a Flickr group of a single pair: n augmented copies of the masked
      pair, and ``padding_mask`` leaves only the last preferred token and the
      masked token visible, as in the reference code.

    Every pair gets its own random crop/flip view (input and target alike) and,
    with ``augment``, its input is colour-jittered and brightness-scaled; see
    :mod:`model.augment`. Without ``augment`` each image is plainly resized and
    no copy of the masked pair is added for Flickr users.

    Each image is first resized to ceil(size / 0.75) squared (``size`` without
    ``augment``), so that the smallest crop is still downsampled to ``size``,
    and every view is cut from that. A Flickr group is held in memory while it
    is used, as uint8: about 0.7 MB per pair at size 256. Rule pairs are used
    as they arrive and not held.

    Parameters
    ----------
    urls : list of str or str
        Shard paths/URLs, or one brace pattern; see :func:`shard_urls`.
    n : int
        Preferred pairs per sample (paper: 10).
    size : int
        Output side in pixels (paper: 256).
    seed, epoch, rank, world_size
        As for :func:`pairs`.
    augment : bool
        Augment as above.
    users : iterable of str, optional
        Only these users, as for :func:`pairs`.

    Returns
    -------
    ShardStream
        An IterableDataset of dicts: ``inputs`` and ``targets`` float32
        (n + 1, 3, size, size) in [0, 1], preferred pairs first and the masked
        pair last; ``padding_mask`` bool (n + 1,), True = ignored (PyTorch's
        ``src_key_padding_mask``); ``user`` (str); ``key`` (the masked pair's
        key); ``preferred_keys`` (list of n keys, the masked key for a copy).
        ``torch.utils.data.default_collate`` batches them, but transposes
        ``preferred_keys``; :func:`collate` keeps one list per sample.
    """
    return _UserSets(urls, n=n, size=size, augment=augment, seed=seed, epoch=epoch, rank=rank,
                     world_size=world_size, users=users)


def collate(batch: Sequence):
    """Batch samples of :func:`pairs` or :func:`user_sets`.

    Tensors are stacked along a new first dimension; everything else (meta
    dicts, strings, key lists) becomes a list with one entry per sample.
    """
    def combine(values: list):
        return torch.stack(values) if isinstance(values[0], torch.Tensor) else values

    if isinstance(batch[0], dict):
        return {name: combine([sample[name] for sample in batch]) for name in batch[0]}
    return tuple(combine(list(values)) for values in zip(*batch))


# ---------------------------------------------------------------- whole users, for validation


@dataclass
class UserPairs:
    """Every usable pair of one user, in shard order, resized to one square side.

    ``inputs`` and ``targets`` are uint8 tensors (n, 3, size, size); ``keys``
    and ``splits`` (``json["split"]``: train, valid or valid_ref) have one
    entry per pair.
    """

    user: str
    source: str
    keys: list[str]
    splits: list[str]
    inputs: torch.Tensor
    targets: torch.Tensor

    def select(self, split: str) -> "UserPairs":
        """The pairs of one split."""
        chosen = [i for i, value in enumerate(self.splits) if value == split]
        return UserPairs(self.user, self.source, [self.keys[i] for i in chosen], [split] * len(chosen),
                         self.inputs[chosen], self.targets[chosen])

    def __len__(self) -> int:
        return len(self.keys)


def user_groups(urls, *, size: int, users: Iterable[str] | None = None,
                exclude: Iterable[str] = ()) -> Iterator[UserPairs]:
    """The pairs of each user in turn, unaugmented, for validation and evaluation.

    Shards are read in the given order by this one process (no rank or
    worker split); consecutive samples of the same user form one group, also
    across a shard boundary (``pie shard`` keeps a user's samples together).
    Each image is plainly resized to ``size`` x ``size`` (as
    :func:`model.augment.resize`) and held as uint8 while its user is read:
    about 1.5 MB per pair at size 512. Bad samples are skipped with one
    warning each, as in :func:`pairs`.

    Parameters
    ----------
    urls : list of str or str
        Shard paths/URLs, or one brace pattern.
    size : int
        Side of the held images in pixels.
    users : iterable of str, optional
        Only these users (decided from the key, before decoding).
    exclude : iterable of str
        Not these users (decided the same way).
    """
    wanted = None if users is None else frozenset(users)
    unwanted = frozenset(exclude)
    dataset = webdataset.WebDataset(_expand(urls), handler=_skip_shard_problem, shardshuffle=False,
                                    nodesplitter=None, workersplitter=None, empty_check=False)
    if wanted is not None:
        dataset = dataset.select(lambda sample: sample.get("__key__", "").partition("/")[0] in wanted)
    if unwanted:
        dataset = dataset.select(lambda sample: sample.get("__key__", "").partition("/")[0] not in unwanted)
    dataset = dataset.decode(_image_decoder, handler=_skip_undecodable)

    def held(image: torch.Tensor) -> torch.Tensor:
        return aug.resize(image, size).mul(255.0).round_().to(torch.uint8)

    group: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []
    current: tuple[str, str] | None = None  # (user, source)

    def finish() -> Iterator[UserPairs]:
        if group:
            yield UserPairs(current[0], current[1], [g[0] for g in group], [g[1] for g in group],
                            torch.stack([g[2] for g in group]), torch.stack([g[3] for g in group]))

    for sample in dataset:
        try:
            source, target, meta = _members(sample)
        except _BadSample as exn:
            _warn_bad(sample, exn)
            continue
        if (meta["user"], meta["source"]) != current:
            yield from finish()
            group, current = [], (meta["user"], meta["source"])
        group.append((sample["__key__"], str(meta.get("split")), held(source), held(target)))
    yield from finish()
