"""The report page: one self-contained HTML file built from the workspace status and a few thumbnails.

Sections: totals and one row per stage, charts (photos per user, image sizes,
licences, the degrader's and the MSM trainer's loss curves), the evaluation
table, pseudo originals and retouched photos against ground truth, one row
per user, contact sheets of (pseudo original | retouched) pairs and, per rule,
an original beside its output. Every number comes from :func:`pipeline.stages.status.workspace_status`
and the files it reads; images are JPEG thumbnails in ``data:`` URIs, charts
inline SVG, and the page runs no script and loads nothing from outside.
"""

from __future__ import annotations

import html
from pathlib import Path

from manifests.workspace import Workspace

from . import plots
from .images import THUMB_SIDE, GroundTruth, thumbnail_uri

esc = html.escape

STYLE = f"""
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1em 2em; max-width: 1200px;
       box-sizing: border-box; color: #222; }}
h1, h2, h3 {{ font-weight: 600; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 2em; }}
.scroll {{ max-width: 100%; overflow-x: auto; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; vertical-align: top; }}
td:first-child, th:first-child, td.text {{ text-align: left; }}
td.text {{ max-width: 28em; overflow-wrap: anywhere; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.charts > * {{ flex: 1 1 480px; min-width: 0; max-width: 640px; }}
.sheet {{ display: flex; flex-wrap: wrap; gap: 12px; margin: .5em 0 1.5em; }}
.pair {{ flex: none; display: flex; gap: 2px; width: {2 * THUMB_SIDE + 2}px; flex-direction: column; }}
.pair .images {{ display: flex; gap: 2px; height: {THUMB_SIDE}px; }}
.pair img {{ width: {THUMB_SIDE}px; height: {THUMB_SIDE}px; object-fit: contain; background: #f3f3f3; }}
.pair .caption {{ font-size: 11px; color: #555; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.muted {{ color: #666; }}
"""


