"""The ``pie`` command: one Click group, a thin face over the library.

Each subcommand parses its options, calls one library function and prints a
one-line summary. Errors are one line on stderr with a non-zero exit code;
``-vv`` adds the traceback of unexpected errors.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from manifests.licenses import parse_license_filter
from manifests.workspace import Workspace

from . import console
from .config import ConfigError, Names, load_defaults
from .stages.train_degrader import MODEL_SIZES as DSN_SIZES


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


@contextlib.contextmanager
def holding_stage(session: Session, stage: str):
    """Hold the workspace's lock of ``stage`` (:mod:`pipeline.locks`); a held lock is a one-line error.

    Under ``torchrun`` only rank 0 takes it, so the ranks of one run do not
    stop each other.
    """
    from .locks import StageBusy, stage_lock

    if os.environ.get("RANK", "0") != "0":
        yield
        return
    try:
        with stage_lock(session.workspace.root, stage):
            yield
    except StageBusy as exc:
        raise click.ClickException(str(exc)) from None


def one_at_a_time(stage: str):
    """Run the decorated command under :func:`holding_stage`."""
    def decorate(command):
        @functools.wraps(command)
        def locked(*args, **kwargs):
            with holding_stage(click.get_current_context().find_object(Session), stage):
                return command(*args, **kwargs)

        return locked

    return decorate


def cluster_options(
    scheduler_help: str = "Address of a running Dask scheduler (tcp://host:8786); default a local cluster.",
    workers_help: str = "Worker processes of the local cluster  [default: all cores].",
):
    """``--scheduler`` (also ``PIE_DASK_SCHEDULER``) and ``--workers`` of the commands that run on Dask."""
    scheduler = click.option("--scheduler", default=None, envvar="PIE_DASK_SCHEDULER", show_envvar=True,
                             help=scheduler_help)
    workers = click.option("--workers", type=click.IntRange(1), default=None, help=workers_help)
    return lambda command: scheduler(workers(command))


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

    Stages, in order: crawl, fivek, rules, train-degrader, degrade, shard, train, then evaluate and
    enhance; export lays the pairs out for the reference code; audit checks a workspace, status says
    what is done and left, report writes the dataset's page, attribution and card.
    """
    console.setup_logging(verbose, quiet)
    workspace = Workspace(root)
    try:
        defaults = load_defaults(config_path or workspace.root / "pie.toml", option_names(ctx.command))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config_path is not None and not config_path.exists():
        raise click.ClickException(f"{config_path}: config file not found")
    ctx.default_map = {**defaults, **(ctx.default_map or {})}
    ctx.obj = Session(workspace, verbose, quiet)


def option_names(command: click.Command) -> Names:
    """The options of ``command`` and, for a group, of its subcommands: what ``pie.toml`` may set.

    Each option is known by its long flags without dashes and by its parameter name.
    """
    options = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name and not param.hidden:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("--"):
                    options[flag[2:].replace("-", "_")] = param.name
            options[param.name] = param.name
    subcommands = getattr(command, "commands", {})
    return Names(options, {name.replace("-", "_"): option_names(sub) for name, sub in subcommands.items()})


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
@click.option("--valid-refs", type=click.IntRange(0), default=20, show_default=True,
              help="Photos of each valid user marked valid_ref (the reference set of the evaluation protocol).")
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
@click.option("--check-workers", type=click.IntRange(0, 64), default=None,
              help="Processes that download and check (decode, hash) the photos, each with its share of "
                   "--concurrency; 0 keeps both in the crawl process  [default: CPU cores, at most 4].")
@click.option("--timeout", type=click.FloatRange(0.1), default=15.0, show_default=True,
              help="Seconds to wait for a connection or a read.")
@click.option("--attempts", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Tries per API call or download before giving up.")
@click.option("--retry-base", type=click.FloatRange(0.0), default=2.0, show_default=True,
              help="First backoff step in seconds; doubles per retry, with full jitter.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the backoff jitter.")
@click.option("--offline", is_flag=True,
              help="With --from-list: call no API; fetch the listed photos from their URLs (or --mirror) with "
                   "licence 'unknown' (accepted by --licenses all, which --offline implies).")
@click.option("--dry-run", is_flag=True, help="Print the plan and its API budget; call nothing.")
@pass_session
@one_at_a_time("crawl")
def crawl(session: Session, users_file, crawl_list, discover, groups, num_users, per_user, valid_refs, size, licenses,
          min_side, mirror, api_key, api_secret, api_url, calls_per_hour, concurrency, per_host, check_workers,
          timeout, attempts, retry_base, seed, offline, dry_run) -> None:
    """Crawl Flickr users' photos into ROOT/flickr/<nsid>/ with one manifest per user."""
    from .stages.crawl.crawler import CrawlAborted, CrawlOptions
    from .stages.crawl.listing import extras_for
    from .stages.crawl.stage import Network, Source, crawl as run_crawl, plan_text
    from .stages.crawl.users import UserListError
    from .stages.crawl.api import ApiError

    console.redact(api_key, api_secret)
    try:
        extras_for(size)
        source = Source(users_file, crawl_list, discover, tuple(groups), offline=offline)
        options = CrawlOptions(num_users=num_users, per_user=per_user, valid_refs=valid_refs, size=size,
                               licenses=parse_license_filter("all" if offline else licenses), mirror=mirror)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    network = Network(api_key, api_secret, api_url, calls_per_hour, timeout, attempts, retry_base, concurrency,
                      per_host, min_side, seed, check_workers)
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
    unfinished = summary.unfinished(num_users)
    if unfinished:
        raise click.ClickException(unfinished)


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
    from .replay.server import FaultSpec, ReplayServer

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


# pie fivek ------------------------------------------------------------------------------------


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--expert", "experts", multiple=True, metavar="X=DIR",
              help="Folder of expert X's (A-E) retouched exports; repeatable  "
                   "[default: DIRECTORY/expertA ... expertE where present].")
