"""``pie train-degrader`` and ``pie degrade`` on a small workspace (tiny DSN, CPU, local Dask)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage import data

from manifests.audit import audit
from manifests.jsonl import latest_by
from manifests.licenses import lookup
from manifests.records import PHOTO_SCHEMA
from manifests.workspace import Workspace
from pipeline.cli import cli
from pipeline.stages.degrade import rule_pairs
from pipeline.imageio import encode_jpeg, encode_png, read_image
from pipeline.stages.rules import SourceImage, prepare_original, run_pair
from rules.registry import builtin_rules

NSID = "48600000@N01"
TRAIN = ["train-degrader", "--model", "tiny", "--crop-size", "32", "--batch-size", "2", "--val-every", "3",
         "--checkpoint-every", "3", "--device", "cpu"]


@pytest.fixture()
def workspace(tmp_path) -> Workspace:
    """Prepared originals and rule outputs of two presets on four images, and a crawl of one user with three photos."""
    workspace = Workspace(tmp_path / "ws")
    originals = tmp_path / "originals"
    originals.mkdir()
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for index, photo in enumerate(photos):
        (originals / f"img{index}.png").write_bytes(encode_png(photo[::6, ::6]))
    rules = builtin_rules()
    for index in range(len(photos)):
        prepared = prepare_original(str(workspace.root), SourceImage(f"img{index}", originals / f"img{index}.png"),
                                    None)
        workspace.prepared_manifest().append([prepared])
        for name in ("punch", "cold-tone"):
            workspace.rules_manifest(name).append([run_pair(str(workspace.root), prepared, rules[name])])
    records = []
    for index, photo in enumerate(photos[:3]):
        photo_id = str(1000 + index)
        path = workspace.flickr_photo(NSID, photo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        small = photo[::4, ::4]
        payload = encode_jpeg(small)
        path.write_bytes(payload)
        records.append({
            "schema": PHOTO_SCHEMA, "user": NSID, "photo_id": photo_id, "secret": "ab", "server": "1", "size": "z",
            "url": "https://live.staticflickr.com/1/x_ab_z.jpg", "page_url": "https://www.flickr.com/",
            "license": lookup("4").as_record(), "owner_name": "", "title": "", "date_taken": None,
            "file": workspace.relative(path), "width": small.shape[1], "height": small.shape[0],
            "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "status": "ok", "reason": None,
            "attempts": 1, "fetched_at": "2026-01-01T00:00:00+00:00", "split": "train"})
    workspace.flickr_manifest(NSID).append(records)
    return workspace


def test_pairs_hold_out_whole_originals(workspace):
    train, valid, problems = rule_pairs(workspace, valid_fraction=0.3)
    assert not problems and len(train) + len(valid) == 8 and len(valid) >= 2
    assert not {pair.name for pair in train.pairs} & {pair.name for pair in valid.pairs}
    enhanced, original = train.load(0)
    assert enhanced.shape == original.shape and enhanced.dtype == np.uint8
    pair = train.pairs[0]
    assert pair.original == workspace.prepared_original(pair.name)
    assert np.array_equal(original, read_image(pair.original).pixels)


def test_pairs_leave_out_outputs_without_their_prepared_original(workspace):
    store = workspace.rules_manifest("punch")
    record = latest_by(store.read().records, "name")["img0"]
    store.append([{key: value for key, value in record.items() if not key.startswith("input_")}])
    prepared = workspace.prepared_manifest()
    replaced = latest_by(prepared.read().records, "name")["img1"]
    prepared.append([{**replaced, "sha256": "0" * 64}])
    train, valid, problems = rule_pairs(workspace)
    assert len(train) + len(valid) == 5
    assert problems == ["cold-tone.jsonl: 1 outputs without their current prepared original in fivek/ left out; "
                        "rerun `pie rules`",
                        "punch.jsonl: 2 outputs without their current prepared original in fivek/ left out; "
                        "rerun `pie rules`"]
    audited = audit(workspace).problems
    assert sum("rerun pie rules" in problem for problem in audited) == 3
    assert "fivek.jsonl img1: fivek/img1.png does not match its sha256" in audited


def test_train_resume_degrade_and_redo_with_another_model(workspace):
    runner = CliRunner()
    root = ["--root", str(workspace.root)]
    first = runner.invoke(cli, root + TRAIN + ["--steps", "3"])
    assert first.exit_code == 0, first.output
    assert "train-degrader: 3 steps" in first.output and "validation PSNR" in first.output
    checkpoint = workspace.degrader_checkpoint()
    assert checkpoint.exists()

    degraded = runner.invoke(cli, root + ["degrade", "--device", "cpu", "--workers", "1", "--batch-size", "2"])
    assert degraded.exit_code == 0, degraded.output
    assert "3 pseudo originals written" in degraded.output
    latest = latest_by(workspace.flickr_manifest(NSID).read().records, "photo_id")
    digests = {record["degraded"]["model"] for record in latest.values()}
    assert len(digests) == 1
    for record in latest.values():
        output = read_image(workspace.resolve_relative(record["degraded"]["file"]))
        assert (output.width, output.height) == (record["width"], record["height"])
        assert record["degraded"]["source_sha256"] == record["sha256"]

    report = audit(workspace)
    assert report.ok, report.problems
    assert report.sections["flickr"]["degraded"] == 3 and report.sections["rules"] == {"ok": 8}
    assert report.sections["fivek"] == {"ok": 4}
    pseudo = workspace.resolve_relative(latest["1000"]["degraded"]["file"])
    pseudo.write_bytes(pseudo.read_bytes()[:-10] + b"0123456789")
    assert any("(degraded)" in p and "sha256" in p for p in audit(workspace).problems)

    again = runner.invoke(cli, root + ["degrade", "--device", "cpu", "--workers", "1"])
    assert "1 pseudo originals written" in again.output and "2 already done" in again.output  # the tampered one

    resumed = runner.invoke(cli, root + TRAIN + ["--steps", "6"])  # continues from step 3
    assert resumed.exit_code == 0, resumed.output
    redo = runner.invoke(cli, root + ["degrade", "--device", "cpu", "--workers", "1"])
    assert "3 pseudo originals written" in redo.output
    latest = latest_by(workspace.flickr_manifest(NSID).read().records, "photo_id")
    assert {record["degraded"]["model"] for record in latest.values()}.isdisjoint(digests)
    # nothing left to do: no cluster is started or reached (this scheduler address does not answer)
    idle = runner.invoke(cli, root + ["degrade", "--device", "cpu", "--scheduler", "tcp://127.0.0.1:9"])
    assert idle.exit_code == 0 and "0 pseudo originals written" in idle.output and "3 already done" in idle.output


def test_bad_checkpoint_and_bad_photo_are_one_line_errors(workspace):
    runner = CliRunner()
    root = ["--root", str(workspace.root)]
    checkpoint = workspace.degrader_checkpoint()
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    result = runner.invoke(cli, root + ["degrade", "--device", "cpu", "--workers", "1"])
    assert result.exit_code == 1 and "dsn.pt" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(cli, root + TRAIN + ["--steps", "3"])
    assert result.exit_code == 1 and "dsn.pt" in result.output and "Traceback" not in result.output

    checkpoint.unlink()
    assert runner.invoke(cli, root + TRAIN + ["--steps", "3"]).exit_code == 0
    other = [argument if argument != "tiny" else "small" for argument in TRAIN]
    mismatch = subprocess.run([str(Path(sys.executable).with_name("pie")), *root, *other, "--steps", "3"],
                              capture_output=True, text=True, timeout=300)
    assert mismatch.returncode == 1 and len(mismatch.stderr.strip().splitlines()) == 1, mismatch.stderr
    assert "model.coupling_blocks: 2 in the checkpoint, 4 now" in mismatch.stderr
    assert "resume it with the settings it was trained with (--model tiny ...), or train another with --out FILE" \
        in mismatch.stderr
    workspace.flickr_photo(NSID, "1001").write_bytes(b"\xff\xd8\xff garbage")
    result = runner.invoke(cli, root + ["degrade", "--device", "cpu", "--workers", "1"])
    assert result.exit_code == 0 and "2 pseudo originals written" in result.output and "1 failed" in result.output


def test_non_finite_weights_are_refused_and_non_finite_outputs_never_become_pixels(workspace):
    from degrader.infer import NonFiniteOutput, to_uint8

    root = ["--root", str(workspace.root)]
    assert CliRunner().invoke(cli, root + TRAIN + ["--steps", "1"]).exit_code == 0
    state = torch.load(workspace.degrader_checkpoint(), weights_only=True)
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name].view(-1)[0] = float("nan")
    poisoned = workspace.root / "poisoned.pt"
    torch.save(state, poisoned)
    result = subprocess.run([str(Path(sys.executable).with_name("pie")), *root, "degrade", "--checkpoint",
                             str(poisoned), "--device", "cpu", "--workers", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"poisoned.pt: weight {name} holds NaN or infinite values" in result.stderr
    assert not list((workspace.root / "degraded").rglob("*.jpg"))
    with pytest.raises(NonFiniteOutput):
        to_uint8(np.array([[[0.5, np.inf, 0.2]]], dtype=np.float32))


def test_audit_reports_unrecorded_files_temporaries_and_appended_garbage(workspace):
    assert audit(workspace).ok, audit(workspace).problems
    (workspace.root / "rules" / "punch" / "stray.png").write_bytes(b"x")
    (workspace.root / "fivek" / ".img0.png.part-12-34").write_bytes(b"x")
    (workspace.root / "degraded" / NSID).mkdir(parents=True)
    (workspace.root / "degraded" / NSID / "1000.jpg").write_bytes(b"x")
    cold = workspace.root / "manifests" / "rules" / "cold-tone.jsonl"
    lines = cold.read_text().splitlines(keepends=True)
    cold.write_text("".join(lines[:-1]))  # a record deleted; its output stays
    removed = json.loads(lines[-1])["file"]
    with open(workspace.root / "manifests" / "rules" / "punch.jsonl", "a") as manifest:
        manifest.write("garbage")
    problems = audit(workspace).problems
    assert "rules/punch/stray.png: file on disk without an ok record" in problems
    assert "fivek/.img0.png.part-12-34: temporary file left by an interrupted run" in problems
    assert f"degraded/{NSID}/1000.jpg: file on disk without an ok record" in problems
    assert f"{removed}: file on disk without an ok record" in problems
    assert any(p.endswith("punch.jsonl:5: text after the last record is not a record (appended by something else?)")
               for p in problems), problems
    assert len(problems) == 5


def test_temporaries_of_a_killed_run_are_removed_and_os_errors_name_the_file(workspace, tmp_path):
    root = ["--root", str(workspace.root)]
    assert CliRunner().invoke(cli, root + TRAIN + ["--steps", "1"]).exit_code == 0
    partial = workspace.root / "degraded" / NSID / "1000.jpg.part-123-456"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a jpeg")
    result = CliRunner().invoke(cli, root + ["degrade", "--device", "cpu", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert not partial.exists() and audit(workspace).ok
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "state").write_text("")  # a file where the workspace needs a folder
    failed = subprocess.run([str(Path(sys.executable).with_name("pie")), "--root", str(blocked), "shard"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [f"pie: {blocked}/state/locks: Not a directory"]
