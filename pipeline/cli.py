"""The ``pie`` command: one Click group, a thin face over the library.

Each subcommand parses its options, calls one library function and prints a
one-line summary. Errors are one line on stderr with a non-zero exit code;
``-vv`` adds the traceback of unexpected errors.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from manifests.licenses import parse_license_filter
from manifests.workspace import Workspace

from . import console
from .config import ConfigError, load_defaults


@dataclass
class Session:
    """What every subcommand gets from the group: the workspace and output settings."""

    workspace: Workspace
    verbosity: int
    quiet: bool

    @property
    def show_progress(self) -> bool:
        return not self.quiet


pass_session = click.make_pass_decorator(Session)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("pie-data"),
              envvar="PIE_ROOT", show_default=True, show_envvar=True,
              help="Workspace folder every stage reads and writes.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML file of option defaults, one table per subcommand  [default: ROOT/pie.toml].")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug and tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress bars, no summary.")
@click.version_option(package_name="pie")
@click.pass_context
def cli(ctx: click.Context, root: Path, config_path: Path | None, verbose: int, quiet: bool) -> None:
    """pie: build the Flickr pseudo-pair dataset for personalized image enhancement.

    Stages, in order: crawl, rules, train-degrader, degrade; audit checks a workspace.
    """
    console.setup_logging(verbose, quiet)
    workspace = Workspace(root)
    try:
        defaults = load_defaults(config_path or workspace.root / "pie.toml")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config_path is not None and not config_path.exists():
        raise click.ClickException(f"{config_path}: config file not found")
    ctx.default_map = {**defaults, **(ctx.default_map or {})}
    ctx.obj = Session(workspace, verbose, quiet)


# pie crawl ------------------------------------------------------------------------------------


@cli.command()
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of users to crawl, one NSID, username or profile URL per line.")
@click.option("--from-list", "crawl_list", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Published crawl list {nsid: [photo URLs]} as .json, .csv or .pkl (read without executing).")
@click.option("--discover", is_flag=True, help="Find users through search, group pools and interestingness.")
@click.option("--group", "groups", multiple=True, help="Group NSID whose pool --discover also searches (repeatable).")
@click.option("--num-users", type=click.IntRange(1), default=1000, show_default=True, help="Users to crawl.")
@click.option("--per-user", type=click.IntRange(1), default=100, show_default=True,
              help="Photos to keep per user; users with fewer eligible photos are passed over.")
@click.option("--size", default="z", show_default=True,
              help="Flickr size suffix to download (z = 640 px longest edge, as in the paper).")
@click.option("--licenses", default="open", show_default=True,
              help="Licence ids to accept: 'open' (Creative Commons and public domain), 'all', or e.g. '4,5,9'.")
@click.option("--min-side", type=click.IntRange(1), default=256, show_default=True,
              help="Smallest accepted shorter side of a photo, pixels.")
@click.option("--mirror", default=None, help="Fetch images from this mirror of the static host instead.")
@click.option("--api-key", envvar="FLICKR_API_KEY", show_envvar=True, default=None, help="Flickr API key.")
@click.option("--api-secret", envvar="FLICKR_API_SECRET", show_envvar=True, default=None,
              help="Flickr API secret (never written anywhere).")
@click.option("--api-url", envvar="PIE_FLICKR_API_URL", show_envvar=True,
              default="https://api.flickr.com/services/rest/", show_default=True,
              help="Flickr REST endpoint, e.g. a `pie flickr-replay` server.")
@click.option("--calls-per-hour", type=click.IntRange(1), default=3600, show_default=True,
              help="API budget of the key, shared by every process using this workspace.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Downloads in flight.")
@click.option("--per-host", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Downloads in flight to one host.")
@click.option("--timeout", type=click.FloatRange(0.1), default=15.0, show_default=True,
              help="Seconds to wait for a connection or a read.")
@click.option("--attempts", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Tries per API call or download before giving up.")
@click.option("--retry-base", type=click.FloatRange(0.0), default=2.0, show_default=True,
              help="First backoff step in seconds; doubles per retry, with full jitter.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the backoff jitter.")
@click.option("--dry-run", is_flag=True, help="Print the plan and its API budget; call nothing.")
@pass_session
def crawl(session: Session, users_file, crawl_list, discover, groups, num_users, per_user, size, licenses,
          min_side, mirror, api_key, api_secret, api_url, calls_per_hour, concurrency, per_host, timeout,
          attempts, retry_base, seed, dry_run) -> None:
    """Crawl Flickr users' photos into ROOT/flickr/<nsid>/ with one manifest per user."""
    from .crawl.crawler import CrawlAborted, CrawlOptions
    from .crawl.listing import extras_for
    from .crawl.stage import Network, Source, crawl as run_crawl, plan_text
    from .crawl.users import UserListError
    from .crawl.api import ApiError

    console.redact(api_key, api_secret)
    try:
        extras_for(size)
        source = Source(users_file, crawl_list, discover, tuple(groups))
        options = CrawlOptions(num_users=num_users, per_user=per_user, size=size,
                               licenses=parse_license_filter(licenses), mirror=mirror)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    network = Network(api_key, api_secret, api_url, calls_per_hour, timeout, attempts, retry_base, concurrency,
                      per_host, min_side, seed)
    try:
        if dry_run:
            console.summary(plan_text(session.workspace, source, options, network), session.quiet)
            return
        bar = console.progress(total=num_users * per_user if crawl_list is None else None, desc="crawl",
                               unit="photo", enabled=session.show_progress)
        with bar:
            summary = run_crawl(session.workspace, source, options, network, on_photo=lambda record: bar.update())
    except (UserListError, ApiError, CrawlAborted) as exc:
        raise click.ClickException(console.scrub(str(exc))) from None
    console.summary(summary.line(), session.quiet)