@click.option("--names", "names_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of original names (file stems) to prepare, one per line; default all in DIRECTORY.")
@click.option("--max-side", type=click.IntRange(16), default=None,
              help="Shrink images so their longest side is at most this many pixels  [default: full size, "
                   "as pie rules].")
@click.option("--test-list", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File of the test images' names or FiveK ids (a4501), one per line  "
                   "[default: the last --test-count by name].")
@click.option("--test-count", type=click.IntRange(0), default=500, show_default=True,
              help="Without --test-list: the last K images by name are the experts' test set (FiveK: 4,500/500).")
@cluster_options(workers_help="Worker processes of the local cluster; 1 decodes in this process  "
                              "[default: all cores].")
@pass_session
@one_at_a_time("fivek")
def fivek(session: Session, directory, experts, names_file, max_side, test_list, test_count, scheduler,
          workers) -> None:
    """Prepare MIT-Adobe FiveK (DNGs, experts' ProPhoto TIFFs) as sRGB PNGs in ROOT/fivek for the later stages."""
    from .cluster import dask_client
    from .stages.fivek.layout import FiveKInputError, expert_folders, parse_expert
    from .stages.fivek.prepare import run_fivek
    from .stages.rules import find_sources

    try:
        given = dict(parse_expert(value) for value in experts)
        sources, problems = find_sources(directory, names_file)
        folders = expert_folders(directory, given)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for problem in problems:
        click.echo(f"pie: {problem}", err=True)
    if not sources and not folders:
        raise click.ClickException(f"{directory}: no FiveK originals (DNG, TIFF, JPEG, PNG) or expert folders")
    bar = console.progress(total=None, desc="fivek", unit="image", enabled=session.show_progress)
    client = contextlib.nullcontext() if workers == 1 and not scheduler else dask_client(scheduler, workers)
    try:
        with bar, client as dask:
            summary = run_fivek(session.workspace, sources, folders, max_side=max_side, test_list=test_list,
                                test_count=test_count, client=dask, on_done=lambda record: bar.update())
    except FiveKInputError as exc:
        raise click.ClickException(str(exc)) from None
    for problem in summary.problems:
        click.echo(f"pie: {problem}", err=True)
    summary.problems += problems
    console.summary(summary.line(), session.quiet)
    if summary.failed:
        raise click.ClickException(f"{summary.failed} files could not be prepared (see the lines above, "
                                   "manifests/fivek.jsonl and manifests/fivek-experts.jsonl)")


# pie rules ------------------------------------------------------------------------------------


def _all_rules(presets_dir: Path | None) -> dict:
    """The 25 built-in rules plus every preset file in ``presets_dir``."""
    from rules.develop.preset import builtin_presets, load_preset_dir
    from rules.registry import builtin_rules, rules_from_presets

    rules = builtin_rules()
    if presets_dir is not None:
        presets, problems = load_preset_dir(presets_dir)
        for problem in problems:
            click.echo(f"pie: {problem}", err=True)
        shipped = builtin_presets()
        clashes = sorted(name for name in set(presets) & set(rules)
                         if name not in shipped or presets[name].settings != shipped[name].settings)
        if clashes:
            raise click.UsageError(f"--presets: {presets_dir} redefines built-in rule {clashes[0]!r}")
        presets = {name: preset for name, preset in presets.items() if name not in rules}  # copies of built-ins
        rules.update(rules_from_presets(presets))
    return rules


