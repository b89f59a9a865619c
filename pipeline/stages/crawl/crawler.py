"""The crawl stage: users in, per-user photo folders and manifests out.

Flow (one process lists and commits; downloads and their checks run in worker
processes, :class:`.fetchpool.FetchPool`, or on an event loop of the crawl
process, :class:`.download.Downloader`):

1. A listing thread walks the user source (user file, crawl list, discovery),
   spends about one API call per user on people.getPublicPhotos (cached in
   ``ROOT/state/flickr/<nsid>.listing.json``, so a resumed crawl spends none),
   keeps the eligible photos (licence, media, size present) and hands a
   :class:`UserPlan` to the main thread.
2. The main thread keeps a window of downloads in flight and *commits* their
   results strictly in submission order: duplicate check, atomic file write
   (the download's worker already checked the body and wrote it under a
   temporary name beside its path; the commit renames it), record.
   Committing in a fixed order makes the outcome independent of network
   timing, so a crawl killed at any point and rerun ends in the same state
   as one that ran straight through. The commit does no decoding, hashing
   or path resolution: each user's folder is resolved once, and photo paths
   are joined from validated ids.
3. A user is finalised once it has ``per_user`` kept photos or no candidates
   left: a valid user's reference photos get their split, and a user record is
   appended to ``ROOT/manifests/flickr-users.jsonl``.

Records are appended in batches with one fsync each. A photo whose file is on
disk and matches its record's sha256 is never fetched again; failed photos are
retried on the next run; rejected ones (too small, duplicate, not an image,
licence) stay rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from manifests import ids
from manifests.files import file_sha256, remove_partials, write_atomic
from manifests.jsonl import latest_by
from manifests.licenses import OPEN_LICENSE_IDS, UNVERIFIED
from manifests.records import PHOTO_SCHEMA, USER_SCHEMA, utc_now
from manifests.workspace import Workspace

from . import splits
from .api import ApiError, ApiKeyRejected, FlickrClient, NotFound
from .dedupe import DuplicateIndex
from .download import Downloader, Fetched
from .fetchpool import FetchPool
from .listing import SIZE_EXTRAS, Candidate, ReplyError, candidate_from_entry, candidate_from_url, extras_for, \
    parse_photo_page, rewrite_for_mirror
from .users import UserRef, read_resolved, resolve_user, write_resolved

log = logging.getLogger("pie.crawl")


@dataclass(frozen=True)
class CrawlOptions:
    """What to crawl. Defaults follow the paper: 1,000 users x 100 photos at 640 px (``z``)."""

    num_users: int = 1000
    per_user: int = 100
    size: str = "z"
    licenses: frozenset[str] = OPEN_LICENSE_IDS
    mirror: str | None = None
    valid_fraction: float = splits.VALID_FRACTION
    valid_refs: int = splits.VALID_REFERENCES
    listing_pages: int = 4
    per_page: int = 500
    window: int = 64
    flush_every: int = 32


@dataclass
class CrawlSummary:
    """What a crawl run did; :meth:`line` is the one-line end summary."""

    users_complete: int = 0
    users_short: int = 0
    users_missing: int = 0
    users_failed: int = 0
    #: Users left short with photos whose download failed: a rerun retries those photos.
    users_retryable: int = 0
    skipped: int = 0
    statuses: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    api_calls: int = 0
    api_retries: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def count(self, record: dict) -> None:
        self.statuses[record["status"]] += 1
        if record["status"] != "ok":
            self.reasons[f"{record['status']}:{record['reason'].split(':')[0]}"] += 1

    def line(self) -> str:
        reasons = ", ".join(f"{name} {count}" for name, count in sorted(self.reasons.items()))
        return (f"crawl: users {self.users_complete} complete, {self.users_short} short, "
                f"{self.users_missing} missing, {self.users_failed} failed; photos {self.statuses['ok']} ok "
                f"(+{self.skipped} already done), {self.statuses['failed']} failed, "
                f"{self.statuses['rejected']} rejected" + (f" [{reasons}]" if reasons else "")
                + f"; {self.api_calls} API calls ({self.api_retries} retried), "
                f"{self.bytes / 2**20:.1f} MiB in {self.seconds:.1f} s")

    def unfinished(self, num_users: int) -> str | None:
        """Why the crawl did not reach ``num_users`` complete users, in one line, or None when it did."""
        if self.users_failed or self.users_retryable:
            return (f"crawl unfinished: {self.users_failed} users could not be listed and {self.users_retryable} "
                    "are short after failed downloads; rerun the same command to retry them")
        if self.users_complete < num_users:
            return (f"crawl unfinished: {self.users_complete} of the {num_users} users asked for have enough "
                    "eligible photos; give more users (or a smaller --num-users)")
        return None


@dataclass
class UserPlan:
    """A user ready for downloading: candidates in the order they are tried."""

    nsid: str
    candidates: list[Candidate]
    source: str
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)


@dataclass(frozen=True)
class UserProblem:
    """A user that cannot be crawled: ``status`` is ``missing`` or ``failed``."""

    nsid: str
    status: str
    reason: str


class CrawlAborted(RuntimeError):
    """The crawl cannot go on (for example the API key was rejected)."""


# Listing ---------------------------------------------------------------------------------------


def fetch_listing(client: FlickrClient, workspace: Workspace, nsid: str, options: CrawlOptions,
                  enough: int) -> list[dict]:
    """The user's public photo entries, from the cache or people.getPublicPhotos.

    Pages are requested until ``enough`` entries are known, the user has no more,
    or ``options.listing_pages`` pages were read. The result is cached.
    """
    cache = workspace.flickr_listing(nsid)
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("size") == options.size and isinstance(cached.get("photos"), list):
            return cached["photos"]
    except (OSError, ValueError, AttributeError):
        pass
    entries: list[dict] = []
    page, pages = 1, 1
    while page <= min(pages, options.listing_pages):
        reply = client.call("flickr.people.getPublicPhotos", user_id=nsid, extras=extras_for(options.size),
                            per_page=options.per_page, page=page)
        page_entries, _, pages = parse_photo_page(reply)
        entries.extend(page_entries)
        if len(entries) >= enough:
            break
        page += 1
    write_atomic(cache, json.dumps({"size": options.size, "fetched_at": utc_now(), "photos": entries}).encode())
    return entries


def plan_from_listing(nsid: str, entries: list[dict], options: CrawlOptions) -> UserPlan:
    """Eligible candidates of a listing in API order; invalid entries are logged and dropped."""
    plan = UserPlan(nsid, [], "api")
    seen: set[str] = set()
    for entry in entries:
        try:
            candidate = candidate_from_entry(entry, options.size, user=nsid)
        except (ReplyError, ids.InvalidIdError) as exc:
            log.warning("user %s: photo entry skipped: %s", nsid, exc)
            continue
        if candidate.photo_id in seen or candidate.media != "photo":
            continue
        seen.add(candidate.photo_id)
        if candidate.license.id not in options.licenses:
            continue
        plan.candidates.append(candidate)
    return plan


def plan_from_list(nsid: str, urls: list[str], entries: list[dict] | None, options: CrawlOptions) -> UserPlan:
    """Candidates from a published URL list, with licence and titles from the user's listing."""
    known = {}
    for entry in entries or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            known[entry["id"]] = entry
    plan = UserPlan(nsid, [], "list")
    for url in urls[: options.per_user]:
        try:
            candidate = candidate_from_url(nsid, url, options.size)
        except (ReplyError, ids.InvalidIdError) as exc:
            log.warning("user %s: list entry skipped: %s", nsid, exc)
            continue
        entry = known.get(candidate.photo_id)
        if entry is None:
            if UNVERIFIED.id in options.licenses:
                plan.candidates.append(replace(candidate, license=UNVERIFIED))
            else:
                where = "no API call made" if entries is None else "not among the user's public photos"
                plan.rejected.append((candidate, f"license: unknown ({where}); --licenses all fetches it "
                                                 "with licence 'unknown'"))
            continue
        try:
            listed = candidate_from_entry({**entry, SIZE_EXTRAS[candidate.size]: candidate.url}, candidate.size,
                                          user=nsid)
        except (ReplyError, ids.InvalidIdError) as exc:
            plan.rejected.append((candidate, f"invalid-entry: {exc}"))
            continue
        if listed.license.id not in options.licenses:
            plan.rejected.append((listed, f"license: {listed.license.name} is not allowed"))
            continue
        plan.candidates.append(listed)
    return plan


