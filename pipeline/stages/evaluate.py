"""``pie evaluate``: the paper's protocol on test users from shards or folders (see :mod:`model.evaluation`).

A run lives in one folder (default ``ROOT/evaluation/<key>``, the key a
digest of the checkpoint's bytes, the settings and the test data): ``run.json``
names what is measured, ``users.jsonl`` gets one line per finished user (so a
killed run resumes at the next user) and ``examples/`` one sheet of example
triplets per user. The summary (terminal table, ``--json``, ``--html``) is
computed from ``users.jsonl``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from manifests.files import file_sha256, write_atomic
from manifests.jsonl import JsonlStore
from model.evaluation import Settings, TestUser, UserResult, held, memory_loader

from ..imageio import ImageError, folder_images, images_by_stem, read_image

log = logging.getLogger("pie.evaluate")

#: Side (pixels) of one example cell in the HTML sheet.
EXAMPLE_SIDE = 160


class EvaluationError(ValueError):
    """Test data or a run folder that cannot be used; the message names it."""


# ---------------------------------------------------------------- what is measured


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a model file, or of the names and bytes of a reference-layout folder's files."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{child.name}\0{file_sha256(child)}\0".encode())
    return digest.hexdigest()


def run_key(checkpoint: str, settings: Settings, data: Sequence[str]) -> str:
    """The first 16 hex digits of a digest of what a run measures."""
    text = json.dumps({"checkpoint": checkpoint, "settings": settings.to_dict(), "data": list(data)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunFolder:
    """``run.json``, ``users.jsonl`` and ``examples/`` of one evaluation."""

    path: Path

    @classmethod
    def open(cls, path: Path, description: dict) -> "RunFolder":
        """Create, or reopen the folder of the same ``description``; another run's folder is an error."""
        run = cls(Path(path))
        meta = run.path / "run.json"
        if meta.exists():
            try:
                saved = json.loads(meta.read_text())
            except (OSError, ValueError) as error:
                raise EvaluationError(f"{meta}: unreadable ({error})") from None
            if saved != description:
                raise EvaluationError(f"{run.path} holds another evaluation (different checkpoint, settings or "
                                      "data); choose another --out")
        else:
            write_atomic(meta, (json.dumps(description, indent=2, sort_keys=True) + "\n").encode())
        return run

    @property
    def store(self) -> JsonlStore:
        return JsonlStore(self.path / "users.jsonl")

    def results(self) -> list[UserResult]:
        """Finished users, the last line of each user winning."""
        read = self.store.read()
        for problem in read.problems:
            log.warning("%s", problem)
        latest = {record["user"]: record for record in read.records if isinstance(record.get("user"), str)}
        return [UserResult.from_dict(record) for record in latest.values()]

    def sheet_path(self, user: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9@._-]", "_", user)[:80]
        return self.path / "examples" / f"{safe}-{hashlib.sha256(user.encode()).hexdigest()[:8]}.jpg"

    def add(self, result: UserResult) -> None:
        """Record one finished user: its example sheet first, then its line."""
        if result.examples:
            write_atomic(self.sheet_path(result.user), example_sheet(result.examples))
        self.store.append([result.to_dict()])


def example_sheet(columns: dict[str, torch.Tensor]) -> bytes:
    """A JPEG grid: one row per example image, one column per entry of ``columns`` (input, methods, target)."""
    cells = [torch.nn.functional.interpolate(images.float(), size=(EXAMPLE_SIDE, EXAMPLE_SIDE), mode="bilinear",
                                             antialias=True, align_corners=False) for images in columns.values()]
    rows = cells[0].shape[0]
    grid = torch.cat([torch.cat([column[row] for column in cells], 2) for row in range(rows)], 1)
    pixels = grid.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------- test users


def shard_test_urls(urls: Sequence[str]) -> tuple[list[str], int | None]:
    """Shard URLs to read and the number of users they hold (None when not known).

    ``urls`` are shard paths/URLs or brace patterns, or one folder/URL
    holding ``index.json`` (its ``valid`` shards are read).
    """
    from model.data import shard_entries

    if len(urls) != 1 or urls[0].endswith(".tar"):
        return list(urls), None
    try:
        entries = shard_entries(urls[0], "valid")
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{urls[0]}: cannot read the shard index ({str(error).splitlines()[0]})") from None
    if not entries:
        raise EvaluationError(f"{urls[0]}: the shard index lists no valid shards")
    users = {user for entry in entries for user in entry.get("users") or ()}
    return [entry["url"] for entry in entries], (len(users) or None)