@cli.group(invoke_without_command=True)
@click.option("--fivek", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of FiveK originals (DNG, 8-bit JPEG/PNG/TIFF or 16-bit TIFF), or the folder `pie fivek` read.")
@click.option("--names", "names_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of original names (file stems) to use, one per line; default all in --fivek.")
@click.option("--only", default=None, help="Comma-separated rule names to run; default all.")
@click.option("--max-side", type=click.IntRange(16), default=None,
              help="Shrink originals so their longest side is at most this many pixels first.")
@click.option("--presets", "presets_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of extra Lightroom presets (.xmp, .lrtemplate), each an extra pseudo-user.")
@cluster_options()
@click.pass_context
def rules(ctx: click.Context, fivek, names_file, only, max_side, presets_dir, scheduler, workers) -> None:
    """Apply the 25 rule-based enhancers to FiveK originals: 25 pseudo-users in ROOT/rules/."""
    if ctx.invoked_subcommand is not None:
        return
    if fivek is None:
        raise click.UsageError("pie rules needs --fivek DIR (or a subcommand: list, show)")
    from .cluster import dask_client
    from .stages.rules import RulesInputError, find_sources, run_rules, selected_rules

    session: Session = ctx.obj
    try:
        chosen = selected_rules(_all_rules(presets_dir), only.split(",") if only else None)
        sources, problems = find_sources(fivek, names_file)
    except (ValueError, RulesInputError) as exc:
        raise click.UsageError(str(exc)) from None
    for problem in problems:
        click.echo(f"pie: {problem}", err=True)
    if not sources:
        raise click.ClickException(f"{fivek}: no usable originals")
    bar = console.progress(total=len(sources) * len(chosen), desc="rules", unit="image",
                           enabled=session.show_progress)
    with holding_stage(session, "rules"), bar, dask_client(scheduler, workers) as client:
        summary = run_rules(session.workspace, sources, chosen, client=client, max_side=max_side,
                            on_done=lambda record: bar.update())
        bar.update(summary.skipped + summary.upgraded)
    summary.problems = problems
    console.summary(summary.line(), session.quiet)
    if summary.done["failed"] or summary.prepared["failed"]:
        raise click.ClickException(f"{summary.done['failed']} rule outputs failed and {summary.prepared['failed']} "
                                   "originals were unreadable (see the failed records in manifests/rules/ and "
                                   "manifests/fivek.jsonl); a rerun retries them")


@rules.command("list")
@click.option("--presets", "presets_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Also list the presets in this folder.")
def rules_list(presets_dir) -> None:
    """Print the registry: name, kind, reference and parameters of every rule."""
    import json

    for rule in _all_rules(presets_dir).values():
        click.echo(f"{rule.name:18s} {rule.kind:7s} {rule.reference}")
        click.echo(f"{'':18s} {'':7s} {json.dumps(rule.parameters, sort_keys=True)}")


@rules.command("show")
@click.argument("name")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output PNG file.")
@click.option("--max-side", type=click.IntRange(16), default=None, help="Shrink the image first, pixels.")
@click.option("--presets", "presets_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of extra presets NAME may come from.")
def rules_show(name, image, out, max_side, presets_dir) -> None:
    """Render IMAGE with rule NAME into --out."""
    from .imageio import ImageError, encode_png, float_to_uint8
    from .stages.rules import load_source

    available = _all_rules(presets_dir)
    if name not in available:
        raise click.UsageError(f"unknown rule {name!r} (see `pie rules list`)")
    try:
        pixels, _ = load_source(image, max_side)
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    out.write_bytes(encode_png(float_to_uint8(available[name](pixels))))
    click.echo(f"rules show: {name} applied to {image} -> {out}")


# pie train-degrader / pie degrade -----------------------------------------------------------------

def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA device is available")
    return name


@cli.command("train-degrader")
@click.option("--model", "model_size", type=click.Choice(DSN_SIZES), default="paper", show_default=True,
              help="Network size: the paper's (11.6 M weights), or smaller ones for CPUs and tests.")
@click.option("--blocks", type=click.IntRange(1), default=None, help="Override the number of coupling blocks.")
@click.option("--channels", type=click.IntRange(2), default=None,
              help="Override the feature channels (split in half by each coupling block).")
@click.option("--subnet-channels", type=click.IntRange(1), default=None, help="Override the subnet width.")
@click.option("--steps", type=click.IntRange(1), default=1_000_000, show_default=True, help="Optimiser steps.")
@click.option("--batch-size", type=click.IntRange(1), default=2, show_default=True, help="Pairs per step.")
@click.option("--crop-size", type=click.IntRange(8), default=180, show_default=True,
              help="Side of the aligned random crops, pixels.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4, show_default=True,
              help="Adam learning rate.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-5, show_default=True, help="Adam weight decay.")
@click.option("--grad-clip", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Largest gradient norm.")
@click.option("--lr-milestones", default="150000,300000,450000,600000,750000", show_default=True,
              help="Comma-separated steps at which the learning rate is multiplied by --lr-gamma.")
@click.option("--lr-gamma", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Learning-rate factor at each milestone.")
@click.option("--seed", type=int, default=10, show_default=True, help="Seed of weights, data order and crops.")
@click.option("--val-every", type=click.IntRange(1), default=1000, show_default=True,
              help="Validate (PSNR of both directions) every this many steps.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=1000, show_default=True,
              help="Save a resumable checkpoint every this many steps.")
@click.option("--valid-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Fraction of originals held out for validation.")
@click.option("--vgg16", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Local torchvision VGG16 weights whose first two convolutions become the fixed encoder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-mixed-precision", is_flag=True, help="Train in float32 on CUDA too (default bfloat16 autocast).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Checkpoint file  [default: ROOT/degrader/dsn.pt]; an existing one is resumed.")
@pass_session
@one_at_a_time("train-degrader")
def train_degrader(session: Session, model_size, blocks, channels, subnet_channels, steps, batch_size, crop_size,
                   lr, weight_decay, grad_clip, lr_milestones, lr_gamma, seed, val_every, checkpoint_every,
                   valid_fraction, vgg16, device, no_mixed_precision, out) -> None:
    """Train DSN to turn rule outputs back into their originals (resumable)."""
    from degrader.train import ConfigurationMismatch, TrainConfig

    from .stages.train_degrader import NoPairs, mismatch_advice, model_config, run_train_degrader

    try:
        config = TrainConfig(model=model_config(model_size, blocks=blocks, channels=channels,
                                                subnet_channels=subnet_channels),
                             steps=steps, batch_size=batch_size, crop_size=crop_size, learning_rate=lr,
                             weight_decay=weight_decay, grad_clip_norm=grad_clip,
                             lr_milestones=tuple(int(part) for part in lr_milestones.split(",") if part.strip()),
                             lr_gamma=lr_gamma, seed=seed, val_every=val_every, checkpoint_every=checkpoint_every,
                             mixed_precision=not no_mixed_precision)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    last: dict = {}
    bar = console.progress(total=steps, desc="train-degrader", unit="step", enabled=session.show_progress)

    def on_log(step: int, metrics: dict) -> None:
        last.update(metrics)
        bar.n = step
        bar.set_postfix(loss=f"{metrics['loss']:.1f}", psnr=f"{last.get('val_psnr_degrade', float('nan')):.2f}",
                        refresh=False)
        bar.refresh()

    try:
        with bar:
            summary = run_train_degrader(session.workspace, config, out, valid_fraction=valid_fraction,
                                         vgg16=vgg16, device=_device(device), on_log=on_log,
                                         on_problem=lambda problem: click.echo(f"pie: {problem}", err=True))
    except ConfigurationMismatch as exc:
        raise click.ClickException(mismatch_advice(exc)) from None
    except NoPairs as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:  # CheckpointError, ImageError and bad options are ValueErrors
        raise click.ClickException(str(exc).splitlines()[0]) from None
    console.summary(summary.line(), session.quiet)


@cli.command()
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Trained degrader  [default: ROOT/degrader/dsn.pt].")
@click.option("--format", "image_format", type=click.Choice(["jpeg", "png"]), default="jpeg", show_default=True,
              help="File format of the pseudo originals.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Photos per batch (per Dask task on CPUs).")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N; CPUs run batches as Dask tasks.")
@cluster_options(scheduler_help="Address of a running Dask scheduler (CPU only); default a local cluster.")
@pass_session
@one_at_a_time("degrade")
def degrade(session: Session, checkpoint, image_format, quality, batch_size, device, scheduler, workers) -> None:
    """Turn every kept Flickr photo into a pseudo original in ROOT/degraded/ with the trained DSN."""
    from degrader.train import CheckpointError

    from .cluster import dask_client
    from .stages.degrade import run_degrade

    checkpoint = checkpoint or session.workspace.degrader_checkpoint()
    if not checkpoint.exists():
        raise click.ClickException(f"{checkpoint}: no trained degrader; run `pie train-degrader` first")
    device = _device(device)
    bar = console.progress(desc="degrade", unit="photo", enabled=session.show_progress)
    try:
        with bar:
            summary = run_degrade(session.workspace, checkpoint, device=device, image_format=image_format,
                                  client_factory=(lambda: dask_client(scheduler, workers)) if device == "cpu" else None,
                                  quality=quality, batch_size=batch_size, on_done=bar.update)
    except CheckpointError as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    console.summary(summary.line(), session.quiet)


# pie shard / pie export -----------------------------------------------------------------------

SOURCES = ("flickr", "rules")


@cli.command()
@click.option("--out", default=None,
              help="Folder or fsspec URL (file://, s3://, gs://, ...) of the shards  [default: ROOT/shards].")
@click.option("--maxcount", type=click.IntRange(1), default=1000, show_default=True, help="Most samples per shard.")
@click.option("--maxsize", default="256MB", show_default=True,
              help="Largest shard, e.g. 256MB or 1GiB (a user is split only when it alone is larger).")
@click.option("--only", type=click.Choice(SOURCES), default=None, help="Shard only Flickr pairs or only rule pairs.")
@cluster_options(scheduler_help="Address of a running Dask scheduler whose workers see ROOT; default a local "
                                "cluster.")
@pass_session
@one_at_a_time("shard")
def shard(session: Session, out, maxcount, maxsize, only, scheduler, workers) -> None:
    """Write the pairs as user-grouped WebDataset shards with index.json; exit 1 if any pair was skipped."""
    from .cluster import dask_client
    from .stages.shard.plan import parse_size, workspace_plan
    from .stages.shard.write import run_shard

    try:
        plans, skipped = workspace_plan(session.workspace, only=only, maxcount=maxcount, maxsize=parse_size(maxsize))
    except ValueError as exc:
        raise click.UsageError(f"--maxsize: {exc}") from None
    if not plans:
        for item in skipped:
            click.echo(f"pie: skipped {item.line()}", err=True)
        raise click.ClickException(f"{session.workspace.root}: no pairs to shard; run `pie degrade` or `pie rules`")
    bar = console.progress(total=sum(len(plan.pairs) for plan in plans), desc="shard", unit="sample",
                           enabled=session.show_progress)
    with bar:
        summary = run_shard(session.workspace, plans, skipped, out or str(session.workspace.shards_dir()),
                            client_factory=lambda: dask_client(scheduler, workers),
                            on_done=lambda state: bar.update(state["samples"] + len(state["skipped"])))
    for line in summary.skipped:
        click.echo(f"pie: skipped {line}", err=True)
    console.summary(summary.line(), session.quiet)
    if summary.skipped:
        raise click.ClickException(f"{len(summary.skipped)} pairs were not sharded (see above); fix them and rerun")


@cli.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["reference"]), default="reference", show_default=True,
              help="Folder layout to write: that of the public masked-style-modeling code.")
@click.option("--only", type=click.Choice(SOURCES), default=None, help="Export only Flickr pairs or only rule pairs.")
@pass_session
def export(session: Session, out, layout, only) -> None:
    """Lay the pairs out in OUT as the reference implementation reads them (hard links where possible)."""
    from .stages.export import export_reference

    summary = export_reference(session.workspace, out, only)
    for item in summary.skipped:
        click.echo(f"pie: skipped {item.line()}", err=True)
    console.summary(summary.line(), session.quiet)
    if not summary.pairs:
        raise click.ClickException(f"{session.workspace.root}: no pairs to export; run `pie degrade` or `pie rules`")


# pie audit ------------------------------------------------------------------------------------


@cli.command()
@click.option("--licenses", default="open", show_default=True,
              help="Licence ids a kept photo or sample may carry: 'open', 'all', or a comma list.")
@click.option("--valid-refs", type=click.IntRange(0), default=20, show_default=True,
              help="Reference photos expected per valid user.")
@click.option("--no-checksums", is_flag=True, help="Check file sizes only, not their SHA-256.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Degrader checkpoint the pseudo originals must come from  [default: ROOT/degrader/dsn.pt].")
@click.option("--shards", "check_shards", is_flag=True,
              help="Also check every shard against index.json and every sample against its record.")
@click.option("--shards-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the shards and index.json that --shards checks  [default: ROOT/shards].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report (counts, problems with kind, file and message) as JSON to this file.")
@pass_session
def audit(session: Session, licenses, valid_refs, no_checksums, checkpoint, check_shards, shards_dir,
          json_path) -> None:
    """Check manifests, files, licences, checksums, splits, pseudo originals and shards; exit 1 on any problem."""
    import json

    from .stages.audit import audit_workspace

    try:
        allowed = parse_license_filter(licenses)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if shards_dir is not None and not check_shards:
        raise click.UsageError("--shards-dir is only read with --shards")
    root = session.workspace.root
    if not root.is_dir():
        raise click.ClickException(f"{root}: no such workspace; give the workspace with --root DIR before the "
                                   "command, or PIE_ROOT")
    if not any((root / "manifests").rglob("*.jsonl")):
        raise click.ClickException(f"{root}: no manifest under {root / 'manifests'}; nothing to audit")
    shards = (shards_dir or session.workspace.shards_dir()) if check_shards else None
    with console.progress(desc="audit shards", unit="shard", enabled=session.show_progress and check_shards) as bar:
        report = audit_workspace(session.workspace, licenses=allowed, valid_refs=valid_refs,
                                 verify_checksums=not no_checksums, checkpoint=checkpoint, shards=shards,
                                 on_shard=lambda name: bar.update(1))
    for problem in report.findings:
        click.echo(f"{problem.kind}: {problem.message}", err=True)
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(report.as_dict(), indent=1))
        except OSError as exc:
            raise click.ClickException(f"{json_path}: cannot write the report ({exc.strerror or exc})") from None
    if not report.ok and not session.quiet:
        click.echo(report.table(), err=True)
    console.summary(report.line(), session.quiet)
    if not report.ok:
        raise click.exceptions.Exit(1)


# pie status -----------------------------------------------------------------------------------


def _crawl_target(per_user: int | None) -> int:
    """``--per-user``, else the ``[crawl] per-user`` of pie.toml, else the crawl's default."""
    from .stages.status import crawl_per_user

    return per_user or crawl_per_user(click.get_current_context().find_root().default_map)


@cli.command()
@click.option("--per-user", type=click.IntRange(1), default=None,
              help="Photos per user the crawl aims at  [default: [crawl] per-user of pie.toml, else 100].")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON instead of text.")
@click.option("--users", "with_users", is_flag=True, help="Include one entry per crawled user (with --json).")
@pass_session
def status(session: Session, per_user, as_json, with_users) -> None:
    """Show what each stage has done and what is left, read from the workspace."""
    import json

    from .stages.status import StatusError, format_status, workspace_status

    try:
        result = workspace_status(session.workspace, per_user=_crawl_target(per_user), detail=with_users)
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=1, sort_keys=True) if as_json else format_status(result))


