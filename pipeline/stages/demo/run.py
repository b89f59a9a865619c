"""``pie demo``: every stage end to end on the bundled sample corpus.

1. builds the sample corpus (:mod:`pipeline.stages.demo.corpus`) and serves it with
   :class:`~pipeline.replay.server.ReplayServer` on 127.0.0.1 with a few faults;
2. ``crawl``: the real ``flickrapi`` client against it (users given as NSIDs,
   usernames and profile URLs, one unknown user); the true originals of the
   kept photos go to ``ROOT/ground-truth/flickr/`` (:mod:`pipeline.stages.demo.truth`);
3. ``rules``: the 25 pseudo-users on the sample photographs (standing in for
   FiveK originals) on a local Dask cluster;
4. ``train-degrader`` and ``degrade``: a small DSN trained briefly on those
   pairs, then run over the crawl, its pseudo originals measured against the
   true originals beside the retouched photos, and how much of the users'
   content-dependent looks the pseudo pairs keep (:mod:`pipeline.stages.demo.headroom`);
5. ``shard``: every pair into WebDataset shards with ``index.json``;
6. ``train``: the small masked style modeling networks at 64 px, briefly,
   from the shards;
7. ``evaluate``: the paper's protocol on the valid users of the shards, the
   model beside identity, mean-style and weighted-average
   (``ROOT/evaluation.html``);
8. ``enhance``: the held-out photos of one valid user personalized from its
   reference pairs at their own size (``ROOT/demo/enhanced/<nsid>/``);
9. ``audit`` of the manifests, files and shards; then ``pie report``'s page
   (``ROOT/report.html``) with ``ATTRIBUTION.csv`` and ``DATASET.md``.

Everything is deterministic and resumable: running the demo again skips the
work already done.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from manifests.jsonl import latest_by
from manifests.workspace import Workspace

from ...console import progress
from ...imageio import encode_png, read_image, shrink_to_max_side
from ..audit import audit_workspace
from ..report import write_report
from ..report.images import ground_truth_psnr
from ..status import flickr_photos
from .corpus import build_corpus, source_photographs
from .headroom import look_headroom
from .truth import write_ground_truth

log = logging.getLogger("pie.demo")

DEMO_KEY, DEMO_SECRET = "demo-key", "demo-secret"
DEMO_USERS, DEMO_PHOTOS, DEMO_PER_USER = 12, 30, 12
#: Reference (preferred) photos of each valid user; the other kept photos are its unseen ones.
DEMO_VALID_REFS = 8
#: Adam's learning rate for both training steps: at 1e-3 step 1 learns but the transformer of step 2
#: does not (``tests/bench/bench_content.py``); and the epochs of step 2, which is cheap.
DEMO_LEARNING_RATE, DEMO_STEP2_EPOCHS = 3e-4, 3
#: Preferred-set size and draws of the demo evaluation, and the side (pixels) it scores at.
DEMO_PREFERRED, DEMO_DRAWS, DEMO_EVAL_SIZE = 4, 2, 128
DEMO_STEPS, DEMO_CROP = 120, 64
DEMO_SHARD_SAMPLES = 100
DEMO_FAULTS = "api:500=0.05,api:429=0.05,img:500=0.03,img:truncate=0.03,img:html=0.02"


@dataclass
class DemoResult:
    """Summary lines of every stage and where the report is."""

    lines: list[str] = field(default_factory=list)
    report: Path | None = None
    ok: bool = True


def prepare_originals(folder: Path, max_side: int = 512) -> None:
    """The sample photographs as PNG originals of at most ``max_side`` px (the FiveK stand-in)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in sorted(source_photographs().items()):
        target = folder / f"{Path(name).stem.replace('_', '-')}.png"
        if target.exists():
            continue
        target.write_bytes(encode_png(shrink_to_max_side(read_image(path).as_uint8(), max_side)))


