"""``pie crawl`` as one library call: choose the user source, wire the parts, run.

The CLI (:mod:`pipeline.cli`) parses options and calls :func:`crawl`; tests and
notebooks call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from manifests.licenses import sorted_ids
from manifests.workspace import Workspace

from .api import FLICKR_REST_URL, FlickrClient, RetryPolicy
from .budget import ApiBudget
from .crawler import CrawlOptions, Crawler, CrawlSummary, Prefetch, plans_for_discovery, plans_for_list, \
    plans_for_users
from .download import Downloader
from .fetchpool import FetchPool, default_workers
from .users import discover_owners, read_crawl_list, read_user_file

#: Mean bytes of a 640-px Flickr JPEG, for the dry-run estimate.
TYPICAL_BYTES = {"z": 150_000, "c": 230_000, "b": 350_000}


@dataclass(frozen=True)
class Source:
    """Where users come from: exactly one of a user file, a crawl list, or discovery."""

    users_file: Path | None = None
    crawl_list: Path | None = None
    discover: bool = False
    groups: tuple[str, ...] = ()
    #: A crawl list fetched without any API call (every photo's licence ``unknown``).
    offline: bool = False

    def __post_init__(self) -> None:
        chosen = sum([self.users_file is not None, self.crawl_list is not None, self.discover])
        if chosen != 1:
            raise ValueError("choose exactly one of --users FILE, --from-list FILE or --discover")
        if self.offline and self.crawl_list is None:
            raise ValueError("--offline works with --from-list FILE only")


@dataclass(frozen=True)
class Network:
    """How to reach Flickr and its image host."""

    api_key: str | None
    api_secret: str | None
    api_url: str = FLICKR_REST_URL
    calls_per_hour: int = 3600
    timeout: float = 15.0
    attempts: int = 5
    retry_base: float = 2.0
    concurrency: int = 16
    per_host: int = 8
    min_side: int = 256
    seed: int = 0
    #: Processes that download and check the photos (0: the crawl process itself); None: :func:`default_workers`.
    check_workers: int | None = None


def plan_text(workspace: Workspace, source: Source, options: CrawlOptions, network: Network) -> str:
    """The ``--dry-run`` plan: what would be crawled and what it costs, without any call."""
    if source.crawl_list is not None:
        crawl_list = read_crawl_list(source.crawl_list)
        users = min(options.num_users, len(crawl_list))
        photos = sum(min(len(urls), options.per_user) for urls in list(crawl_list.values())[:users])
        origin = f"crawl list {source.crawl_list} ({len(crawl_list)} users)"
        calls = 0 if source.offline else users
    elif source.users_file is not None:
        refs = read_user_file(source.users_file)
        users = min(options.num_users, len(refs))
        photos = users * options.per_user
        resolutions = sum(1 for ref in refs[:users] if ref.kind != "nsid")
        origin = f"user file {source.users_file} ({len(refs)} users, {resolutions} to resolve)"
        calls = users + resolutions
    else:
        users = options.num_users
        photos = users * options.per_user
        origin = "discovery (photos.search, group pools, interestingness)"
        calls = int(users * 1.5) + 30
    hours = calls / network.calls_per_hour
    size = TYPICAL_BYTES.get(options.size, 150_000) * photos
    return (f"plan: {users} users x up to {options.per_user} photos = {photos} photos at size '{options.size}' "
            f"from {origin}\n"
            f"      licences {','.join(sorted_ids(options.licenses))}; about {calls} API calls "
            f"(~{hours:.2f} h at {network.calls_per_hour}/h); about {size / 2**30:.1f} GiB into {workspace.root}")


def crawl(workspace: Workspace, source: Source, options: CrawlOptions, network: Network, *,
          on_photo: Callable[[dict], None] | None = None) -> CrawlSummary:
    """Run the crawl and return its summary (see :mod:`pipeline.stages.crawl.crawler`)."""
    client = None if source.offline else FlickrClient(
        network.api_key or "", network.api_secret or "",
        ApiBudget(workspace.api_budget_state(), calls_per_hour=network.calls_per_hour), api_url=network.api_url,
        timeout=network.timeout, retry=RetryPolicy(attempts=network.attempts, base=network.retry_base),
        seed=network.seed)
    if source.crawl_list is not None:
        plans = plans_for_list(client, workspace, read_crawl_list(source.crawl_list), options)
    elif source.users_file is not None:
        plans = plans_for_users(client, workspace, read_user_file(source.users_file), options)
    else:
        owners = discover_owners(client, licenses=options.licenses, groups=source.groups)
        plans = plans_for_discovery(client, workspace, owners, options)
    retry = RetryPolicy(attempts=network.attempts, base=network.retry_base / 2, cap=30.0)
    workers = default_workers() if network.check_workers is None else network.check_workers
    prefetch = Prefetch(plans)
    settings = dict(concurrency=network.concurrency, per_host=network.per_host, timeout=network.timeout,
                    min_side=network.min_side, retry=retry, seed=network.seed)
    try:
        with (FetchPool(workers, **settings) if workers else Downloader(**settings)) as downloader:
            return Crawler(workspace, client, downloader, options, on_photo=on_photo).run(prefetch)
    finally:
        prefetch.close()