# pie report -----------------------------------------------------------------------------------


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML page to write  [default: ROOT/report.html].")
@click.option("--card-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for ATTRIBUTION.csv and DATASET.md  [default: beside the page].")
@click.option("--per-user", type=click.IntRange(1), default=None,
              help="Photos per user the crawl aims at  [default: [crawl] per-user of pie.toml, else 100].")
@click.option("--sheet-users", type=click.IntRange(0), default=12, show_default=True,
              help="Users shown with a contact sheet of pairs.")
@click.option("--sheet-pairs", type=click.IntRange(1), default=6, show_default=True,
              help="Pairs per user on a contact sheet.")
@pass_session
def report(session: Session, out, card_dir, per_user, sheet_users, sheet_pairs) -> None:
    """Write an offline HTML report, ATTRIBUTION.csv and DATASET.md from the workspace."""
    from .stages.report import write_report_files
    from .stages.status import StatusError

    try:
        files = write_report_files(session.workspace, out or session.workspace.root / "report.html",
                                   card_dir=card_dir, per_user=_crawl_target(per_user), sheet_users=sheet_users,
                                   sheet_pairs=sheet_pairs)
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: cannot write ({exc.strerror or exc})") from None
    truth = files.ground_truth
    against = (f"; ground truth: pseudo originals {truth['pseudo_psnr']:.2f} dB, retouched "
               f"{truth['retouched_psnr']:.2f} dB over {truth['count']} photos" if truth["count"] else "")
    console.summary(f"report: {files.html}, {files.attribution.name}, {files.card.name}{against}", session.quiet)