# Committing results ----------------------------------------------------------------------------


@dataclass(eq=False)
class _UserState:
    """Book-keeping for one user while its downloads are in flight."""

    plan: UserPlan
    split: str
    latest: dict[str, dict]
    ok: set[str]
    #: ``ROOT/flickr/<nsid>``, resolved and checked once.
    folder: Path
    next_candidate: int = 0
    in_flight: int = 0


class Crawler:
    """Runs one crawl over a workspace; see the module docstring for the flow."""

    def __init__(self, workspace: Workspace, client: FlickrClient | None, downloader: Downloader | FetchPool,
                 options: CrawlOptions, *, on_photo: Callable[[dict], None] | None = None):
        self.workspace = workspace
        self.client = client
        self.downloader = downloader
        self.options = options
        self.on_photo = on_photo or (lambda record: None)
        self.summary = CrawlSummary()
        self.index = DuplicateIndex()
        self._pending: dict[str, list[dict]] = {}
        self._pending_count = 0
        self._index_existing()
        remove_partials(workspace.root / "flickr")  # left by a killed run

    # Existing state ---------------------------------------------------------------------------
    def _index_existing(self) -> None:
        """Load every kept photo of earlier runs into the duplicate index."""
        for nsid in self.workspace.crawled_users():
            for record in latest_by(self.workspace.flickr_manifest(nsid).read().records, "photo_id").values():
                if record.get("status") == "ok" and isinstance(record.get("sha256"), str):
                    phash = record.get("phash")
                    self.index.add(f"{nsid}/{record['photo_id']}", record["sha256"],
                                   int(phash, 16) if isinstance(phash, str) else None)

    def _load_user(self, plan: UserPlan) -> _UserState:
        store = self.workspace.flickr_manifest(plan.nsid)
        read = store.read()
        for problem in read.problems:
            log.warning("%s", problem)
        latest = latest_by(read.records, "photo_id")
        ok: set[str] = set()
        for photo_id, record in latest.items():
            if record.get("status") == "ok" and self._file_matches(record):
                ok.add(photo_id)
        folder = self.workspace.flickr_user_folder(plan.nsid)
        folder.mkdir(parents=True, exist_ok=True)
        return _UserState(plan, splits.user_split(plan.nsid, self.options.valid_fraction), latest, ok, folder)

    def _file_matches(self, record: dict) -> bool:
        try:
            path = self.workspace.resolve_relative(record["file"])
            digest = file_sha256(path)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return digest == record.get("sha256")

    # Records ----------------------------------------------------------------------------------
    def _record(self, state: _UserState, candidate: Candidate, status: str, *, reason: str | None = None,
                fetched: Fetched | None = None, file: str | None = None) -> dict:
        previous = state.latest.get(candidate.photo_id, {})
        record = {
            "schema": PHOTO_SCHEMA, "user": candidate.user, "photo_id": candidate.photo_id,
            "secret": candidate.secret, "server": candidate.server, "size": candidate.size,
            "url": candidate.url, "page_url": candidate.page_url, "license": candidate.license.as_record(),
            "owner_name": candidate.owner_name, "title": candidate.title, "date_taken": candidate.date_taken,
            "file": file, "width": None, "height": None, "bytes": None, "sha256": None, "phash": None,
            "status": status, "reason": reason,
            "attempts": int(previous.get("attempts", 0)) + (fetched.attempts if fetched else 0),
            "fetched_at": utc_now(), "split": state.split, "source": state.plan.source,
        }
        if fetched is not None and status == "ok":
            record.update(width=fetched.width, height=fetched.height, bytes=fetched.size,
                          sha256=fetched.sha256, phash=f"{fetched.phash:016x}")
        return record

    def _append(self, nsid: str, record: dict) -> None:
        self._pending.setdefault(nsid, []).append(record)
        self._pending_count += 1
        if self._pending_count >= self.options.flush_every:
            self.flush()

    def flush(self) -> None:
        """Append every buffered record (one fsync per user file)."""
        for nsid, records in self._pending.items():
            self.workspace.flickr_manifest(nsid).append(records)
        self._pending.clear()
        self._pending_count = 0

    def _commit(self, state: _UserState, candidate: Candidate, fetched: Fetched) -> None:
        key = f"{candidate.user}/{candidate.photo_id}"
        status, reason, file = fetched.status, fetched.reason, None
        if status == "ok":
            duplicate = self.index.find(key, fetched.sha256, fetched.phash)
            name = f"{candidate.photo_id}.jpg"  # a validated id (candidate_from_entry / candidate_from_url)
            if duplicate is not None:
                status, reason = "rejected", duplicate
                if fetched.temporary is not None:
                    fetched.temporary.unlink(missing_ok=True)
            else:
                os.replace(fetched.temporary, state.folder / name)
                file = f"flickr/{state.plan.nsid}/{name}"
                self.index.add(key, fetched.sha256, fetched.phash)
                state.ok.add(candidate.photo_id)
                self.summary.bytes += fetched.size
        record = self._record(state, candidate, status, reason=reason, fetched=fetched, file=file)
        state.latest[candidate.photo_id] = record
        self.summary.count(record)
        self._append(candidate.user, record)
        self.on_photo(record)

    def _finalise(self, state: _UserState) -> None:
        nsid = state.plan.nsid
        if state.split == "valid":
            references = splits.reference_photos(nsid, sorted(state.ok), self.options.valid_refs)
            for photo_id in sorted(state.ok):
                record = state.latest[photo_id]
                wanted = "valid_ref" if photo_id in references else "valid"
                if record.get("split") != wanted:
                    updated = {**record, "split": wanted}
                    state.latest[photo_id] = updated
                    self._append(nsid, updated)
        complete = len(state.ok) >= self.options.per_user
        if complete:
            self.summary.users_complete += 1
        else:
            self.summary.users_short += 1
            if any(record.get("status") == "failed" for record in state.latest.values()):
                self.summary.users_retryable += 1
        self.flush()
        self.workspace.flickr_users_manifest().append([{
            "schema": USER_SCHEMA, "user": nsid, "status": "complete" if complete else "short",
            "photos_ok": len(state.ok), "per_user": self.options.per_user,
            "candidates": len(state.plan.candidates), "split": state.split,
            "unverified_licences": sum(state.latest[photo_id].get("license", {}).get("id") == UNVERIFIED.id
                                       for photo_id in state.ok),
            "source": state.plan.source, "updated_at": utc_now(),
        }])

    def record_problem(self, problem: UserProblem) -> None:
        """Note a user that could not be listed."""
        if problem.status == "missing":
            self.summary.users_missing += 1
        elif problem.status == "short":
            self.summary.users_short += 1
        else:
            self.summary.users_failed += 1
        log.warning("user %s: %s (%s)", problem.nsid, problem.status, problem.reason)
        self.workspace.flickr_users_manifest().append([{
            "schema": USER_SCHEMA, "user": problem.nsid, "status": problem.status, "reason": problem.reason,
            "updated_at": utc_now(),
        }])

    # The main loop ----------------------------------------------------------------------------
    def run(self, plans: Iterable[UserPlan | UserProblem]) -> CrawlSummary:
        """Download every plan's photos, committing results in submission order."""
        started = time.monotonic()
        window: deque[tuple[_UserState, Candidate, Future]] = deque()
        plan_iter: Iterator[UserPlan | UserProblem] = iter(plans)
        active: deque[_UserState] = deque()  # users with candidates left, in order
        try:
            while True:
                self._fill(window, active, plan_iter)
                if not window:
                    break
                state, candidate, future = window.popleft()
                state.in_flight -= 1
                try:
                    fetched = future.result()
                except BrokenProcessPool:
                    raise CrawlAborted("a process downloading and checking images died (out of memory?); rerun the "
                                       "same command to resume") from None
                self._commit(state, candidate, fetched)
                if self._wants_more(state):
                    if not any(other is state for other in active):  # a failure after its last submission: it needs a replacement
                        active.appendleft(state)
                elif state.in_flight == 0:
                    self._finalise(state)
        finally:
            for _, _, future in window:
                if not future.cancel() and future.done() and future.exception() is None \
                        and future.result().temporary is not None:
                    future.result().temporary.unlink(missing_ok=True)
            self.flush()
            self.summary.seconds = time.monotonic() - started
            if self.client is not None:
                self.summary.api_calls = self.client.budget.calls
                self.summary.api_retries = self.client.retries
        return self.summary

    def _wants_more(self, state: _UserState) -> bool:
        needed = self.options.per_user - len(state.ok) - state.in_flight
        return needed > 0 and state.next_candidate < len(state.plan.candidates)

    def _fill(self, window: deque, active: deque, plan_iter: Iterator) -> None:
        """Submit downloads until the window is full or nothing is left to submit."""
        while len(window) < self.options.window:
            while active and not self._wants_more(active[0]):
                active.popleft()
            if not active:
                state = self._start_next_user(plan_iter)
                if state is None:
                    return
                if self._wants_more(state):
                    active.append(state)
                elif state.in_flight == 0:
                    self._finalise(state)
                continue
            state = active[0]
            candidate = state.plan.candidates[state.next_candidate]
            state.next_candidate += 1
            previous = state.latest.get(candidate.photo_id)
            if candidate.photo_id in state.ok:
                continue
            if previous is not None and previous.get("status") == "rejected":
                continue
            state.in_flight += 1
            future = self.downloader.submit(rewrite_for_mirror(candidate.url, self.options.mirror),
                                            state.folder / f"{candidate.photo_id}.jpg")
            window.append((state, candidate, future))

    def _start_next_user(self, plan_iter: Iterator) -> _UserState | None:
        for item in plan_iter:
            if isinstance(item, UserProblem):
                self.record_problem(item)
                continue
            state = self._load_user(item)
            self.summary.skipped += len(state.ok)
            for candidate, reason in item.rejected:
                if state.latest.get(candidate.photo_id, {}).get("status") != "rejected":
                    record = self._record(state, candidate, "rejected", reason=reason)
                    state.latest[candidate.photo_id] = record
                    self.summary.count(record)
                    self._append(item.nsid, record)
            return state
        return None


