"""``pie status``: figures of every stage read from a workspace, as text and JSON, through the installed script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import shard_fixtures
import status_fixtures
from manifests.workspace import Workspace
from pipeline.stages.status import (PhotoFields, format_status, latest_fields, read_fields, read_loss_log,
                                     read_records, summarise_photos, workspace_status)
from pipeline.stages.train_degrader import LossLog, loss_log_path

PIE = str(Path(sys.executable).with_name("pie"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return status_fixtures.build(tmp_path_factory.mktemp("status") / "ws")


def _pie(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PIE, "--root", str(root), *args], capture_output=True, text=True, timeout=120)


def test_crawl_users_are_complete_short_missing_or_pending_against_the_target(workspace):
    crawl = workspace_status(workspace, per_user=status_fixtures.PER_USER, detail=True)["crawl"]
    assert crawl["users_by_state"] == {"complete": 4, "short": 1, "missing": 1, "pending": 1}
    assert crawl["short_users"] == [status_fixtures.SHORT_USER]
    assert crawl["missing_users"] == [status_fixtures.MISSING_USER]
    assert crawl["photos"] == {"ok": 4 * 5 + 2, "failed": 1, "rejected": 1}
    assert crawl["reasons"] == {"HTTP 503": 1, "too small (100x80)": 1}
    assert crawl["licenses"] == {"4": {"name": "CC BY 2.0", "photos": 17},
                                 "9": {"name": "Public Domain Dedication (CC0)", "photos": 5}}
    assert crawl["splits"] == {"train": 17, "valid": 3, "valid_ref": 2}
    short = crawl["per_user_detail"][status_fixtures.SHORT_USER]
    assert (short["ok"], short["failed"], short["rejected"], short["crawl_record"]) == (2, 1, 1, "short")
    # A higher target turns every user with photos short.
    assert workspace_status(workspace, per_user=6)["crawl"]["users_by_state"]["complete"] == 0


def test_rules_count_ok_failed_and_left_per_rule_against_prepared_originals(workspace):
    rules = workspace_status(workspace, per_user=5)["rules"]
    assert rules["prepared"] == {"ok": 3, "failed": 1}
    assert rules["rules"] == {"cold-tone": {"ok": 2, "failed": 1, "left": 1},
                              "punch": {"ok": 3, "failed": 0, "left": 0}}


def test_degraded_photos_by_model_and_stale_against_the_current_checkpoint(workspace):
    from degrader.train import load_degrader

    degrade = workspace_status(workspace, per_user=5)["degrade"]
    _, digest = load_degrader(workspace.degrader_checkpoint())
    assert degrade["model"] == digest
    assert degrade["kept"] == 22 and degrade["degraded"] == 20
    assert degrade["models"] == {shard_fixtures.MODEL: status_fixtures.STALE, digest: 5}
    assert degrade["stale"] == status_fixtures.STALE
    assert degrade["left"] == 22 - 20 + status_fixtures.STALE
    assert degrade["training"]["steps"] == 4 and degrade["training"]["logged"] == 4
    cache = json.loads((workspace.root / "state" / "degrader-digest.json").read_text())
    assert cache["digest"] == digest


def test_shards_training_and_evaluation(workspace):
    status = workspace_status(workspace, per_user=5)
    assert status["shards"]["present"] and status["shards"]["totals"]["samples"] == 21
    assert status["shards"]["splits"]["valid"]["shards"] == 1 and status["shards"]["skipped"] == 1
    steps = status["train"]["steps"]
    assert steps["step1"]["best_psnr"] == max(status_fixtures.MSM_PSNR["step1"])
    assert (steps["step1"]["epochs"], steps["step1"]["global_step"], steps["step1"]["checkpoint"]) == (2, 20, True)
    assert steps["step2"]["best_psnr"] == 23.25 and not steps["step2"]["checkpoint"]
    [run] = status["evaluation"]["runs"]
    assert run["users"] == 2
    assert run["psnr"]["2"] == {"msm": pytest.approx((26.0 + 23.0) / 2), "identity": pytest.approx((20.0 + 20.0) / 2)}


def test_text_names_every_stage(workspace):
    text = format_status(workspace_status(workspace, per_user=5))
    for line_start in ("crawl", "rules", "degrade", "shards", "train", "evaluate"):
        assert any(line.startswith(line_start) for line in text.splitlines()), line_start
    assert "4 complete, 1 short, 1 missing, 1 pending" in text
    assert "15 stale" in text
    assert f"short: {status_fixtures.SHORT_USER}" in text and f"missing: {status_fixtures.MISSING_USER}" in text


def test_read_records_tolerates_a_torn_tail_and_matches_a_line_by_line_read(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"photo_id": "1", "status": "ok"}\n{"photo_id": "1", "status": "failed"}\n{"photo_id": "2", "st')
    assert read_records(path) == [{"photo_id": "1", "status": "ok"}, {"photo_id": "1", "status": "failed"}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert read_records(tmp_path / "absent.jsonl") == []


def test_loss_log_thins_steps_keeps_validations_and_the_last_line_of_a_repeated_step(tmp_path):
    path = loss_log_path(tmp_path / "dsn.pt")
    assert path.name == "dsn.metrics.jsonl"
    log = LossLog(path, steps=2000)  # every 4th step
    for step in range(1, 13):
        log(step, {"loss": float(step), "lr": 1e-4, **({"val_psnr_degrade": 30.0} if step == 6 else {})})
    log(8, {"loss": -1.0, "lr": float("nan")})  # a resumed run repeats step 8
    rows = read_loss_log(path)
    assert [row["step"] for row in rows] == [4, 6, 8, 12]
    assert rows[1]["val_psnr_degrade"] == 30.0
    assert rows[2] == {"step": 8, "loss": -1.0, "lr": None}


def test_pie_status_through_the_installed_script(workspace, tmp_path):
    text = _pie(workspace.root, "status", "--per-user", "5")
    assert text.returncode == 0, text.stderr
    assert "4 complete, 1 short" in text.stdout
    document = _pie(workspace.root, "status", "--json", "--per-user", "5")
    assert document.returncode == 0, document.stderr
    assert json.loads(document.stdout) == json.loads(json.dumps(workspace_status(workspace, per_user=5)))
    missing = _pie(tmp_path / "nowhere", "status")
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1 and "nowhere" in missing.stderr
    assert _pie(workspace.root, "status", "--no-such-flag").returncode == 2


def test_the_target_comes_from_the_crawl_table_of_pie_toml(workspace, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(workspace.root, root)
    (root / "pie.toml").write_text("[crawl]\nper-user = 5\n")
    result = _pie(root, "status", "--json", "--users")
    assert result.returncode == 0, result.stderr
    crawl = json.loads(result.stdout)["crawl"]
    assert crawl["per_user"] == 5 and crawl["users_by_state"]["complete"] == 4
    assert set(crawl["per_user_detail"]) >= set(status_fixtures.COMPLETE_USERS)


def test_summaries_are_cached_and_recomputed_when_a_manifest_grows(workspace, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(workspace.root, root)
    copy = Workspace(root)
    first = workspace_status(copy, per_user=5)
    cache = json.loads((root / "state" / "status-cache.json").read_text())
    assert f"flickr/{status_fixtures.SHORT_USER}" in cache["entries"] and "rules/punch" in cache["entries"]
    assert workspace_status(copy, per_user=5) == first
    store = copy.flickr_manifest(status_fixtures.SHORT_USER)
    failed = next(record for record in store.read().records if record["status"] == "failed")
    store.append([{**failed, "status": "rejected", "reason": "duplicate of 48600001@N01/5000"}])
    copy.rules_manifest("punch").append([{**copy.rules_manifest("punch").read().records[0], "status": "failed",
                                          "reason": "boom", "file": None}])
    again = workspace_status(copy, per_user=5)
    assert again["crawl"]["photos"] == {"ok": 22, "failed": 0, "rejected": 2}
    assert again["rules"]["rules"]["punch"] == {"ok": 2, "failed": 1, "left": 1}


def test_fields_reader_reads_what_the_json_reader_does_and_tolerates_a_torn_line(workspace, tmp_path):
    for path in sorted(workspace.flickr_manifest_dir().glob("*.jsonl")):
        expected = [msgspec.convert(record, PhotoFields, strict=False) for record in read_records(path)]
        assert read_fields(path, PhotoFields) == expected and expected, path.name
    # A torn last line (a crash mid-append) makes msgspec refuse the file; the tolerant reader takes over.
    path = next(workspace.flickr_manifest_dir().glob("*.jsonl"))
    torn = tmp_path / path.name
    torn.write_bytes(path.read_bytes() + b'{"photo_id": "1", "sta')
    assert read_fields(torn, PhotoFields) == read_fields(path, PhotoFields)
    # A record whose licence id is a number still counts; one that is not an object is left out.
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"photo_id": "7", "status": "ok", "license": {"id": 4}}\n[1, 2]\n')
    assert summarise_photos(latest_fields(read_fields(odd, PhotoFields), "photo_id"))["licenses"] == {"4": 1}


def test_a_users_target_is_the_per_user_its_crawl_recorded(tmp_path):
    workspace = Workspace(tmp_path)
    nsid = "123456@N01"
    workspace.flickr_manifest(nsid).append([
        {"user": nsid, "photo_id": str(photo_id), "status": "ok", "split": "train", "sha256": "0" * 64,
         "license": {"id": "4", "name": "CC BY 2.0"}} for photo_id in range(3)])
    workspace.flickr_users_manifest().append([{"user": nsid, "status": "complete", "photos_ok": 3, "per_user": 3}])
    crawl = workspace_status(workspace, per_user=100, detail=True)["crawl"]
    assert crawl["users_by_state"]["complete"] == 1 and crawl["per_user"] == 3 and crawl["photos_wanted"] == 3