# pie train ------------------------------------------------------------------------------------

MSM_SIZES = ("paper", "small")


@cli.command()
@click.option("--step", "step", type=click.Choice(["1", "pca", "2", "all"]), default="all", show_default=True,
              help="What to run: step 1, the style PCA, step 2, or all three in order (finished parts are skipped).")
@click.option("--model", "model_size", type=click.Choice(MSM_SIZES), default="paper", show_default=True,
              help="Network sizes: the paper's (90.8 M weights) or a CPU-sized one.")
@click.option("--image-size", type=click.IntRange(32), default=None,
              help="Override the enhancer's training side, pixels (paper 512; a multiple of 32).")
@click.option("--embed-size", type=click.IntRange(32), default=None,
              help="Override the side the style and content embeddings see, pixels (paper 256).")
@click.option("--shards", default=None, help="Folder or URL holding index.json and the shards  [default: ROOT/shards].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint folder  [default: ROOT/msm]; its files are resumed.")
@click.option("--step1-epochs", type=click.IntRange(1), default=30, show_default=True, help="Epochs of step 1.")
@click.option("--step2-epochs", type=click.IntRange(1), default=30, show_default=True, help="Epochs of step 2.")
@click.option("--step1-batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Pairs per step-1 optimiser step and process.")
@click.option("--step2-batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="User sets per step-2 optimiser step and process.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="Adam learning rate at the start of each cosine schedule.")
@click.option("--num-preferred", type=click.IntRange(1), default=10, show_default=True,
              help="N: preferred pairs per step-2 sample.")
