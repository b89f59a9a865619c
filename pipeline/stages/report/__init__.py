"""``pie report``: a self-contained HTML page, ``ATTRIBUTION.csv`` and ``DATASET.md`` from the workspace.

Every figure is read from the workspace (manifests, checkpoints, training
logs, evaluation runs; see :mod:`pipeline.stages.status`), never from a run's
console output, so the report of an unchanged workspace is the same each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from manifests.files import write_atomic
from manifests.jsonl import latest_by
from manifests.workspace import Workspace

from ..status import DEFAULT_PER_USER, flickr_photos, read_loss_log, read_msm_metrics, read_records, \
    workspace_status
from ..train_degrader import loss_log_path
from . import page
from .card import attribution_csv, dataset_card
from .images import ground_truth_psnr

ATTRIBUTION_NAME = "ATTRIBUTION.csv"
CARD_NAME = "DATASET.md"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report_files` wrote."""

    html: Path
    attribution: Path
    card: Path
    ground_truth: dict


def rule_examples(workspace: Workspace) -> dict[str, dict]:
    """Per rule, the latest ``ok`` output record of the first image by name."""
    folder = workspace.root / "manifests" / "rules"
    examples = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        outputs = latest_by(read_records(path), "name")
        ok = [outputs[name] for name in sorted(outputs) if outputs[name].get("status") == "ok"]
        if ok:
            examples[path.stem] = ok[0]
    return examples


def write_report_files(workspace: Workspace, out: Path, *, card_dir: Path | None = None,
                       per_user: int = DEFAULT_PER_USER, sheet_users: int = 12, sheet_pairs: int = 6) -> ReportFiles:
    """Write the HTML page to ``out`` and ``ATTRIBUTION.csv`` and ``DATASET.md`` beside it (or in ``card_dir``).

    ``sheet_users`` users get a contact sheet of up to ``sheet_pairs`` pairs
    each. Raises :class:`pipeline.stages.status.StatusError` for a missing
    workspace and ``OSError`` naming a file that cannot be written.
    """
    status = workspace_status(workspace, per_user=per_user, detail=True)
    photos = flickr_photos(workspace)
    truth = ground_truth_psnr(workspace, photos)
    sections = [
        page.totals_section(status),
        page.charts_section(status, photos, read_loss_log(loss_log_path(workspace.degrader_checkpoint())),
                            read_msm_metrics(workspace.root / "msm")),
        page.evaluation_section(status),
        page.ground_truth_section(truth),
        page.users_section(status),
        page.sheets_section(workspace, photos, sheet_users, sheet_pairs),
        page.rules_section(workspace, status, rule_examples(workspace)),
    ]
    out = Path(out)
    card_dir = Path(card_dir) if card_dir is not None else out.parent
    write_atomic(out, page.render(page.report_title(workspace), sections).encode("utf-8"))
    attribution, card = card_dir / ATTRIBUTION_NAME, card_dir / CARD_NAME
    write_atomic(attribution, attribution_csv(photos).encode("utf-8"))
    write_atomic(card, dataset_card(status).encode("utf-8"))
    return ReportFiles(out, attribution, card, truth.as_dict())


def write_report(workspace: Workspace, out: Path | None = None, **options) -> Path:
    """Write the report (default ``ROOT/report.html``) with its attribution and dataset card; return the page's path."""
    return write_report_files(workspace, out or workspace.root / "report.html", **options).html


__all__ = ["ReportFiles", "write_report", "write_report_files"]
