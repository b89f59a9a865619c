"""``pie audit --shards`` as a gate: a clean workspace passes, and each kind of tampering is named precisely.

One clean workspace (three Flickr users, two rule users, pseudo originals
from a real tiny DSN checkpoint, shards written by ``pie shard``'s library) is
built once; each test tampers with a copy and runs the installed ``pie`` in a
subprocess, checking the exit code, the kinds and files of the problems, and
that ``--json`` holds the same problems as the lines on stderr.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from degrader.dsn import DSN, DSNConfig
from degrader.train import CHECKPOINT_FORMAT
from manifests.audit import KINDS, AuditReport
from manifests.jsonl import latest_by
from manifests.licenses import lookup
from manifests.workspace import Workspace
from pipeline.imageio import decode_image, encode_png
from pipeline.stages.audit import audit_workspace, checkpoint_digest, read_shard
from pipeline.stages.shard.plan import workspace_plan
from pipeline.stages.shard.write import INDEX_NAME, run_shard

from shard_fixtures import IMAGES, RULES, USERS, build_workspace

PIE = str(Path(sys.executable).with_name("pie"))
TRAIN_A, TRAIN_B, VALID = USERS  # two train users, then the valid one
VALID_REFS = "2"  # the fixture marks two photos of its valid user valid_ref


def save_checkpoint(path: Path, seed: int) -> str:
    """A tiny DSN checkpoint in ``pie train-degrader``'s format; its weights digest."""
    torch.manual_seed(seed)
    config = DSNConfig.tiny()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": {"model": config.to_dict()},
                "model": DSN(config).state_dict()}, path)
    return checkpoint_digest(path)


def latest(workspace: Workspace, nsid: str) -> dict[str, dict]:
    return latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id")


def reshard(workspace: Workspace) -> None:
    plans, skipped = workspace_plan(workspace, maxcount=6)
    assert not skipped, skipped
    run_shard(workspace, plans, skipped, str(workspace.shards_dir()))


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    """The clean workspace: records, files, a checkpoint that made every pseudo original, and shards."""
    workspace = build_workspace(tmp_path_factory.mktemp("clean") / "ws")
    digest = save_checkpoint(workspace.degrader_checkpoint(), seed=0)
    for nsid in USERS:
        records = latest(workspace, nsid).values()
        workspace.flickr_manifest(nsid).append([{**r, "degraded": {**r["degraded"], "model": digest}}
                                                for r in records])
    prepared = []
    for name in IMAGES:
        data = (workspace.root / "fivek" / f"{name}.png").read_bytes()
        prepared.append({"schema": "pie.prepared-original/1", "name": name, "file": f"fivek/{name}.png",
                         "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "status": "ok",
                         "reason": None})
    workspace.prepared_manifest().append(prepared)
    reshard(workspace)
    return workspace.root


@pytest.fixture()
def workspace(clean_root, tmp_path) -> Workspace:
    return Workspace(shutil.copytree(clean_root, tmp_path / "ws"))


def pie_audit(workspace: Workspace, tmp_path: Path, *extra: str) -> tuple[int, list[dict]]:
    """Run the installed ``pie audit --shards``; its exit code and problems, checked equal in stderr and JSON."""
    report = tmp_path / "audit.json"
    result = subprocess.run([PIE, "--root", str(workspace.root), "audit", "--shards", "--valid-refs", VALID_REFS,
                             "--json", str(report), *extra], capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr
    written = json.loads(report.read_text())
    problems = written["problems"]
    lines = [line for line in result.stderr.splitlines() if line.split(":", 1)[0] in KINDS]
    assert lines == [f"{p['kind']}: {p['message']}" for p in problems]
    assert written["kinds"] == {kind: sum(p["kind"] == kind for p in problems) for kind in written["kinds"]}
    assert written["counts"]["problems"] == len(problems) and written["ok"] == (not problems)
    if problems:
        table = result.stderr.splitlines()[len(lines):]
        assert table[0].split() == ["kind", "problems"]
        assert {row.split()[0]: int(row.split()[1]) for row in table[1:]} == written["kinds"]
    assert result.stdout.startswith("audit: ") and result.stdout.strip().endswith(f"; {len(problems)} problems")
    return result.returncode, problems


def kinds(problems: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem["kind"]] = counts.get(problem["kind"], 0) + 1
    return counts


def rewrite_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar if info.isreg()]


