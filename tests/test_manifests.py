"""The append-only manifest store, record validation and workspace paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.files import remove_partials
from manifests.ids import InvalidIdError, check_nsid, check_photo_id
from manifests.jsonl import JsonlStore, latest_by, read_jsonl
from manifests.licenses import OPEN_LICENSE_IDS, lookup, parse_license_filter
from manifests.records import PHOTO_SCHEMA, RecordError, validate_photo_record
from manifests.workspace import OutsideWorkspaceError, Workspace


def photo_record(**changes) -> dict:
    record = {
        "schema": PHOTO_SCHEMA, "user": "12037949754@N01", "photo_id": "51741674882", "secret": "d3eff8c74b",
        "server": "65535", "size": "z", "url": "https://live.staticflickr.com/65535/51741674882_d3eff8c74b_z.jpg",
        "page_url": "https://www.flickr.com/photos/12037949754@N01/51741674882/",
        "license": lookup("4").as_record(), "owner_name": "someone", "title": "a title",
        "date_taken": "2021-01-01 12:00:00", "file": "flickr/12037949754@N01/51741674882.jpg", "width": 640,
        "height": 427, "bytes": 123456, "sha256": "0" * 64, "status": "ok", "reason": None, "attempts": 1,
        "fetched_at": "2026-01-01T00:00:00+00:00", "split": "train",
    }
    record.update(changes)
    return record


def test_store_appends_and_latest_record_wins(tmp_path):
    store = JsonlStore(tmp_path / "m.jsonl")
    store.append([{"photo_id": "1", "status": "failed"}, {"photo_id": "2", "status": "ok"}])
    store.append([{"photo_id": "1", "status": "ok"}])
    latest = latest_by(store.read().records, "photo_id")
    assert latest["1"]["status"] == "ok" and latest["2"]["status"] == "ok"
    assert len(store.read().records) == 3


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "m.jsonl"
    store = JsonlStore(path)
    store.append([{"photo_id": "1"}])
    with open(path, "ab") as handle:  # a write cut short by a kill
        handle.write(b'{"photo_id": "2", "sta')
    result = read_jsonl(path)
    assert [r["photo_id"] for r in result.records] == ["1"]
    assert "torn last line" in result.problems[0]
    JsonlStore(path).append([{"photo_id": "3"}])
    assert [r["photo_id"] for r in read_jsonl(path).records] == ["1", "3"]
    assert path.read_bytes().endswith(b"\n") and b"sta" not in path.read_bytes()


def test_corrupt_middle_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\nnot json\n[1, 2]\n{"a": 2}\n')
    result = read_jsonl(path)
    assert [r["a"] for r in result.records] == [1, 2]
    assert any(":2: not valid JSON" in p for p in result.problems)
    assert any(":3: not a JSON object" in p for p in result.problems)


def test_lines_that_only_parse_together_are_reported_one_by_one(tmp_path):
    # Joined into one array these would read as three records; each line on its own is not one.
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}, {"b": 2}\n{"c": 3}\n{"d": 4}, {"e": 5\n"f": 6}\n')
    result = read_jsonl(path)
    assert result.records == [{"c": 3}]
    assert [p.split(":")[-2] for p in result.problems] == ["1", "3", "4"]


def test_valid_record_passes_and_each_defect_is_named():
    assert validate_photo_record(photo_record())["status"] == "ok"
    with pytest.raises(RecordError, match="'width' is missing"):
        validate_photo_record({k: v for k, v in photo_record().items() if k != "width"})
    with pytest.raises(RecordError, match="NSID"):
        validate_photo_record(photo_record(user="../../etc"))
    with pytest.raises(RecordError, match="'reason' is empty"):
        validate_photo_record(photo_record(status="failed"))
    with pytest.raises(RecordError, match="'split'"):
        validate_photo_record(photo_record(split="test"))
    with pytest.raises(RecordError, match="'sha256' is empty"):
        validate_photo_record(photo_record(sha256=None))


@pytest.mark.parametrize("bad", ["../1@N01", "1@N01/..", "abc", "1@N1", "", "1@N01\x00", 5])
def test_hostile_nsids_are_refused(bad):
    with pytest.raises(InvalidIdError):
        check_nsid(bad)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "12a", "-1", "1.jpg", "", None])
def test_hostile_photo_ids_are_refused(bad):
    with pytest.raises(InvalidIdError):
        check_photo_id(bad)


def test_workspace_paths_stay_inside(tmp_path):
    workspace = Workspace(tmp_path)
    path = workspace.flickr_photo("12@N01", "34")
    assert path == tmp_path.resolve() / "flickr" / "12@N01" / "34.jpg"
    with pytest.raises(InvalidIdError):
        workspace.flickr_photo("12@N01", "../../x")
    with pytest.raises(OutsideWorkspaceError):
        workspace.resolve_relative("../outside.jpg")
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(OutsideWorkspaceError):
        workspace.resolve_relative("link/passwd")


def test_license_filter():
    assert parse_license_filter("open") == OPEN_LICENSE_IDS and "0" not in OPEN_LICENSE_IDS
    assert parse_license_filter("4, 9") == {"4", "9"}
    assert "0" in parse_license_filter("all")
    with pytest.raises(ValueError, match="'99'"):
        parse_license_filter("4,99")
    assert json.dumps(lookup(4).as_record())


def test_a_failed_atomic_write_names_the_file_and_leaves_no_temporary(tmp_path):
    """A write over the file-size limit fails as a full disk does: OSError naming the target, nothing left."""
    script = (
        "import errno, resource, signal, sys\n"
        "from pathlib import Path\n"
        "from manifests.files import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "target = Path(sys.argv[1])\n"
        "try:\n"
        "    write_atomic(target, bytes(100_000))\n"
        "except OSError as error:\n"
        "    print(error.errno == errno.EFBIG, error.filename == str(target), sorted(p.name for p in target.parent.iterdir()))\n"
    )
    target = tmp_path / "out" / "photo.png"
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.stdout.strip() == "True True []", result.stderr


def test_remove_partials_deletes_only_temporaries(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png.part-12-34").write_bytes(b"x")
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    assert remove_partials(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["x.png"]
    assert remove_partials(tmp_path / "missing") == 0