@click.option("--perceptual-weight", type=click.FloatRange(0), default=0.4, show_default=True,
              help="Weight of the perceptual term of the step-1 loss.")
@click.option("--tv-weight", type=click.FloatRange(0), default=0.01, show_default=True,
              help="Weight of the edge-aware total variation term of the step-1 loss.")
@click.option("--pca-components", type=click.IntRange(1), default=512, show_default=True,
              help="Principal components of the style space.")
@click.option("--valid-preferred", type=click.IntRange(1), default=20, show_default=True,
              help="valid_ref pairs per validation user used as the preferred set (step 2).")
@click.option("--valid-pairs-per-user", type=click.IntRange(0), default=100, show_default=True,
              help="Most validation pairs per user and step (0 = all).")
@click.option("--shuffle-buffer", type=click.IntRange(0), default=1000, show_default=True,
              help="Step-1 shuffle buffer per loader worker, samples.")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="DataLoader worker processes per training process.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, data order and augmentation.")
@click.option("--save-every", type=click.IntRange(1), default=500, show_default=True,
              help="Write the resumable checkpoint every this many optimiser steps.")
@click.option("--backbone", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Local torchvision ResNet-18 weights for every backbone  [default: random initialisation].")
@click.option("--perceptual", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Local PieNet embedding (reference pienet_embedding.pth.tar) or ResNet-18 weights for the "
                   "perceptual loss  [default: the term is off].")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK).")
@click.option("--no-mixed-precision", is_flag=True, help="Train in float32 on CUDA too (default bfloat16 autocast).")
@click.option("--dry-run", is_flag=True, help="Print the networks' sizes and the data it would read, then exit.")
@pass_session
@one_at_a_time("train")
def train(session: Session, step, model_size, image_size, embed_size, shards, out, step1_epochs, step2_epochs,
          step1_batch_size, step2_batch_size, lr, num_preferred, perceptual_weight, tv_weight, pca_components,
          valid_preferred, valid_pairs_per_user, shuffle_buffer, workers, seed, save_every, backbone, perceptual,
          device, no_mixed_precision, dry_run) -> None:
    """Train masked style modeling on the shards: step 1, PCA, step 2 (resumable; DDP under torchrun)."""
    import dataclasses

    from model.networks import MSMConfig
    from model.train import TrainConfig, setup_distributed
    from model.train import train as run_training

    from .stages import train as train_stage

    sizes = {"image_size": image_size, "embed_size": embed_size}
    try:
        model = dataclasses.replace(getattr(MSMConfig, model_size)(),
                                    **{key: value for key, value in sizes.items() if value is not None})
        config = TrainConfig(model=model, step1_epochs=step1_epochs, step2_epochs=step2_epochs,
                             step1_batch_size=step1_batch_size, step2_batch_size=step2_batch_size,
                             learning_rate=lr, num_preferred=num_preferred, perceptual_weight=perceptual_weight,
                             tv_weight=tv_weight, pca_components=pca_components, valid_preferred=valid_preferred,
                             valid_pairs_per_user=valid_pairs_per_user, shuffle_buffer=shuffle_buffer,
                             num_workers=workers, seed=seed, save_every=save_every,
                             mixed_precision=not no_mixed_precision)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    shards = shards or str(session.workspace.shards_dir())
    try:
        data = train_stage.read_data(shards)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{shards}: cannot read the shard index ({str(exc).splitlines()[0]}); "
                                   "run `pie shard` first") from None
    if dry_run:
        click.echo(train_stage.model_report(config))
        click.echo(train_stage.data_report(data, shards))
        return
    if not data.train_urls:
        raise click.ClickException(f"{shards}: no train shards")
    out = out or session.workspace.root / "msm"
    try:
        chosen, rank, world_size = setup_distributed(device)
    except ValueError as exc:
        raise click.UsageError(f"--device: {exc}") from None
    bars: dict = {}

    def on_log(part: str, metrics: dict) -> None:
        if rank != 0 or not session.show_progress:
            return
        if "row" in metrics:
            row = metrics["row"]
            bar = bars.pop(part, None)
            if bar is not None:
                bar.close()
            console.summary(f"{part} epoch {row['epoch']}: loss {row['loss']:.4f}, valid PSNR "
                            f"{row['valid_psnr']:.2f} dB, {row['images_per_s'] or 0:.1f} images/s"
                            + (f", {row['skipped']} bad samples skipped" if row["skipped"] else ""), session.quiet)
            return
        if part not in bars:
            bars[part] = console.progress(desc=f"{part} epoch {metrics['epoch'] + 1}", unit="step", enabled=True)
        bars[part].n = metrics["batch"]
        bars[part].set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.1f}", refresh=False)
        bars[part].refresh()

    try:
        summary = run_training(config, data, out, parts=train_stage.STEP_PARTS[step], device=chosen, rank=rank,
                               world_size=world_size, perceptual=train_stage.load_perceptual(perceptual),
                               backbone=train_stage.backbone_loader(backbone), on_log=on_log)
    except ValueError as exc:  # CheckpointError and WeightsError are ValueErrors
        raise click.ClickException(str(exc).splitlines()[0]) from None
    finally:
        for bar in bars.values():
            bar.close()
    if rank == 0:
        best = ", ".join(f"{part} best valid PSNR {value:.2f} dB" if value == value
                         else f"{part} not validated (no validation pairs)" for part, value in summary.best_psnr.items())
        console.summary(f"train: ran {', '.join(summary.ran) or 'nothing'}"
                        + (f", skipped finished {', '.join(summary.skipped)}" if summary.skipped else "")
                        + (f"; {best}" if best else "") + f" -> {summary.model_path or out}", session.quiet)