# pie flickr-replay -----------------------------------------------------------------------------


@cli.command("flickr-replay")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port (0 picks a free one).")
@click.option("--api-key", envvar="FLICKR_API_KEY", default=None,
              help="Only this consumer key is accepted (others get error 100); any key if unset.")
@click.option("--faults", default="", help="Faults to inject, e.g. 'api:429=0.05,img:truncate=0.02'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault injection.")
@click.option("--static-base", default=None,
              help="Base URL written into url_* extras [default: this server's /static/].")
@pass_session
def flickr_replay(session: Session, directory, host, port, api_key, faults, seed, static_base) -> None:
    """Serve DIRECTORY (one sub-folder of photos per NSID) as a Flickr-compatible API on loopback."""
    from .flickr_replay import FaultSpec, ReplayServer

    console.redact(api_key)
    try:
        spec = FaultSpec.parse(faults) if faults else FaultSpec.none()
        server = ReplayServer(directory, host=host, port=port, api_key=api_key, faults=spec, seed=seed,
                              static_base=static_base)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    server.start()
    click.echo(f"flickr-replay: REST {server.rest_url} ; static {server.static_base} ; Ctrl-C stops", err=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


# pie audit ------------------------------------------------------------------------------------


@cli.command()
@click.option("--licenses", default="open", show_default=True,
              help="Licence ids a kept photo may carry: 'open', 'all', or a comma list.")
@click.option("--valid-refs", type=click.IntRange(0), default=20, show_default=True,
              help="Reference photos expected per valid user.")
@click.option("--no-checksums", is_flag=True, help="Check file sizes only, not their SHA-256.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report as JSON to this file.")
@pass_session
def audit(session: Session, licenses, valid_refs, no_checksums, json_path) -> None:
    """Check manifests against files, licences, checksums and splits; exit 1 on any problem."""
    import json

    from manifests.audit import audit as run_audit

    try:
        allowed = parse_license_filter(licenses)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    report = run_audit(session.workspace, licenses=allowed, valid_refs=valid_refs,
                       verify_checksums=not no_checksums)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if json_path is not None:
        json_path.write_text(json.dumps(report.as_dict(), indent=1))
    console.summary(report.line(), session.quiet)
    if not report.ok:
        raise click.exceptions.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, exit codes 1 (error), 2 (usage), 130 (interrupted)."""
    try:
        cli.main(args=argv, prog_name="pie", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("pie: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as exc:  # an internal error still gets one line
        if "-vv" in (argv or sys.argv) or "--verbose" in (argv or sys.argv):
            traceback.print_exc()
        click.echo(console.scrub(f"pie: internal error: {exc.__class__.__name__}: {exc} (rerun with -vv for details)"),
                   err=True)
        sys.exit(1)