def _table(table_id: str, header: list[str], rows: list[list], text_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{esc(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if index in text_columns else ''}>{esc(_cell(cell))}</td>"
                                    for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _mix(counts: dict) -> str:
    return ", ".join(f"{key or '-'}: {value}" for key, value in counts.items()) or "-"


def totals_section(status: dict) -> str:
    """The headline numbers and one summary row per stage."""
    crawl, rules, degrade, shards, train = (status[key] for key in ("crawl", "rules", "degrade", "shards", "train"))
    users = crawl["users_by_state"]
    totals = _table("totals", ["what", "count"], [
        ["users", crawl["users"]], ["users complete", users["complete"]], ["users short", users["short"]],
        ["users missing", users["missing"]], ["users pending", users["pending"]],
        ["photos kept", crawl["photos"]["ok"]], ["photos failed", crawl["photos"]["failed"]],
        ["photos rejected", crawl["photos"]["rejected"]], ["pseudo originals", degrade["degraded"]],
        ["rule outputs", rules["outputs_ok"]],
        ["shard pairs", shards.get("totals", {}).get("samples", 0) if shards["present"] else 0],
    ])
    shard_text = (f"{shards['totals'].get('shards', 0)} shards, {shards['totals'].get('samples', 0)} pairs, "
                  f"{shards['totals'].get('users', 0)} users, {shards['skipped']} skipped" if shards["present"]
                  else "no index.json")
    model = (degrade["model"] or "")[:12] or ("unreadable" if degrade["checkpoint"] else "no checkpoint")
    stages = _table("stages", ["stage", "done", "left"], [
        ["crawl", f"{crawl['photos']['ok']} photos of {users['complete']} complete users",
         f"{users['short']} short, {users['missing']} missing, {users['pending']} pending users"],
        ["rules", f"{rules['prepared']['ok']} originals, {rules['outputs_ok']} outputs of {len(rules['rules'])} rules",
         f"{rules['outputs_failed']} failed, {sum(rule['left'] for rule in rules['rules'].values())} left"],
        ["train-degrader", f"{degrade['training']['steps']} steps, checkpoint {model}", "-"],
        ["degrade", f"{degrade['degraded']} of {degrade['kept']}", f"{degrade['stale']} stale, {degrade['left']} left"],
        ["shard", shard_text, "-"],
        *[[f"train {name}", f"epoch {step['epochs']}, step {step['global_step']}, best PSNR "
                            f"{_cell(step['best_psnr'])} dB", "-"] for name, step in train["steps"].items()],
        ["evaluate", f"{len(status['evaluation']['runs'])} runs", "-"],
    ], text_columns=(1, 2))
    return f"<h2>Totals</h2>{totals}<h2>Stages</h2>{stages}"


def charts_section(status: dict, photos: dict, degrader_log: list[dict], msm_rows: list[dict]) -> str:
    """Photos per user, image sizes, licences, and both trainers' loss curves."""
    detail = status["crawl"]["per_user_detail"]
    kept = [user["ok"] for user in detail.values()]
    if len(kept) <= 60:
        per_user = plots.bar_chart("Kept photos per user", list(detail), kept, x_label="user", y_label="photos")
    else:
        per_user = plots.histogram("Kept photos per user", kept, x_label="photos", y_label="users")
    sides = [max(record.get("width") or 0, record.get("height") or 0) for records in photos.values()
             for record in records.values() if record.get("status") == "ok"]
    sizes = plots.histogram("Kept photos by longest side", sides, bins=12, x_label="pixels", y_label="photos")
    licences = status["crawl"]["licenses"]
    licence_chart = plots.bar_chart("Licences of kept photos",
                                    [value["name"] or key for key, value in licences.items()],
                                    [value["photos"] for value in licences.values()], y_label="photos")
    degrader = plots.line_chart("Degrader training loss", {"loss": [(row["step"], row["loss"]) for row in degrader_log
                                                                    if isinstance(row.get("loss"), (int, float))]},
                                x_label="step", y_label="loss")
    msm_loss, msm_psnr = {}, {}
    for row in msm_rows:
        step, x = row.get("step"), row.get("global_step")
        if isinstance(x, float) and isinstance(row.get("loss"), float):
            msm_loss.setdefault(str(step), []).append((x, row["loss"]))
        if isinstance(x, float) and isinstance(row.get("valid_psnr"), float):
            msm_psnr.setdefault(str(step), []).append((x, row["valid_psnr"]))
    msm = plots.line_chart("MSM training loss (epoch means)", msm_loss, x_label="optimiser step", y_label="loss")
    psnr = plots.line_chart("MSM validation PSNR", msm_psnr, x_label="optimiser step", y_label="dB")
    return (f'<h2>Charts</h2><div class="charts">{per_user}{sizes}{licence_chart}{degrader}{msm}{psnr}</div>')


def evaluation_section(status: dict) -> str:
    """One table row per evaluation run, N and method: users and mean PSNR."""
    rows = [[run["key"], n, method, run["users"], value] for run in status["evaluation"]["runs"]
            for n, methods in run["psnr"].items() for method, value in methods.items()]
    if not rows:
        return '<h2>Evaluation</h2><p class="muted">No evaluation run under ROOT/evaluation.</p>'
    return ("<h2>Evaluation</h2>"
            + _table("evaluation", ["run", "N", "method", "users", "PSNR (dB)"], rows))


def ground_truth_section(truth: GroundTruth) -> str:
    """Mean PSNR of pseudo originals and of retouched photos against the true originals."""
    if not truth.count:
        return ""
    figures = truth.as_dict()
    verdict = ("closer to the true originals than the retouched photos: degrading worked"
               if figures["pseudo_psnr"] > figures["retouched_psnr"] else
               "not closer to the true originals than the retouched photos: degrading did not help")
    return ("<h2>Against ground truth</h2>"
            + _table("ground-truth", ["images", "photos", "mean PSNR (dB)"], [
                ["pseudo originals vs true originals", figures["count"], figures["pseudo_psnr"]],
                ["retouched vs true originals", figures["count"], figures["retouched_psnr"]]])
            + f"<p>Pseudo originals are {verdict}.</p>")


def users_section(status: dict) -> str:
    """One row per user: state, counts by status, reasons, licences and splits of the kept photos."""
    crawl = status["crawl"]
    rows = [[nsid, user["state"], user["ok"], user["failed"], user["rejected"], _mix(user["reasons"]),
             _mix(user["licenses"]), _mix(user["splits"])] for nsid, user in crawl["per_user_detail"].items()]
    short = ", ".join(crawl["short_users"]) or "none"
    missing = ", ".join(crawl["missing_users"]) or "none"
    return (f"<h2>Users</h2><p>Target {crawl['per_user']} photos per user. Short: {esc(short)}. "
            f"Missing: {esc(missing)}.</p>"
            + _table("users", ["user", "state", "ok", "failed", "rejected", "reasons", "licences", "splits"], rows,
                     text_columns=(5, 6, 7))
            + "<h3>Licences</h3>"
            + _table("licences", ["id", "licence", "photos"],
                     [[key, value["name"], value["photos"]] for key, value in crawl["licenses"].items()])
            + "<h3>Splits</h3>"
            + _table("splits", ["split", "photos"], [list(item) for item in crawl["splits"].items()]))


def _pair(left: str | None, right: str | None, caption: str, labels: tuple[str, str]) -> str:
    images = "".join(f'<img src="{uri}" alt="{esc(label)}" title="{esc(label)}">' for uri, label in
                     zip((left, right), labels) if uri)
    return (f'<div class="pair"><div class="images">{images}</div>'
            f'<div class="caption" title="{esc(caption)}">{esc(caption)}</div></div>')


def sheets_section(workspace: Workspace, photos: dict, users: int, pairs: int) -> str:
    """Contact sheets: per user (first ``users`` users), up to ``pairs`` (pseudo original | retouched) pairs."""
    parts = []
    for nsid in sorted(photos)[:users]:
        records = [photos[nsid][key] for key in sorted(photos[nsid], key=int)]
        chosen = [record for record in records if record.get("status") == "ok"
                  and (record.get("degraded") or {}).get("file")][:pairs]
        if not chosen:
            continue
        cells = []
        for record in chosen:
            pseudo = thumbnail_uri(workspace.resolve_relative(record["degraded"]["file"]))
            retouched = thumbnail_uri(workspace.resolve_relative(record["file"]))
            if pseudo and retouched:
                cells.append(_pair(pseudo, retouched, f"{record['photo_id']} {record.get('split', '')}",
                                   ("pseudo original", "retouched")))
        parts.append(f"<h3>{esc(nsid)}</h3><div class=\"sheet\">{''.join(cells)}</div>")
    if not parts:
        return ""
    return ("<h2>Pairs</h2><p class=\"muted\">Each pair: pseudo original (left) | retouched photo (right).</p>"
            + "".join(parts))


def rules_section(workspace: Workspace, status: dict, rule_examples: dict[str, dict]) -> str:
    """Per rule: counts, and one prepared original beside the rule's output."""
    rules = status["rules"]["rules"]
    if not rules:
        return ""
    table = _table("rules", ["rule", "ok", "failed", "left"],
                   [[name, rule["ok"], rule["failed"], rule["left"]] for name, rule in rules.items()])
    cells = []
    for name, record in rule_examples.items():
        original = thumbnail_uri(workspace.resolve_relative(record["input_file"])) if record.get("input_file") else None
        output = thumbnail_uri(workspace.resolve_relative(record["file"]))
        if original and output:
            cells.append(_pair(original, output, f"{name}: {record['name']}", ("original", name)))
    return (f"<h2>Rules</h2>{table}<p class=\"muted\">Each pair: prepared original (left) | rule output (right).</p>"
            f"<div class=\"sheet\">{''.join(cells)}</div>")


def render(title: str, sections: list[str]) -> str:
    """The whole page."""
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{''.join(sections)}</body></html>\n")


def report_title(workspace: Workspace) -> str:
    return f"pie report: {Path(workspace.root).name}"