# pie enhance ----------------------------------------------------------------------------------


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="pie model file or a folder in the reference layout  [default: ROOT/msm/model.pt].")
@click.option("--preferred", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The user's retouched photos; with no --preferred-inputs, a folder of NAME.ext (retouched) "
                   "beside NAME_input.ext (original).")
@click.option("--preferred-inputs", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The originals of --preferred, matched by file stem.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the enhanced photos, OUT/<stem>.<ext> (finished ones are skipped).")
@click.option("--method", type=click.Choice(["msm", "mean-style", "weighted-average"]), default="msm",
              show_default=True, help="Style of each photo: the paper's transformer, the mean preferred style, "
                                      "or content-weighted preferred styles.")
@click.option("--full-resolution", type=click.Choice(["residual", "guided", "network"]), default="guided",
              show_default=True, help="How the model-size enhancement reaches the photo's size: upsampled "
                                      "residual, local colour transform (guided filter), or the enhancer at full size.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@pass_session
def enhance(session: Session, images, checkpoint, preferred, preferred_inputs, out, method, full_resolution,
            device, quality) -> None:
    """Enhance IMAGES (files or folders) in the style of one user's preferred (original, retouched) pairs."""
    from model.personalize import Personalizer

    from .stages import enhance as enhance_stage

    pairs = enhance_stage.find_pairs(preferred, preferred_inputs)
    if not pairs:
        where = (f"{preferred} and {preferred_inputs} share no file stem" if preferred_inputs is not None
                 else f"{preferred} holds no NAME.ext beside NAME{enhance_stage.INPUT_SUFFIX}.ext")
        raise click.UsageError(f"--preferred: no preferred pairs: {where}")
    photos = enhance_stage.collect_images(images)
    if not photos:
        raise click.ClickException(f"no images found in {', '.join(map(str, images))}")
    checkpoint = checkpoint or session.workspace.root / "msm" / "model.pt"
    try:
        personalizer = Personalizer.from_checkpoint(checkpoint, _device(device), method=method,
                                                    full_resolution=full_resolution)
    except ValueError as exc:  # CheckpointError and WeightsError are ValueErrors
        raise click.ClickException(str(exc).splitlines()[0]) from None
    reader = enhance_stage.PairReader(pairs)
    try:
        personalizer.fit(reader)
    except ValueError:
        raise click.ClickException(f"none of the {len(pairs)} preferred pairs in {preferred} could be read") from None
    bar = console.progress(total=len(photos), desc="enhance", unit="photo", enabled=session.show_progress)
    with bar:
        summary = enhance_stage.run_enhance(personalizer, photos, out, quality=quality, on_done=bar.update)
    if not summary.enhanced and not summary.done_before:
        raise click.ClickException(f"nothing enhanced: all {summary.failed} photos failed (see the lines above)")
    console.summary(summary.line(), session.quiet)


# pie evaluate -----------------------------------------------------------------------------------


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.UsageError(f"{option}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.UsageError(f"{option}: expected positive whole numbers, got {text!r}")
    return values


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="pie model file or a folder in the reference layout  [default: ROOT/msm/model.pt].")
@click.option("--shards", multiple=True,
              help="Shard folder/URL holding index.json (its valid users), or shard URLs; repeatable  "
                   "[default: ROOT/shards unless --pairs is given].")
@click.option("--pairs", nargs=2, multiple=True, metavar="ORIGINALS RETOUCHED",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Two folders of one test user, matched by file stem (e.g. FiveK originals and expert C); "
                   "repeatable.")
@click.option("--test-count", type=click.IntRange(0), default=0, show_default=True,
              help="--pairs users: the last K pairs by stem are the fixed unseen set, the rest the preferred "
                   "pool (500 for FiveK); 0: every pair outside a draw is unseen.")
@click.option("--fivek-expert", "fivek_experts", multiple=True,
              type=click.Choice(["A", "B", "C", "D", "E"], case_sensitive=False),
              help="FiveK expert prepared by `pie fivek` as a test user (ROOT/fivek against ROOT/fivek/experts/X, "
                   "the recorded test split unseen, the rest the preferred pool); repeatable.")
@click.option("--num-preferred", default="20,50,100", show_default=True,
              help="Preferred-set sizes N, comma-separated.")
@click.option("--draws", "draw_mode", type=click.Choice(["consecutive", "random"]), default="consecutive",
              show_default=True, help="Preferred sets as consecutive disjoint blocks of the pool (the reference) "
                                      "or seeded random samples.")
@click.option("--num-draws", type=click.IntRange(1), default=10, show_default=True,
              help="Preferred sets drawn per user and N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --draws random.")
@click.option("--methods", default="identity,mean-style,weighted-average,msm", show_default=True,
              help="Methods compared on the same draws, comma-separated.")
@click.option("--size", type=click.IntRange(32), default=512, show_default=True,
              help="Side (pixels) of the square images PSNR and ΔE are computed at; SSIM at about half.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Unseen images per forward pass.")
@click.option("--examples", type=click.IntRange(0), default=3, show_default=True,
              help="Example images per user in the HTML sheet.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for per-user results (resumable)  [default: ROOT/evaluation/<run key>].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the aggregate and per-user results as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a page with the tables and example triplets per user.")
@pass_session
@one_at_a_time("evaluate")
def evaluate(session: Session, checkpoint, shards, pairs, test_count, fivek_experts, num_preferred, draw_mode,
             num_draws, seed, methods, size, batch_size, examples, device, out, json_path, html_path) -> None:
    """Score the model beside identity, mean-style and weighted-average by the paper's protocol."""
    from model.evaluation import Settings, format_table

    from .stages import evaluate as evaluate_stage
    from .stages.fivek.prepare import expert_test_users

    try:
        settings = Settings(num_preferred=_int_list(num_preferred, "--num-preferred"), draws=num_draws,
                            mode=draw_mode, seed=seed, size=size,
                            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                            batch_size=batch_size, examples=examples)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    root = session.workspace.root
    if not shards and not pairs and not fivek_experts:
        shards = (str(session.workspace.shards_dir()),)

    def progress(total):
        return console.progress(total=total, desc="evaluate", unit="user", enabled=session.show_progress)

    try:
        split_pairs = expert_test_users(session.workspace, fivek_experts)
        outcome = evaluate_stage.run(checkpoint or root / "msm" / "model.pt", settings, shards=shards, pairs=pairs,
                                     test_count=test_count, split_pairs=split_pairs, device=_device(device), out=out,
                                     default_out=root / "evaluation", progress=progress)
    except ValueError as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    if not outcome.users:
        raise click.ClickException("no test user could be evaluated (see the lines above)")
    evaluate_stage.write_reports(outcome, json_path, html_path)
    if not session.quiet:
        click.echo(format_table(outcome.summary))
    console.summary(f"evaluate: {len(outcome.users)} users ({outcome.evaluated_now} now) -> {outcome.run.path}",
                    session.quiet)


# pie demo -------------------------------------------------------------------------------------


@cli.command()
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Dask worker processes for the rules stage.")
@pass_session
@one_at_a_time("demo")
def demo(session: Session, workers) -> None:
    """Run every stage on the bundled sample corpus and write ROOT/report.html."""
    from .stages.demo.run import run_demo

    result = run_demo(session.workspace, workers=workers,
                      report=lambda line: console.summary(line, session.quiet))
    if not result.ok:
        raise click.ClickException("demo finished with problems; see the audit lines above")


def _group_flags() -> set[str]:
    """Every flag of the ``pie`` group itself (``--root``, ``-q``, ...)."""
    return {flag for param in cli.params for flag in [*param.opts, *param.secondary_opts]}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, exit codes 1 (error), 2 (usage), 130 (interrupted)."""
    try:
        # Without standalone mode Click returns the code of ``ctx.exit(code)`` instead of raising it.
        code = cli.main(args=argv, prog_name="pie", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.NoSuchOption as exc:
        if exc.option_name in _group_flags() and exc.ctx is not None and exc.ctx.parent is not None:
            command = exc.ctx.command_path.partition(" ")[2]
            exc.message = (f"{exc.option_name} is an option of pie itself: put it before the command, "
                           f"as in 'pie {exc.option_name} ... {command} ...'")
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("pie: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except OSError as exc:  # a full disk, a read-only folder, ...: the file and the cause
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(console.scrub(f"pie: {where}{exc.strerror or exc}"), err=True)
        sys.exit(1)
    except Exception as exc:  # an internal error still gets one line
        if "-vv" in (argv or sys.argv) or "--verbose" in (argv or sys.argv):
            traceback.print_exc()
        click.echo(console.scrub(f"pie: internal error: {exc.__class__.__name__}: {exc} (rerun with -vv for details)"),
                   err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
