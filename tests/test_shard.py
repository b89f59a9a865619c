"""``pie shard`` and ``pie export``: shards read back by webdataset, wids and tar; resume; Dask; exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from manifests.jsonl import latest_by
from manifests.workspace import Workspace
from pipeline.cluster import dask_client
from pipeline.stages.export import export_reference
from pipeline.imageio import encode_png
from pipeline.stages.shard.plan import Pair, pack, parse_size, workspace_plan
from pipeline.stages.shard.write import INDEX_NAME, STATE_DIR, run_shard
from pipeline.stages.shard.tar_writer import RECORD, TarStream

from shard_fixtures import USERS, build_workspace, degrade_record, total_pairs

PIE = str(Path(sys.executable).with_name("pie"))


@pytest.fixture()
def workspace(tmp_path) -> Workspace:
    return build_workspace(tmp_path / "ws")


def shard(workspace: Workspace, out: Path | str, client_factory=None, **limits):
    plans, skipped = workspace_plan(workspace, **limits)
    return run_shard(workspace, plans, skipped, str(out), client_factory=client_factory)


def read_index(out: Path) -> dict:
    return json.loads((out / INDEX_NAME).read_text())


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.tar"))}


def records_by_key(workspace: Workspace) -> dict[str, dict]:
    """The latest record behind every sample key."""
    found = {}
    for nsid in USERS:
        for photo_id, record in latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").items():
            found[f"{nsid}/{photo_id}"] = record
    for path in (workspace.root / "manifests" / "rules").glob("*.jsonl"):
        for name, record in latest_by(workspace.rules_manifest(path.stem).read().records, "name").items():
            found[f"rules-{path.stem}/{name}"] = record
    return found


def test_shards_read_back_with_webdataset_wids_and_tar(workspace, tmp_path):
    out = tmp_path / "shards"
    summary = shard(workspace, out, maxcount=6)
    assert (summary.written, summary.samples, summary.skipped) == (4, total_pairs(), [])
    index = read_index(out)
    assert [entry["name"] for entry in index["shards"]] == ["train-000000.tar", "train-000001.tar",
                                                            "train-000002.tar", "valid-000000.tar"]
    assert index["totals"]["samples"] == total_pairs()
    for entry in index["shards"]:
        data = (out / entry["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])

    records = records_by_key(workspace)
    urls = [str(out / entry["name"]) for entry in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == total_pairs() and len({s["__key__"] for s in samples}) == total_pairs()
    users_seen: list[str] = []
    for sample in samples:
        key, meta = sample["__key__"], json.loads(sample["json"])
        assert "." not in key and key in records
        record = records[key]
        inputs = [name for name in sample if name.startswith("input.")]
        targets = [name for name in sample if name.startswith("target.")]
        assert len(inputs) == len(targets) == 1
        assert hashlib.sha256(sample[targets[0]]).hexdigest() == record["sha256"] == meta["target_sha256"]
        if meta["source"] == "flickr":
            assert hashlib.sha256(sample[inputs[0]]).hexdigest() == record["degraded"]["sha256"]
            assert (meta["split"], meta["license"], meta["page_url"]) == (record["split"], record["license"],
                                                                          record["page_url"])
            assert inputs[0] == ("input.png" if record["degraded"]["format"] == "png" else "input.jpg")
        else:
            assert hashlib.sha256(sample[inputs[0]]).hexdigest() == record["input_sha256"]
            assert (meta["rule"], meta["split"], inputs[0], targets[0]) == (record["rule"], "train", "input.png",
                                                                            "target.png")
        if not users_seen or users_seen[-1] != meta["user"]:
            users_seen.append(meta["user"])
    assert len(users_seen) == len(set(users_seen)), "a user's samples must be contiguous"
    valid = [json.loads(s["json"])["split"] for s in samples if s["__url__"].endswith("valid-000000.tar")]
    assert sorted(set(valid)) == ["valid", "valid_ref"]

    import wids

    dataset = wids.ShardListDataset(str(out / "wids-train.json"), cache_dir=str(tmp_path / "wids-cache"))
    assert len(dataset) == index["splits"]["train"]["samples"]
    assert dataset[len(dataset) - 1]["__key__"] == samples[index["splits"]["train"]["samples"] - 1]["__key__"]

    with tarfile.open(out / "train-000000.tar") as tar:
        members = tar.getmembers()
    names = [member.name for member in members]
    assert names[:3] == sorted(names[:3]) and names[0].endswith(".input.jpg")
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(946_684_800, 0, 0, "pie", 0o444)}


def test_same_bytes_with_one_and_two_dask_workers(workspace, tmp_path):
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"shards-{workers}"
        summary = shard(workspace, out, client_factory=lambda: dask_client(None, workers), maxcount=4)
        assert summary.written == 7
        outputs[workers] = (shard_bytes(out), (out / INDEX_NAME).read_bytes())
    assert outputs[1] == outputs[2]


def test_rerun_keeps_current_shards_and_redoes_stale_ones(workspace, tmp_path):
    out = tmp_path / "shards"
    shard(workspace, out, maxcount=6)
    before = shard_bytes(out)
    again = shard(workspace, out, maxcount=6)
    assert (again.written, again.kept) == (0, 4) and shard_bytes(out) == before

    nsid = "48600002@N02"
    store = workspace.flickr_manifest(nsid)
    record = latest_by(store.read().records, "photo_id")["5010"]
    store.append([degrade_record(workspace, record, encode_png(np.full((24, 32, 3), 128, np.uint8)), "png", model="1" * 64)])
    redone = shard(workspace, out, maxcount=6)
    assert (redone.written, redone.kept) == (1, 3)
    after = shard_bytes(out)
    assert [name for name in after if after[name] != before[name]] == ["train-000001.tar"]
    sample = next(s for s in wds.WebDataset(str(out / "train-000001.tar"), shardshuffle=False)
                  if s["__key__"] == f"{nsid}/5010")
    assert json.loads(sample["json"])["degrader"] == "1" * 64

    # a smaller shard size re-plans everything; shards the new plan lacks are removed
    (out / ".train-000000.tar.part-1-dead").write_bytes(b"partial")
    fewer = shard(workspace, out, maxcount=1000)
    assert (fewer.written, fewer.kept, fewer.removed) == (1, 1, 2)
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        INDEX_NAME, "train-000000.tar", "valid-000000.tar", "wids-train.json", "wids-valid.json"]
    assert not [path for path in out.glob(".*part-*")]
    assert sorted(path.name for path in (out / STATE_DIR).iterdir()) == ["train-000000.tar.json",
                                                                          "valid-000000.tar.json"]


def test_pairs_that_cannot_be_used_are_named(workspace, tmp_path):
    nsid = "48600001@N01"
    store = workspace.flickr_manifest(nsid)
    latest = latest_by(store.read().records, "photo_id")
    store.append([{key: value for key, value in latest["5000"].items() if key != "degraded"}])
    workspace.resolve_relative(latest["5001"]["degraded"]["file"]).write_bytes(b"\xff\xd8\xff tampered")
    workspace.resolve_relative(latest["5002"]["file"]).unlink()
    hostile = latest["5003"]
    store.append([{**hostile, "degraded": {**hostile["degraded"], "file": "../../etc/passwd"}}])
    summary = shard(workspace, tmp_path / "shards")
    assert summary.samples == total_pairs() - 4
    lines = sorted(summary.skipped)
    hostile_line = lines[3]
    assert hostile_line.startswith(f"{nsid}/5003: record unusable: ") and "/../../etc/passwd is outside" in hostile_line
    assert lines[0] == f"{nsid}/5000: no pseudo original; run `pie degrade`"
    assert lines[1].startswith(f"{nsid}/5001: degraded/{nsid}/5001.jpg does not match the SHA-256")
    assert lines[2] == f"{nsid}/5002: target file flickr/{nsid}/5002.jpg is missing"
    assert len(lines) == 4
    assert read_index(tmp_path / "shards")["skipped"] == lines


def test_pack_keeps_users_together_and_splits_only_oversized_ones():
    def pairs(user: str, count: int, split: str = "train") -> list[Pair]:
        return [Pair(f"{user}/{i}", user, split, "in", "out", {}, 1000) for i in range(count)]

    plans = pack(pairs("a", 3) + pairs("b", 3) + pairs("c", 9) + pairs("d", 2) + pairs("v", 2, "valid"),
                 maxcount=5)
    assert [(plan.name, [p.key for p in plan.pairs][0], len(plan.pairs)) for plan in plans] == [
        ("train-000000.tar", "a/0", 3), ("train-000001.tar", "b/0", 3), ("train-000002.tar", "c/0", 5),
        ("train-000003.tar", "c/5", 4), ("train-000004.tar", "d/0", 2), ("valid-000000.tar", "v/0", 2)]
    by_size = pack(pairs("a", 2) + pairs("b", 2), maxcount=100, maxsize=3500)
    assert [len(plan.pairs) for plan in by_size] == [2, 2]
    assert parse_size("256MB") == 256 * 10**6 and parse_size("1GiB") == 2**30 and parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_size("12 parsecs")


def test_fsspec_urls(workspace, tmp_path):
    out = tmp_path / "by-url"
    summary = shard(workspace, f"file://{out}", maxcount=6)
    assert summary.written == 4 and read_index(out)["totals"]["samples"] == total_pairs()
    memory = shard(workspace, "memory://pie-test/shards", maxcount=6)
    import fsspec

    fs = fsspec.filesystem("memory")
    assert memory.written == 4 and fs.cat("/pie-test/shards/train-000000.tar") == (out / "train-000000.tar").read_bytes()


def test_export_reference_layout(workspace, tmp_path):
    out = tmp_path / "reference"
    summary = export_reference(workspace, out)
    assert summary.pairs == total_pairs() and summary.files["linked"] == 2 * total_pairs()
    target = out / "train" / "48600001_N01" / "5000.jpg"
    assert os.path.samefile(target, workspace.root / "flickr" / "48600001@N01" / "5000.jpg")
    assert os.path.samefile(out / "train" / "48600002_N02_input" / "5010.jpg",
                            workspace.root / "degraded" / "48600002@N02" / "5010.png")
    assert sorted(p.name for p in (out / "valid_ref" / "48600003_N03").iterdir()) == ["5020.jpg", "5021.jpg"]
    assert sorted(p.name for p in (out / "train" / "punch_input").iterdir()) == ["a0001.png", "a0002.png",
                                                                                  "a0003.png"]
    assert export_reference(workspace, out).files["kept"] == 2 * total_pairs()


def run_pie(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PIE, *args], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.slow
def test_cli_exit_codes(workspace, tmp_path):
    root = str(workspace.root)
    ok = run_pie("--root", root, "-q", "shard", "--workers", "1", "--maxcount", "6")
    assert ok.returncode == 0, ok.stderr
    bad_size = run_pie("--root", root, "shard", "--maxsize", "huge")
    assert bad_size.returncode == 2 and "--maxsize" in bad_size.stderr
    empty = run_pie("--root", str(tmp_path / "empty"), "shard")
    assert empty.returncode == 1 and "no pairs to shard" in empty.stderr
    store = workspace.flickr_manifest("48600001@N01")
    record = latest_by(store.read().records, "photo_id")["5003"]
    store.append([{key: value for key, value in record.items() if key != "degraded"}])
    skipped = run_pie("--root", root, "shard", "--workers", "1", "--maxcount", "6")
    assert skipped.returncode == 1
    assert "pie: skipped 48600001@N01/5003: no pseudo original; run `pie degrade`" in skipped.stderr
    assert "Traceback" not in skipped.stderr
    exported = run_pie("--root", root, "export", str(tmp_path / "ref"))
    assert exported.returncode == 0 and "export: " in exported.stdout


@pytest.mark.slow
def test_kill_during_shard_then_rerun_gives_the_straight_index(workspace, tmp_path):
    root = str(workspace.root)
    straight = tmp_path / "straight"
    shard(workspace, straight, maxcount=1)
    out = tmp_path / "killed"
    command = [PIE, "--root", root, "-q", "shard", "--workers", "1", "--maxcount", "1", "--out", str(out)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / STATE_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (state.is_dir() and any(state.glob("*.tar.json"))):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGSTOP)
    finished = len(list(state.glob("*.tar.json")))
    index_present = (out / INDEX_NAME).exists()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < finished < total_pairs() and not index_present
    rerun = run_pie("--root", root, "-q", "shard", "--workers", "1", "--maxcount", "1", "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert (out / INDEX_NAME).read_bytes() == (straight / INDEX_NAME).read_bytes()
    assert shard_bytes(out) == shard_bytes(straight)
    assert not list(out.glob(".*part-*"))


def test_tar_members_are_streamable_as_plain_tar(workspace, tmp_path):
    out = tmp_path / "shards"
    shard(workspace, out)
    with tarfile.open(fileobj=io.BytesIO((out / "train-000000.tar").read_bytes()), mode="r|") as stream:
        names = [member.name for member in stream]
    assert len(names) == 3 * (total_pairs() - 5)
    for name in names:
        key, field = name.split(".", 1)
        assert field in ("input.jpg", "input.png", "target.jpg", "target.png", "json") and "." not in key


def test_tar_stream_round_trip(tmp_path):
    """TarStream's bytes: exact member metadata for tarfile, webdataset agreeing, and tarfile's own bytes."""
    long_key = "rules-punch/" + "n" * 120
    samples = [{"__key__": "48600001@N01/5000", "input.jpg": b"\xff\xd8" + bytes(510), "json": b"{}",
                "target.jpg": b"\xff\xd8" + os.urandom(1000)},
               {"__key__": "48600001@N01/5001", "input.png": b"", "json": b"{\"a\": 1}", "target.png": os.urandom(513)},
               {"__key__": long_key, "input.png": b"\x89PNG", "json": b"{}", "target.png": b"x" * 100_000},
               {"__key__": "rules-t\u00f6ne/a0001", "input.png": b"\x89PNG", "json": b"{}", "target.png": b"y"}]
    path = tmp_path / "stream.tar"
    with path.open("wb") as raw, TarStream(raw, mtime=946_684_800, mode=0o444, uname="pie", gname="pie",
                                          flush_bytes=4096) as tar:
        for sample in samples:
            tar.add_sample(sample)
    data = path.read_bytes()
    assert (tar.bytes, tar.sha256.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    assert len(data) % RECORD == 0 and data.endswith(bytes(2 * 512))

    expected = [(f"{s['__key__']}.{field}", s[field]) for s in samples for field in sorted(s) if field != "__key__"]
    for mode in ("r:", "r|"):
        with tarfile.open(path, mode) as archive:
            found = [(member, archive.extractfile(member).read()) for member in archive]
        assert [(member.name, content) for member, content in found] == expected
        assert {(m.size == len(c), m.type, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname) for m, c in found} == {
            (True, tarfile.REGTYPE, 0o444, 946_684_800, 0, 0, "pie", "pie")}
    assert found[-4][0].size == 100_000 and len(found[-4][0].name) > 100
    assert found[-1][0].name == "rules-t\u00f6ne/a0001.target.png"
    assert found[3][0].name == "48600001@N01/5001.input.png" and found[3][0].size == 0

    read = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [{key: value for key, value in sample.items() if key == "__key__" or not key.startswith("_")}
            for sample in read] == samples

    reference = io.BytesIO()
    with wds.TarWriter(reference, user="pie", group="pie", mode=0o444, mtime=946_684_800, encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    assert data == reference.getvalue()