def run_demo(workspace: Workspace, *, workers: int = 2, report: Callable[[str], None] = print) -> DemoResult:
    """Run the whole pipeline on the sample corpus inside ``workspace``."""
    from ...cluster import dask_client
    from ..crawl.crawler import CrawlOptions
    from ..crawl.stage import Network, Source, crawl
    from ...replay.server import ReplayServer
    from ..rules import find_sources, run_rules
    from rules.registry import builtin_rules

    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    result = DemoResult()

    def say(line: str) -> None:
        result.lines.append(line)
        report(line)

    corpus = workspace.root / "demo" / "corpus"
    truth = workspace.root / "demo" / "corpus-truth"
    built = workspace.root / "demo" / "corpus-users.txt"  # written last: the corpus is complete
    if not built.exists():
        built.write_text("\n".join(build_corpus(corpus, users=DEMO_USERS, photos_per_user=DEMO_PHOTOS, truth=truth)))
    nsids = built.read_text().split()
    users_file = workspace.root / "demo" / "users.txt"
    users_file.write_text("\n".join([nsids[0], "sample-user-01", "https://www.flickr.com/photos/sample02/",
                                     "999999@N01", *nsids[3:]]) + "\n")
    with ReplayServer(corpus, api_key=DEMO_KEY, faults=DEMO_FAULTS, seed=7) as server, \
            progress(total=DEMO_USERS * DEMO_PER_USER, desc="crawl", unit="photo") as bar:
        summary = crawl(workspace, Source(users_file=users_file),
                        CrawlOptions(num_users=DEMO_USERS, per_user=DEMO_PER_USER, valid_refs=DEMO_VALID_REFS),
                        Network(DEMO_KEY, DEMO_SECRET, server.rest_url, retry_base=0.05, timeout=5.0),
                        on_photo=lambda record: bar.update())
    say(summary.line())
    write_ground_truth(workspace, truth)

    originals = workspace.root / "demo" / "originals"
    prepare_originals(originals)
    sources, _ = find_sources(originals)
    rules = builtin_rules()
    with progress(total=len(sources) * len(rules), desc="rules", unit="image") as bar, \
            dask_client(None, workers) as client:
        rules_summary = run_rules(workspace, sources, rules, client=client, on_done=lambda record: bar.update())
    say(rules_summary.line())

    from degrader.dsn import DSNConfig
    from degrader.train import TrainConfig

    from ..degrade import run_degrade
    from ..train_degrader import run_train_degrader

    config = TrainConfig(model=DSNConfig.tiny(), steps=DEMO_STEPS, batch_size=4, crop_size=DEMO_CROP,
                         val_every=DEMO_STEPS, checkpoint_every=50, lr_milestones=(DEMO_STEPS // 2,))
    with progress(total=DEMO_STEPS, desc="train-degrader", unit="step") as bar:
        say(run_train_degrader(workspace, config, on_log=lambda step, metrics: bar.update(step - bar.n)).line())
    with progress(desc="degrade", unit="photo") as bar:
        say(run_degrade(workspace, workspace.degrader_checkpoint(), client_factory=lambda: dask_client(None, workers),
                        on_done=bar.update).line())
    photos = flickr_photos(workspace)
    truth = ground_truth_psnr(workspace, photos).as_dict()
    say(f"degrade: pseudo originals {truth['pseudo_psnr']} dB from the true originals, retouched photos "
        f"{truth['retouched_psnr']} dB ({truth['count']} photos)")
    say(look_headroom(workspace, photos, corpus).line())

    from ..shard.plan import workspace_plan
    from ..shard.write import run_shard

    plans, skipped = workspace_plan(workspace, maxcount=DEMO_SHARD_SAMPLES)
    with progress(total=sum(len(plan.pairs) for plan in plans), desc="shard", unit="sample") as bar:
        shard_summary = run_shard(workspace, plans, skipped, str(workspace.shards_dir()),
                                  client_factory=lambda: dask_client(None, workers),
                                  on_done=lambda state: bar.update(state["samples"] + len(state["skipped"])))
    say(shard_summary.line())
    say(train_demo_model(workspace))
    say(evaluate_demo_model(workspace))
    say(enhance_demo_photos(workspace))

    with progress(desc="audit shards", unit="shard") as bar:
        audit_report = audit_workspace(workspace, valid_refs=DEMO_VALID_REFS, shards=workspace.shards_dir(),
                                       on_shard=lambda name: bar.update())
    say(audit_report.line())
    result.ok = audit_report.ok and rules_summary.done["failed"] == 0 and not shard_summary.skipped
    result.report = write_report(workspace, sheet_users=DEMO_USERS)
    say(f"demo: report written to {result.report}")
    return result


def train_demo_model(workspace: Workspace) -> str:
    """Brief training of the small networks at 64 px (one epoch of step 1, a few of step 2); the summary line."""
    import dataclasses

    from model.networks import MSMConfig
    from model.train import TrainConfig, train

    from ..train import read_data

    model = dataclasses.replace(MSMConfig.small(), image_size=64, embed_size=32)
    config = TrainConfig(model=model, step1_epochs=1, step2_epochs=DEMO_STEP2_EPOCHS, step1_batch_size=8,
                         step2_batch_size=4, learning_rate=DEMO_LEARNING_RATE, num_preferred=5, valid_preferred=10, valid_pairs_per_user=5,
                         shuffle_buffer=64, num_workers=1, save_every=25, mixed_precision=False)
    with progress(desc="train", unit="step") as bar:
        def on_log(part: str, metrics: dict) -> None:
            if metrics.get("batch") is not None:  # an optimiser step, not an epoch's summary
                bar.set_description(f"train {part}", refresh=False)
                bar.update()

        summary = train(config, read_data(str(workspace.shards_dir())), workspace.root / "msm", device="cpu",
                        on_log=on_log)
    best = ", ".join(f"{part} valid PSNR {value:.2f} dB" if value == value else f"{part} not validated"
                     for part, value in summary.best_psnr.items())
    return (f"train: small networks at 64 px, {config.step1_epochs} + {config.step2_epochs} epochs ({best}) -> "
            f"{summary.model_path}")


def evaluate_demo_model(workspace: Workspace) -> str:
    """The demo model scored on the valid users of the shards; the summary line.

    The valid users' pseudo originals are the inputs and their retouched
    photos the targets, as in :mod:`model.evaluation`; ``ROOT/evaluation.html``
    shows the table and example triplets.
    """
    from model.evaluation import Settings

    from ..evaluate import run, write_reports

    settings = Settings(num_preferred=(DEMO_PREFERRED,), draws=DEMO_DRAWS, size=DEMO_EVAL_SIZE, examples=3)
    outcome = run(workspace.root / "msm" / "model.pt", settings, shards=[str(workspace.shards_dir())],
                  progress=lambda total: progress(total=total, desc="evaluate", unit="user"),
                  default_out=workspace.root / "evaluation")
    write_reports(outcome, workspace.root / "evaluation.json", workspace.root / "evaluation.html")
    scores = outcome.summary["table"].get(str(DEMO_PREFERRED), {})
    psnrs = ", ".join(f"{method} {metrics['psnr']['mean']:.2f}" for method, metrics in scores.items())
    return (f"evaluate: {len(outcome.users)} valid users, N = {DEMO_PREFERRED}, {DEMO_DRAWS} draws, PSNR (dB) at "
            f"{DEMO_EVAL_SIZE} px: {psnrs or 'no user had enough pairs'} -> {workspace.root / 'evaluation.html'}")


def enhance_demo_photos(workspace: Workspace) -> str:
    """The unseen photos of the first valid user enhanced from its reference pairs; the summary line."""
    from model.personalize import Personalizer

    from ..enhance import PairReader, run_enhance

    for nsid in workspace.crawled_users():
        latest = latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").values()
        usable = [r for r in latest if r["status"] == "ok" and r.get("degraded")]
        references = [r for r in usable if r.get("split") == "valid_ref"]
        unseen = [r for r in usable if r.get("split") == "valid"]
        if references and unseen:
            break
    else:
        return "enhance: no valid user with reference and unseen photos"

    def files(record: dict) -> tuple[Path, Path]:
        return (workspace.resolve_relative(record["degraded"]["file"]), workspace.resolve_relative(record["file"]))

    personalizer = Personalizer.from_checkpoint(workspace.root / "msm" / "model.pt")
    personalizer.fit(PairReader([files(record) for record in references]))
    out = workspace.root / "demo" / "enhanced" / nsid
    with progress(total=len(unseen), desc="enhance", unit="photo") as bar:
        return run_enhance(personalizer, [files(record)[0] for record in unseen], out, on_done=bar.update).line()
