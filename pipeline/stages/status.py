"""``pie status``: what each stage has done and what is left, read from the workspace alone.

Every figure comes from files the stages write (DESIGN.md, "The data flow"):
the crawl's photo and user manifests and its listing cache, the rules and
prepared-original manifests, the ``degraded`` entries of the photo records
against ``ROOT/degrader/dsn.pt``, ``ROOT/shards/index.json``, the MSM trainer's
``metrics.csv`` and checkpoints under ``ROOT/msm``, the degrader's loss log
(``ROOT/degrader/dsn.metrics.jsonl``) and
the evaluation runs under ``ROOT/evaluation``. Each manifest is read in one
pass and summarised (the photo and rule manifests, the bulk of a workspace,
by ``msgspec`` into structs of only the fields a summary needs, about four
times faster than ``json.loads``; a file it refuses, such as one with a torn
last line, by the tolerant :func:`manifests.jsonl.read_jsonl`); the summaries are kept in
``ROOT/state/status-cache.json`` and reused while a manifest's size and
modification time are unchanged. No photo is opened, stat'ed or hashed, so a
100,000-photo workspace reads in a fraction of a second once summarised.

The degrader's weights digest (the ``model`` of each ``degraded`` entry) is
computed once per checkpoint file and kept in ``ROOT/state/degrader-digest.json``
keyed by the file's size and modification time.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Callable

import msgspec

from manifests.files import write_atomic
from manifests.jsonl import latest_by, read_jsonl
from manifests.licenses import sorted_ids
from manifests.workspace import Workspace

from .train_degrader import loss_log_path

#: The crawl's default photos per user (the paper's 100; ``pie crawl --per-user``).
DEFAULT_PER_USER = 100

STATUS_SCHEMA = "pie.status/1"


class StatusError(ValueError):
    """A workspace that cannot be read; the message names the folder or file."""


# ---------------------------------------------------------------- reading manifests fast


def read_records(path: Path) -> list[dict]:
    """Every JSON object line of ``path`` in file order (:func:`manifests.jsonl.read_jsonl`); a missing file is empty."""
    return read_jsonl(path).records


def flickr_photos(workspace: Workspace) -> dict[str, dict[str, dict]]:
    """``{nsid: {photo_id: latest record}}`` of every crawled user."""
    folder = workspace.flickr_manifest_dir()
    return {nsid: latest_by(read_records(folder / f"{nsid}.jsonl"), "photo_id") for nsid in workspace.crawled_users()}


# ---------------------------------------------------------------- per-file summaries, cached


class _License(msgspec.Struct):
    id: str | int | None = None
    name: str | None = None


class _Degraded(msgspec.Struct):
    file: str | None = None
    model: str | None = None
    source_sha256: str | None = None


class PhotoFields(msgspec.Struct):
    """The fields of a photo record (:mod:`manifests.records`) that :func:`summarise_photos` reads."""

    photo_id: str | None = None
    status: str | None = None
    reason: str | None = None
    split: str | None = None
    sha256: str | None = None
    license: _License | None = None
    degraded: _Degraded | None = None


class OutputFields(msgspec.Struct):
    """The fields of a rule-output or prepared-original record that the rules summary reads."""

    name: str | None = None
    status: str | None = None


@functools.cache
def _decoder(fields: type) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(fields)


def read_fields(path: Path, fields: type[msgspec.Struct]) -> list:
    """Every record of the manifest at ``path`` as a ``fields`` struct (other keys skipped), in file order.

    A file ``msgspec`` refuses (a torn or damaged line, a field of another
    type) is read by :func:`read_records`, and a record that does not fit
    ``fields`` even then is left out. A missing file is empty.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    if data.endswith(b"\n"):
        try:
            return _decoder(fields).decode_lines(data)
        except msgspec.MsgspecError:
            pass
    rows = []
    for record in read_records(path):
        with contextlib.suppress(msgspec.ValidationError):
            rows.append(msgspec.convert(record, fields, strict=False))
    return rows


def latest_fields(rows: list, key: str) -> dict[str, msgspec.Struct]:
    """The last struct for each value of the attribute ``key``."""
    return {getattr(row, key): row for row in rows if isinstance(getattr(row, key), str)}