# Plans from user sources ---------------------------------------------------------------------------


def plans_for_users(client: FlickrClient, workspace: Workspace, refs: Iterable[UserRef],
                    options: CrawlOptions) -> Iterator[UserPlan | UserProblem]:
    """Plans for users named in a user file, until ``num_users`` qualify.

    A user qualifies with at least ``per_user`` eligible photos; others are
    reported as ``short`` problems and not downloaded. Usernames and profile
    URLs resolved once are kept in ``ROOT/state/flickr/resolved-users.json``,
    so a rerun spends no API call on them.
    """
    qualified = 0
    resolved = read_resolved(workspace.resolved_users())
    for ref in refs:
        if qualified >= options.num_users:
            return
        try:
            known = len(resolved)
            nsid = resolve_user(client, ref, resolved)
            if len(resolved) > known:
                write_resolved(workspace.resolved_users(), resolved)
        except ApiKeyRejected:
            raise
        except ApiError as exc:
            key = ref.value if ids.is_nsid(ref.value) else _placeholder(ref.value)
            yield UserProblem(key, "missing" if isinstance(exc, NotFound) else "failed", f"{ref.value!r}: {exc}")
            continue
        plan = _plan_user(client, workspace, nsid, options)
        if isinstance(plan, UserPlan) and len(plan.candidates) < options.per_user:
            yield UserProblem(nsid, "short", f"{len(plan.candidates)} eligible photos < {options.per_user}")
            continue
        if isinstance(plan, UserPlan):
            qualified += 1
        yield plan