def test_clean_workspace_passes_and_reads_every_shard(workspace, tmp_path):
    code, problems = pie_audit(workspace, tmp_path)
    assert (code, problems) == (0, [])
    report = audit_workspace(workspace, valid_refs=2, shards=workspace.shards_dir())
    index = json.loads((workspace.shards_dir() / INDEX_NAME).read_text())
    assert report.sections["shards"] == {"shards": len(index["shards"]), "samples": index["totals"]["samples"],
                                         "pairs": index["totals"]["samples"]}
    assert len(index["shards"]) >= 3 and index["splits"]["valid"]["samples"] == 5


def test_a_missing_root_or_a_stray_shards_dir_option_fail(tmp_path):
    missing = subprocess.run([PIE, "--root", str(tmp_path / "nowhere"), "audit", "--shards"], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "no such workspace" in missing.stderr
    usage = subprocess.run([PIE, "--root", str(tmp_path), "audit", "--shards-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "--shards-dir is only read with --shards" in usage.stderr


def test_a_flipped_byte_in_a_photo(workspace, tmp_path):
    photo = latest(workspace, TRAIN_A)["5001"]["file"]
    path = workspace.root / photo
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and [(p["kind"], p["file"]) for p in problems] == [("checksum", photo)]


def test_a_deleted_pseudo_original(workspace, tmp_path):
    pseudo = latest(workspace, VALID)["5022"]["degraded"]["file"]
    (workspace.root / pseudo).unlink()
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and [(p["kind"], p["file"]) for p in problems] == [("missing-file", pseudo)]
    assert pseudo in problems[0]["message"]


def test_a_photo_copied_to_a_second_user(workspace, tmp_path):
    record = latest(workspace, TRAIN_A)["5000"]
    copy = workspace.flickr_photo(TRAIN_B, "5000")
    shutil.copyfile(workspace.root / record["file"], copy)
    workspace.flickr_manifest(TRAIN_B).append([{**record, "user": TRAIN_B, "file": workspace.relative(copy),
                                               "degraded": None}])
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and [(p["kind"], p["file"]) for p in problems] == [("two-users", workspace.relative(copy))]
    assert TRAIN_A in problems[0]["message"]


def test_a_valid_photo_put_into_a_train_shard(workspace, tmp_path):
    shards = workspace.shards_dir()
    valid_sample = [m for m in tar_members(shards / "valid-000000.tar") if m[0].startswith(f"{VALID}/5023.")]
    assert len(valid_sample) == 3
    rewrite_tar(shards / "train-000000.tar", tar_members(shards / "train-000000.tar") + valid_sample)
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1
    assert {p["file"] for p in problems} == {"shards/train-000000.tar"}
    assert kinds(problems) == {"split-leak": 1, "shard-size": 1, "shard-index": 2}
    leak = next(p for p in problems if p["kind"] == "split-leak")
    assert f"sample {VALID}/5023" in leak["message"] and "a valid photo in a train shard" in leak["message"]


def test_a_near_duplicate_of_a_valid_photo_in_the_train_split(workspace, tmp_path):
    valid = latest(workspace, VALID)["5022"]
    pixels = decode_image((workspace.root / valid["file"]).read_bytes()).as_uint8()
    near = encode_png(np.clip(pixels.astype(np.int16) + 3, 0, 255).astype(np.uint8))  # other bytes, same look
    record = latest(workspace, TRAIN_B)["5012"]
    (workspace.root / record["file"]).write_bytes(near)
    sha = hashlib.sha256(near).hexdigest()
    workspace.flickr_manifest(TRAIN_B).append([{**record, "sha256": sha, "bytes": len(near),
                                                "degraded": {**record["degraded"], "source_sha256": sha}}])
    reshard(workspace)
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and [p["kind"] for p in problems] == ["near-duplicate"]
    assert problems[0]["file"].startswith("shards/train-")
    assert f"{TRAIN_B}/5012" in problems[0]["message"] and f"{VALID}/5022" in problems[0]["message"]


def test_targets_the_crawl_hashed_reuse_its_phash(workspace, tmp_path):
    for nsid, photo_id, phash in ((VALID, "5024", "0123456789abcdef"), (TRAIN_A, "5002", "0123456789abcdee")):
        record = latest(workspace, nsid)[photo_id]
        workspace.flickr_manifest(nsid).append([{**record, "phash": phash}])
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and [(p["kind"], p["file"]) for p in problems] == [("near-duplicate", "shards/train-000000.tar")]
    assert problems[0]["message"].endswith(f"near-duplicate: 1 bits from {VALID}/5024")


def test_truncated_shards_inside_a_member_and_at_a_member_boundary(workspace, tmp_path):
    inside, boundary = workspace.shards_dir() / "train-000001.tar", workspace.shards_dir() / "train-000002.tar"
    inside.write_bytes(inside.read_bytes()[: inside.stat().st_size // 2 + 100])
    with tarfile.open(boundary) as tar:
        last = tar.getmembers()[-1]
    boundary.write_bytes(boundary.read_bytes()[: last.offset_data + -(-last.size // 512) * 512])
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and [(p["kind"], p["file"]) for p in problems] == [
        ("truncated-shard", "shards/train-000001.tar"), ("truncated-shard", "shards/train-000002.tar")]
    assert "unexpected end of data" in problems[0]["message"] and "no end-of-archive" in problems[1]["message"]
    assert read_shard(boundary).keys == [f"rules-{rule}/{name}" for rule in RULES for name in IMAGES]


def test_a_licence_changed_to_a_disallowed_one(workspace, tmp_path):
    record = latest(workspace, TRAIN_A)["5003"]
    workspace.flickr_manifest(TRAIN_A).append([{**record, "license": lookup("0").as_record()}])
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1 and kinds(problems) == {"licence": 2}
    assert {p["file"] for p in problems} == {record["file"], "shards/train-000000.tar"}
    assert all("All Rights Reserved is not an allowed licence" in p["message"] for p in problems)
    report = audit_workspace(workspace, licenses=frozenset(["0", "4"]), valid_refs=2, shards=workspace.shards_dir())
    assert [(p.kind, p.file) for p in report.findings] == [("stale-sample", "shards/train-000000.tar")]
    assert "old licence" in report.problems[0]


def test_pseudo_originals_of_another_checkpoint(workspace, tmp_path):
    save_checkpoint(workspace.degrader_checkpoint(), seed=1)
    code, problems = pie_audit(workspace, tmp_path)
    degraded = sorted(r["degraded"]["file"] for nsid in USERS for r in latest(workspace, nsid).values())
    assert code == 1 and kinds(problems) == {"stale-model": len(degraded)}
    assert sorted(p["file"] for p in problems) == degraded
    assert all("rerun pie degrade" in p["message"] for p in problems)


def test_one_pseudo_original_recorded_with_another_model(workspace, tmp_path):
    record = latest(workspace, TRAIN_B)["5014"]
    workspace.flickr_manifest(TRAIN_B).append([{**record, "degraded": {**record["degraded"], "model": "f" * 64}}])
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1
    assert [(p["kind"], p["file"]) for p in problems] == [("stale-model", record["degraded"]["file"]),
                                                          ("stale-sample", "shards/train-000001.tar")]
    assert "fffffffffff" in problems[0]["message"] and "degrader" in problems[1]["message"]
    workspace.degrader_checkpoint().unlink()
    report = audit_workspace(workspace, valid_refs=2, shards=workspace.shards_dir())
    assert report.kinds == {"checkpoint": 1, "stale-sample": 1} and report.findings[0].file == "degrader/dsn.pt"


def test_orphan_samples_missing_pairs_and_leftovers_in_the_shard_folder(workspace, tmp_path):
    shards = workspace.shards_dir()
    members = tar_members(shards / "train-000000.tar")
    kept = [m for m in members if not m[0].startswith(f"{TRAIN_A}/5004.")]
    orphan = [(name.replace("/5000.", "/7777."), data) for name, data in members if name.startswith(f"{TRAIN_A}/5000.")]
    rewrite_tar(shards / "train-000000.tar", kept + orphan)
    (shards / ".valid-000000.tar.part-1-2").write_bytes(b"half")
    (shards / "train-000099.tar").write_bytes((shards / "valid-000000.tar").read_bytes())
    code, problems = pie_audit(workspace, tmp_path)
    assert code == 1
    found = {(p["kind"], p["file"]) for p in problems if p["kind"] not in ("shard-size", "shard-checksum")}
    assert found == {("orphan-sample", "shards/train-000000.tar"), ("missing-pair", f"flickr/{TRAIN_A}/5004.jpg"),
                     ("temporary", "shards/.valid-000000.tar.part-1-2"), ("unrecorded-file", "shards/train-000099.tar")}
    assert [p["file"] for p in problems if p["kind"] in ("shard-size", "shard-checksum")] == ["shards/train-000000.tar"]


def test_report_keeps_message_lines_and_rejects_unknown_kinds():
    report = AuditReport()
    report.add("checksum", "flickr/a.jpg", "x.jsonl photo 1: flickr/a.jpg does not match its sha256")
    assert report.problems == ["x.jsonl photo 1: flickr/a.jpg does not match its sha256"] and not report.ok
    assert report.as_dict()["problems"] == [{"kind": "checksum", "file": "flickr/a.jpg",
                                             "message": report.problems[0]}]
    assert report.table().splitlines()[1].split() == ["checksum", "1"]
    with pytest.raises(ValueError, match="unknown problem kind"):
        report.add("typo", "f", "m")