def summarise_photos(records: dict[str, PhotoFields]) -> dict:
    """Counts over the latest records of one user's photos.

    Status counts, reasons of the others, and of the kept photos: licence ids
    (and names), splits, and current pseudo originals (made from the kept
    file's bytes) by degrader weights digest.
    """
    statuses, reasons, licenses, splits, models = Counter(), Counter(), Counter(), Counter(), Counter()
    names = {}
    for record in records.values():
        statuses[record.status] += 1
        if record.status != "ok":
            reasons[record.reason or ""] += 1
            continue
        license_ = record.license or _License()
        key = str(license_.id)
        licenses[key] += 1
        names[key] = license_.name or ""
        splits[str(record.split)] += 1
        entry = record.degraded
        if entry is not None and entry.file and entry.source_sha256 == record.sha256:
            models[entry.model or ""] += 1
    return {"ok": statuses["ok"], "failed": statuses["failed"], "rejected": statuses["rejected"],
            "reasons": dict(sorted(reasons.items())), "licenses": dict(sorted(licenses.items())),
            "licence_names": names, "splits": dict(sorted(splits.items())), "degraded": dict(sorted(models.items()))}


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class SummaryCache:
    """Summaries of manifests kept in ``ROOT/state/status-cache.json``, reused while the files are unchanged.

    A manifest is only appended to, so its size and modification time
    (the *stamp*) change whenever its content does; a summary is recomputed
    when the stamps it was made from differ. An unwritable workspace only
    loses the cache.
    """

    VERSION = 1

    def __init__(self, workspace: Workspace):
        self.path = workspace.root / "state" / "status-cache.json"
        try:
            saved = json.loads(self.path.read_text())
            self.entries = saved["entries"] if saved.get("version") == self.VERSION else {}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            self.entries = {}
        self.used: dict[str, dict] = {}

    def summary(self, name: str, stamp: list, compute: Callable[[], dict]) -> dict:
        """The cached summary ``name`` made from ``stamp``, or ``compute()`` kept under it."""
        entry = self.entries.get(name)
        if not (isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("summary"), dict)):
            entry = {"stamp": stamp, "summary": compute()}
        self.used[name] = entry
        return entry["summary"]

    def save(self) -> None:
        """Write the summaries used by this run (others belonged to files now gone), if any changed."""
        if self.used == self.entries:
            return
        try:
            write_atomic(self.path, json.dumps({"version": self.VERSION, "entries": self.used}).encode())
        except OSError:
            pass


def user_summaries(workspace: Workspace, cache: SummaryCache) -> dict[str, dict]:
    """:func:`summarise_photos` of every crawled user, by NSID."""
    folder = workspace.flickr_manifest_dir()
    summaries = {}
    for nsid in workspace.crawled_users():
        path = folder / f"{nsid}.jsonl"
        summaries[nsid] = cache.summary(f"flickr/{nsid}", _stamp(path),
                                        lambda path=path: summarise_photos(latest_fields(
                                            read_fields(path, PhotoFields), "photo_id")))
    return summaries


# ---------------------------------------------------------------- the sections