def shard_users(urls: Sequence[str], size: int, exclude: Sequence[str] = ()) -> Iterator[TestUser]:
    """Users of ``valid`` shards: their ``valid_ref`` pairs the preferred pool, their ``valid`` pairs unseen.

    ``urls`` as :func:`shard_test_urls` returns them; users in ``exclude``
    (already evaluated) are not decoded. Users without both kinds of pairs
    are named once and left out.
    """
    from model.data import user_groups

    for group in user_groups(list(urls), size=size, exclude=exclude):
        pool = [i for i, split in enumerate(group.splits) if split == "valid_ref"]
        unseen = [i for i, split in enumerate(group.splits) if split == "valid"]
        if not pool or not unseen:
            log.warning("user %s: %d valid_ref and %d valid pairs; left out (needs both)", group.user,
                        len(pool), len(unseen))
            continue
        yield TestUser(group.user, group.keys, memory_loader(group.inputs, group.targets), pool, unseen)


def matched_pairs(originals: Path, retouched: Path) -> list[tuple[str, Path, Path]]:
    """(stem, original, retouched) of the images present in both folders, by file stem, sorted by stem."""
    def images(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: not a folder")
        return images_by_stem(folder_images(folder))

    left, right = images(originals), images(retouched)
    unmatched = len(set(left) ^ set(right))
    if unmatched:
        log.warning("%s / %s: %d images without a partner by stem, left out", originals, retouched, unmatched)
    return [(stem, left[stem], right[stem]) for stem in sorted(set(left) & set(right))]


class _FolderPairs:
    """Pairs decoded on first use and kept as uint8 at the sides they are asked for."""

    def __init__(self, pairs: list[tuple[str, Path, Path]], size: int):
        self.pairs, self.size = pairs, size
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.decoded: set[int] = set()

    def decode(self, index: int, sides: Sequence[int]) -> None:
        """Decode pair ``index`` and keep it at ``sides``; ImageError when a file cannot be used."""
        images = []
        for path in self.pairs[index][1:]:
            image = read_image(path)
            pixels = image.pixels if image.pixels.dtype == np.uint8 else image.as_float()
            images.append(held(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None], self.size))
        if images[0].shape != images[1].shape:
            raise ImageError(f"{self.pairs[index][2]}: not the same image as {self.pairs[index][1].name}")
        for side in sides:
            self.cache[(index, side)] = (held(images[0], side)[0], held(images[1], side)[0])
        self.decoded.add(index)

    def load(self, indices: Sequence[int], side: int) -> tuple[torch.Tensor, torch.Tensor]:
        for index in indices:
            if (index, side) not in self.cache:
                self.decode(index, [side])
        pairs = [self.cache[(index, side)] for index in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def folder_user(name: str, originals: Path, retouched: Path, settings: Settings, embed_size: int,
                test_count: int = 0, test_stems: frozenset[str] | None = None) -> TestUser | None:
    """One test user from two folders matched by stem; None (named once) when nothing is usable.

    With ``test_stems`` the pairs of those stems are the fixed unseen set and
    the rest the preferred pool (the split ``pie fivek`` records); else with
    ``test_count`` K > 0 the last K pairs by stem are the fixed unseen
    set and the rest the preferred pool (MIT-Adobe FiveK: a0001-a4500 pool,
    a4501-a5000 test); with 0 every pair not in a draw is unseen. The pairs
    a run needs are decoded up front (the preferred ones kept at the
    embedding side only); a pair that cannot be read is named once and left
    out.
    """
    pairs = matched_pairs(originals, retouched)
    bad: set[int] = set()
    loader = _FolderPairs(pairs, settings.size)
    while True:
        keep = [i for i in range(len(pairs)) if i not in bad]
        if test_stems is not None:
            unseen = [i for i in keep if pairs[i][0] in test_stems]
            pool = [i for i in keep if pairs[i][0] not in test_stems]
        elif test_count:
            pool, unseen = keep[:-test_count] if len(keep) > test_count else [], keep[-test_count:]
        else:
            pool, unseen = keep, None
        user = TestUser(name, [stem for stem, _, _ in pairs], loader.load, pool, unseen)
        preferred, scored = user.needed(settings)
        scored -= bad
        new_bad = False
        for index in sorted(preferred | scored):
            if index in bad or index in loader.decoded:
                continue
            sides = [side for side, wanted in ((settings.size, index in scored), (embed_size, index in preferred))
                     if wanted]
            try:
                loader.decode(index, sides)
            except ImageError as error:
                log.warning("%s: pair %s left out: %s", name, pairs[index][0], error)
                bad.add(index)
                new_bad = True
        if not new_bad:
            break
    if not pool or not (unseen if unseen is not None else len(pool) > 1):
        log.warning("%s: %d usable pairs in %s and %s; left out", name, len(pool), originals, retouched)
        return None
    return user


# ---------------------------------------------------------------- reports


def _cell(metrics: dict, name: str, digits: int) -> str:
    value = metrics[name]
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def render_html(summary: dict, description: dict, run: RunFolder, users: Sequence[str]) -> str:
    """A self-contained page: the table, per-user means and each user's example sheet (embedded)."""
    from model.metrics import METRICS

    esc = html.escape
    methods = description["settings"]["methods"]
    digits = {"psnr": 2, "ssim": 4, "delta_e": 2}
    heads = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "delta_e": "ΔE ↓"}
    rows = []
    for n, by_method in summary["table"].items():
        best = {metric: (max if higher else min)(by_method[m][metric]["mean"] for m in by_method)
                for metric, higher in METRICS.items()}
        for method, metrics in by_method.items():
            cells = "".join(f"<td{' class=best' if metrics[metric]['mean'] == best[metric] else ''}>"
                            f"{_cell(metrics, metric, digits[metric])}</td>" for metric in METRICS)
            rows.append(f"<tr><td>{esc(n)}</td><td>{esc(method)}</td><td>{summary['users'][n]}</td>{cells}</tr>")
    per_user = []
    for user in users:
        for n, by_method in summary["per_user"].get(user, {}).items():
            cells = "".join(f"<td>{by_method[m]['psnr']['mean']:.2f}</td>" for m in methods)
            per_user.append(f"<tr><td>{esc(user)}</td><td>{esc(n)}</td>{cells}</tr>")
    sheets = []
    columns = ["input", *[m for m in methods if m != "identity"], "target"]
    for user in users:
        path = run.sheet_path(user)
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode()
            sheets.append(f"<h3>{esc(user)}</h3><div class=cols>"
                          + "".join(f"<span>{esc(c)}</span>" for c in columns)
                          + f"</div><img alt='examples of {esc(user)}' src='data:image/jpeg;base64,{data}'>")
    settings = description["settings"]
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>pie evaluate</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:nth-child(-n+2), th:nth-child(-n+2) {{ text-align: left; }}
.best {{ font-weight: bold; background: #eef6ee; }}
.cols {{ display: flex; }} .cols span {{ width: {EXAMPLE_SIDE}px; text-align: center; color: #555; }}
</style></head><body>
<h1>Evaluation</h1>
<p>Checkpoint <code>{esc(description['checkpoint']['path'])}</code> (sha256 {esc(description['checkpoint']['sha256'][:16])}…);
N = {esc(', '.join(map(str, settings['num_preferred'])))}, {settings['draws']} {esc(settings['mode'])} draws,
metrics at {settings['size']} px; mean ± std over draws of the mean over users.</p>
<table id=summary><tr><th>N</th><th>method</th><th>users</th>{''.join(f'<th>{heads[m]}</th>' for m in METRICS)}</tr>
{''.join(rows)}
</table>
<h2>Per user (PSNR, dB, mean over draws)</h2>
<table id=users><tr><th>user</th><th>N</th>{''.join(f'<th>{esc(m)}</th>' for m in methods)}</tr>
{''.join(per_user)}
</table>
<h2>Examples (first draw, smallest N)</h2>
{''.join(sheets)}
</body></html>
"""


# ---------------------------------------------------------------- one run


@dataclass
class Outcome:
    """What :func:`run` measured: the aggregate, the run's description and folder, users evaluated now."""

    summary: dict
    description: dict
    run: RunFolder
    users: list[str]
    evaluated_now: int


def run(checkpoint: Path, settings: Settings, *, shards: Sequence[str] = (),
        pairs: Sequence[tuple[Path, Path]] = (), test_count: int = 0,
        split_pairs: Sequence[tuple[str, Path, Path, frozenset[str]]] = (), device: str = "cpu",
        out: Path | None = None, default_out: Path, progress=None) -> Outcome:
    """Evaluate ``checkpoint`` on the users of ``shards`` and of each ``pairs`` folder pair, resuming in ``out``.

    ``split_pairs`` are users ``(name, originals, retouched, test stems)`` whose
    unseen set is fixed by stem (the FiveK experts of ``pie fivek``).

    ``progress(total)`` makes a progress bar (an object with ``update()`` and
    ``close()``). Raises ``ValueError`` (:class:`EvaluationError`,
    ``CheckpointError``, ``WeightsError``) with a one-line message naming the
    file.
    """
    from model.evaluation import aggregate, evaluate
    from model.inference import load

    if not checkpoint.exists():
        raise EvaluationError(f"{checkpoint}: no such checkpoint; run `pie train` or give --checkpoint")
    model, pca = load(checkpoint, device)
    if "msm" in settings.methods and pca is None:
        raise EvaluationError(f"{checkpoint}: no style PCA (pca_components.npy, pca_mean.npy), which the msm "
                              "method needs; leave msm out of --methods")
    shard_list, shard_users_count = shard_test_urls(list(shards)) if shards else ([], 0)
    names = _user_names(pairs)
    data = [*shard_list, *(f"{name}={originals}|{retouched}" for name, (originals, retouched) in zip(names, pairs))]
    if test_count:
        data.append(f"test_count={test_count}")
    data += [f"{name}={originals}|{retouched}|test={hashlib.sha256(' '.join(sorted(test)).encode()).hexdigest()[:16]}"
             for name, originals, retouched, test in split_pairs]
    description = {"checkpoint": {"path": str(checkpoint), "sha256": checkpoint_digest(checkpoint)},
                   "settings": settings.to_dict(), "data": data}
    key = run_key(description["checkpoint"]["sha256"], settings, data)
    folder = RunFolder.open(out or default_out / key, description)
    done = {result.user for result in folder.results()}

    def users() -> Iterator[TestUser]:
        if shard_list:
            yield from shard_users(shard_list, settings.size, exclude=sorted(done))
        for name, (originals, retouched) in zip(names, pairs):
            if name not in done:
                user = folder_user(name, originals, retouched, settings, model.config.embed_size, test_count)
                if user is not None:
                    yield user
        for name, originals, retouched, test in split_pairs:
            if name not in done:
                user = folder_user(name, originals, retouched, settings, model.config.embed_size, test_stems=test)
                if user is not None:
                    yield user

    total = None if shard_users_count is None else shard_users_count + len(pairs) + len(split_pairs) - len(done)
    bar = progress(total) if progress else None
    evaluated = 0
    try:
        for result in evaluate(model, pca, users(), settings):
            folder.add(result)
            for n in result.skipped:
                log.warning("user %s: fewer than N = %d preferred pairs; left out at that N", result.user, n)
            evaluated += 1
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    results = folder.results()
    return Outcome(aggregate(results, settings), description, folder, [r.user for r in results], evaluated)


def _user_names(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """A test user name per folder pair: the retouched folder's name, made unique with ``-2``, ``-3``, ..."""
    names: list[str] = []
    for _, retouched in pairs:
        base = Path(retouched).resolve().name or "user"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def write_reports(outcome: Outcome, json_path: Path | None, html_path: Path | None) -> None:
    """``--json`` (description, aggregate, per user) and ``--html`` files, each written atomically."""
    if json_path is not None:
        document = {**outcome.description, **outcome.summary}
        write_atomic(json_path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    if html_path is not None:
        write_atomic(html_path, render_html(outcome.summary, outcome.description, outcome.run,
                                            outcome.users).encode())