def plans_for_discovery(client: FlickrClient, workspace: Workspace, owners: Iterable[str],
                        options: CrawlOptions) -> Iterator[UserPlan | UserProblem]:
    """Plans for discovered owners; owners without enough eligible photos are passed over silently."""
    qualified = 0
    for nsid in owners:
        if qualified >= options.num_users:
            return
        plan = _plan_user(client, workspace, nsid, options)
        if isinstance(plan, UserPlan) and len(plan.candidates) >= options.per_user:
            qualified += 1
            yield plan


def plans_for_list(client: FlickrClient | None, workspace: Workspace, crawl_list: dict[str, list[str]],
                   options: CrawlOptions) -> Iterator[UserPlan | UserProblem]:
    """Plans for a published crawl list, users in list order, at most ``num_users``.

    With no ``client`` (``--offline``) no user is listed: every listed photo
    has licence ``unknown``. A user Flickr no longer knows is ``missing``
    unless ``unknown`` licences are accepted; then its listed photos are
    fetched with that licence (a mirror often outlives the account).
    """
    for nsid in list(crawl_list)[: options.num_users]:
        entries = None
        if client is not None:
            try:
                entries = fetch_listing(client, workspace, nsid, options, enough=10**9)
            except ApiKeyRejected:
                raise
            except (ApiError, ReplyError) as exc:
                if not (isinstance(exc, NotFound) and UNVERIFIED.id in options.licenses):
                    yield UserProblem(nsid, "missing" if isinstance(exc, NotFound) else "failed", str(exc))
                    continue
        yield plan_from_list(nsid, crawl_list[nsid], entries, options)