def crawl_status(workspace: Workspace, summaries: dict[str, dict], per_user: int) -> dict:
    """Users complete, short, missing and pending; photos by status, reason, licence and split.

    A user's target is the ``per_user`` its crawl recorded in the user
    manifest, else ``per_user``; ``per_user`` in the result is the most
    common target.
    """
    user_records = latest_by(read_records(workspace.flickr_users_manifest().path), "user")
    listing_dir = workspace.root / "state" / "flickr"
    listed = {path.name.split(".")[0] for path in listing_dir.glob("*.listing.json")} if listing_dir.is_dir() \
        else set()
    empty = summarise_photos({})
    users, statuses, reasons, licenses, splits, targets = {}, Counter(), Counter(), Counter(), Counter(), Counter()
    licence_names = {}
    for nsid in sorted(set(summaries) | set(user_records) | listed):
        summary = summaries.get(nsid, empty)
        recorded = user_records.get(nsid, {}).get("status")
        target = user_records.get(nsid, {}).get("per_user")
        target = target if isinstance(target, int) and target > 0 else per_user
        targets[target] += 1
        if recorded in ("missing", "failed") and not summary["ok"]:
            state = "missing"
        elif summary["ok"] >= target:
            state = "complete"
        elif recorded in ("complete", "short"):
            state = "short"
        else:
            state = "pending"
        users[nsid] = {"state": state, "target": target, **{key: summary[key] for key in ("ok", "failed", "rejected", "reasons",
                                                                         "licenses", "splits")},
                       "crawl_record": recorded, "crawl_reason": user_records.get(nsid, {}).get("reason")}
        statuses.update({key: summary[key] for key in ("ok", "failed", "rejected")})
        reasons.update(summary["reasons"])
        licenses.update(summary["licenses"])
        licence_names.update(summary["licence_names"])
        splits.update(summary["splits"])
    states = Counter(user["state"] for user in users.values())
    return {
        "per_user": targets.most_common(1)[0][0] if targets else per_user, "users": len(users),
        "users_by_state": {state: states[state] for state in ("complete", "short", "missing", "pending")},
        "photos": {status: statuses[status] for status in ("ok", "failed", "rejected")},
        "photos_wanted": sum(user["target"] for user in users.values() if user["state"] != "missing"),
        "reasons": dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
        "licenses": {key: {"name": licence_names.get(key, ""), "photos": licenses[key]}
                     for key in sorted_ids(licenses)},
        "splits": dict(sorted(splits.items())),
        "short_users": sorted(nsid for nsid, user in users.items() if user["state"] == "short"),
        "missing_users": sorted(nsid for nsid, user in users.items() if user["state"] == "missing"),
        "per_user_detail": users,
    }


def _rule_summary(path: Path, ready: set[str]) -> dict:
    outputs = latest_fields(read_fields(path, OutputFields), "name")
    counts = Counter(record.status for record in outputs.values())
    done = {name for name, record in outputs.items() if record.status == "ok"}
    return {"ok": counts["ok"], "failed": counts["failed"], "left": len(ready - done)}


def rules_status(workspace: Workspace, cache: SummaryCache) -> dict:
    """Prepared originals ok/failed and, per rule, outputs ok/failed/left against the ``ok`` originals."""
    prepared_path = workspace.prepared_manifest().path
    prepared_stamp = _stamp(prepared_path)

    def prepared_names() -> dict:
        prepared = latest_by(read_records(prepared_path), "name")
        return {"ready": sorted(name for name, record in prepared.items() if record.get("status") == "ok"),
                "total": len(prepared)}

    names = cache.summary("fivek", prepared_stamp, prepared_names)
    ready = set(names["ready"])
    folder = workspace.root / "manifests" / "rules"
    rules = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        rules[path.stem] = cache.summary(f"rules/{path.stem}", [_stamp(path), prepared_stamp],
                                         lambda path=path: _rule_summary(path, ready))
    return {"prepared": {"ok": len(ready), "failed": names["total"] - len(ready)}, "rules": rules,
            "outputs_ok": sum(rule["ok"] for rule in rules.values()),
            "outputs_failed": sum(rule["failed"] for rule in rules.values())}


def checkpoint_digest(workspace: Workspace, checkpoint: Path) -> str | None:
    """The weights digest of the degrader ``checkpoint`` (cached by size and mtime), or None if unreadable."""
    try:
        stat = checkpoint.stat()
    except OSError:
        return None
    key = {"path": str(checkpoint), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache = workspace.root / "state" / "degrader-digest.json"
    try:
        saved = json.loads(cache.read_text())
        if {name: saved.get(name) for name in key} == key and isinstance(saved.get("digest"), str):
            return saved["digest"]
    except (OSError, ValueError, AttributeError):
        pass
    from .audit import checkpoint_digest as weights_digest

    try:
        digest = weights_digest(checkpoint)
    except Exception:  # an unreadable checkpoint is reported as such, not raised
        return None
    try:
        write_atomic(cache, json.dumps({**key, "digest": digest}).encode())
    except OSError:
        pass
    return digest


def degrade_status(workspace: Workspace, summaries: dict[str, dict]) -> dict:
    """Kept photos with a current pseudo original, by model digest; stale against ``ROOT/degrader/dsn.pt``."""
    checkpoint = workspace.degrader_checkpoint()
    current = checkpoint_digest(workspace, checkpoint) if checkpoint.exists() else None
    models = Counter()
    for summary in summaries.values():
        models.update(summary["degraded"])
    kept, degraded = sum(summary["ok"] for summary in summaries.values()), sum(models.values())
    stale = sum(count for model, count in models.items() if model != current) if current is not None else 0
    log = read_loss_log(loss_log_path(checkpoint))
    return {"checkpoint": str(checkpoint) if checkpoint.exists() else None, "model": current,
            "kept": kept, "degraded": degraded, "stale": stale, "left": kept - degraded + stale,
            "models": dict(sorted(models.items(), key=lambda item: (-item[1], item[0]))),
            "training": {"steps": log[-1]["step"] if log else 0, "logged": len(log),
                         "last": log[-1] if log else None}}


def read_loss_log(path: Path) -> list[dict]:
    """The rows of an append-only training log (JSONL with ``step``), the last row of each step winning, by step."""
    rows = {}
    for record in read_records(path):
        if isinstance(record.get("step"), int):
            rows[record["step"]] = record
    return [rows[step] for step in sorted(rows)]


def shards_status(workspace: Workspace) -> dict:
    """Totals and per-split counts of ``ROOT/shards/index.json``; ``present`` False without one."""
    path = workspace.shards_dir() / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        return {"present": False}
    except (OSError, ValueError) as exc:
        raise StatusError(f"{path}: unreadable ({exc.__class__.__name__})") from None
    return {"present": True, "totals": index.get("totals", {}), "splits": index.get("splits", {}),
            "skipped": len(index.get("skipped") or [])}


def read_msm_metrics(folder: Path) -> list[dict]:
    """The epoch rows of ``metrics.csv`` (numbers parsed; empty cells None)."""
    try:
        text = (folder / "metrics.csv").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for row in csv.DictReader(text.splitlines()):
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value) if value not in ("", None) else None
            except ValueError:
                parsed[key] = value
        rows.append(parsed)
    return rows


def _finite(value) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def train_status(workspace: Workspace) -> dict:
    """Per MSM training step: epochs, optimiser steps and the best validation PSNR, and the files written."""
    folder = workspace.root / "msm"
    rows = read_msm_metrics(folder)
    steps = {}
    for name in ("step1", "step2"):
        mine = [row for row in rows if row.get("step") == name]
        psnrs = [row["valid_psnr"] for row in mine if _finite(row.get("valid_psnr")) is not None]
        steps[name] = {"epochs": int(mine[-1]["epoch"]) if mine else 0,
                       "global_step": int(mine[-1]["global_step"]) if mine else 0,
                       "loss": _finite(mine[-1].get("loss")) if mine else None,
                       "best_psnr": max(psnrs) if psnrs else None,
                       "checkpoint": (folder / f"{name}.pt").exists(),
                       "best": (folder / f"{name}-best.pt").exists()}
    return {"folder": str(folder), "steps": steps, "pca": (folder / "pca.pt").exists(),
            "model": (folder / "model.pt").exists()}


def evaluation_status(workspace: Workspace) -> dict:
    """Each run under ``ROOT/evaluation``: users done and mean PSNR per N and method (mean over users and draws)."""
    folder = workspace.root / "evaluation"
    runs = []
    for run in sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []:
        try:
            description = json.loads((run / "run.json").read_text())
        except (OSError, ValueError):
            continue
        users = latest_by(read_records(run / "users.jsonl"), "user")
        table: dict[str, dict[str, list[float]]] = {}
        for record in users.values():
            for n, methods in (record.get("scores") or {}).items():
                for method, metrics in methods.items():
                    values = [value for value in (metrics.get("psnr") or [])
                              if isinstance(value, (int, float)) and math.isfinite(value)]
                    if values:
                        table.setdefault(str(n), {}).setdefault(method, []).append(statistics.fmean(values))
        runs.append({"key": run.name, "checkpoint": (description.get("checkpoint") or {}).get("path"),
                     "users": len(users),
                     "psnr": {n: {method: round(statistics.fmean(values), 4) for method, values in methods.items()}
                              for n, methods in sorted(table.items(), key=lambda item: int(item[0]))}})
    return {"runs": runs}


# ---------------------------------------------------------------- all of it