def _plan_user(client: FlickrClient, workspace: Workspace, nsid: str,
               options: CrawlOptions) -> UserPlan | UserProblem:
    enough = options.per_user + max(10, options.per_user // 4)
    try:
        entries = fetch_listing(client, workspace, nsid, options, enough=enough)
    except ApiKeyRejected:
        raise
    except (ApiError, ReplyError) as exc:
        return UserProblem(nsid, "missing" if isinstance(exc, NotFound) else "failed", str(exc))
    return plan_from_listing(nsid, entries, options)


def _placeholder(text: str) -> str:
    """A stable key for a user that never resolved to an NSID (for the users manifest only)."""
    return "unresolved:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# Running plans ahead of the downloads ---------------------------------------------------------------


class Prefetch:
    """Run a plan generator on a thread, ``depth`` plans ahead of the consumer.

    An exception raised by the generator (such as a rejected API key) is raised
    again in the consumer when it reaches that point.
    """

    _DONE = object()

    def __init__(self, plans: Iterable, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(plans,), name="pie-listing", daemon=True)
        self._thread.start()

    def _run(self, plans: Iterable) -> None:
        try:
            for plan in plans:
                while not self._stop.is_set():
                    try:
                        self._queue.put(("item", plan), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(("done", None))
        except Exception as exc:  # handed to the consumer
            self._queue.put(("error", exc))

    def __iter__(self) -> Iterator:
        while True:
            kind, value = self._queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