def workspace_status(workspace: Workspace, *, per_user: int = DEFAULT_PER_USER, detail: bool = False) -> dict:
    """What every stage has done and what is left (a JSON-ready dict; see the module docstring).

    ``per_user`` is the crawl's target of kept photos per user; ``detail``
    keeps the per-user rows of the crawl (``crawl.per_user_detail``).
    """
    if not workspace.root.is_dir():
        raise StatusError(f"{workspace.root}: no such workspace; give it with --root DIR or PIE_ROOT")
    cache = SummaryCache(workspace)
    summaries = user_summaries(workspace, cache)
    crawl = crawl_status(workspace, summaries, per_user)
    if not detail:
        crawl.pop("per_user_detail")
    status = {"schema": STATUS_SCHEMA, "root": str(workspace.root), "crawl": crawl,
              "rules": rules_status(workspace, cache), "degrade": degrade_status(workspace, summaries),
              "shards": shards_status(workspace), "train": train_status(workspace),
              "evaluation": evaluation_status(workspace)}
    cache.save()
    return status


def _psnr(value) -> str:
    return f"{value:.2f} dB" if isinstance(value, (int, float)) else "-"


def format_status(status: dict) -> str:
    """The status as a few aligned lines for a terminal."""
    crawl, rules, degrade, shards, train = (status[key] for key in ("crawl", "rules", "degrade", "shards", "train"))
    users, photos = crawl["users_by_state"], crawl["photos"]
    lines = [
        f"workspace {status['root']}",
        f"crawl      {crawl['users']} users: {users['complete']} complete, {users['short']} short, "
        f"{users['missing']} missing, {users['pending']} pending (target {crawl['per_user']}/user); "
        f"photos {photos['ok']} ok, {photos['failed']} failed, {photos['rejected']} rejected",
    ]
    for label in ("short", "missing"):
        names = crawl[f"{label}_users"]
        if names:
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            lines.append(f"           {label}: {', '.join(names[:10])}{more}")
    lines += [
        f"rules      prepared originals {rules['prepared']['ok']} ok, {rules['prepared']['failed']} failed; "
        f"{len(rules['rules'])} rules: outputs {rules['outputs_ok']} ok, {rules['outputs_failed']} failed, "
        f"{sum(rule['left'] for rule in rules['rules'].values())} left",
    ]
    for name, rule in rules["rules"].items():
        if rule["failed"] or rule["left"]:
            lines.append(f"             {name}: {rule['ok']} ok, {rule['failed']} failed, {rule['left']} left")
    model = (degrade["model"] or "")[:12] or ("unreadable" if degrade["checkpoint"] else "none")
    lines.append(f"degrade    {degrade['degraded']} of {degrade['kept']} kept photos degraded, {degrade['stale']} "
                 f"stale, {degrade['left']} left; checkpoint {model}; degrader trained "
                 f"{degrade['training']['steps']} steps")
    if shards["present"]:
        totals = shards["totals"]
        lines.append(f"shards     {totals.get('shards', 0)} shards, {totals.get('samples', 0)} pairs, "
                     f"{totals.get('users', 0)} users, {totals.get('bytes', 0) / 2**20:.1f} MiB; "
                     f"{shards['skipped']} skipped")
    else:
        lines.append("shards     none (run `pie shard`)")
    parts = [f"{name} epoch {step['epochs']} step {step['global_step']} best {_psnr(step['best_psnr'])}"
             for name, step in train["steps"].items()]
    lines.append("train      " + "; ".join(parts) + f"; model.pt {'yes' if train['model'] else 'no'}")
    runs = status["evaluation"]["runs"]
    if not runs:
        lines.append("evaluate   no runs")
    for run in runs:
        best = ", ".join(f"N={n} {method} {value:.2f}" for n, methods in run["psnr"].items()
                         for method, value in methods.items() if method == "msm") or "-"
        lines.append(f"evaluate   {run['key']}: {run['users']} users; PSNR {best}")
    return "\n".join(lines)


def crawl_per_user(defaults: dict | None) -> int:
    """The crawl's ``per-user`` from the ``[crawl]`` table of ``pie.toml`` (as loaded), else the default."""
    value = (defaults or {}).get("crawl", {}).get("per_user")
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_PER_USER

