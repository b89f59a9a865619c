"""``pie crawl`` end to end: the real flickrapi client against ``pie flickr-replay``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from manifests.audit import audit
from manifests.jsonl import latest_by
from manifests.records import validate_photo_record
from manifests.workspace import Workspace
from pipeline.cli import cli
from pipeline.stages.demo.corpus import build_corpus
from pipeline.replay.server import ReplayServer

KEY, SECRET = "replaykey", "topsecret-9f8e7d"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """Four sample users with twelve small photos each (the 320-px size 'n' exists for all)."""
    folder = tmp_path_factory.mktemp("corpus")
    nsids = build_corpus(folder, users=4, photos_per_user=12, valid_users=1, longest_edge=(340, 420), seed=3)
    return folder, nsids


def crawl_args(server: ReplayServer, root: Path, users_file: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "-q", "crawl", "--users", str(users_file), "--num-users", "4", "--per-user", "6",
            "--size", "n", "--min-side", "100", "--api-key", KEY, "--api-secret", SECRET,
            "--api-url", server.rest_url, "--retry-base", "0.01", "--timeout", "2", "--calls-per-hour", "100000",
            "--attempts", "6", *extra]


def users_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "users.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def final_state(root: Path) -> dict[tuple[str, str], tuple]:
    """What a crawl produced, without timestamps and attempt counts."""
    workspace = Workspace(root)
    state = {}
    for nsid in workspace.crawled_users():
        for photo_id, record in latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id").items():
            state[(nsid, photo_id)] = (record["status"], record["sha256"], record["split"], record["file"])
    return state


def download_processes(processes: list[psutil.Process]) -> int:
    """How many of ``processes`` are download processes (multiprocessing also starts a resource tracker)."""
    return sum("spawn_main" in " ".join(process.cmdline()) for process in processes)


def all_text(root: Path) -> str:
    return "".join(path.read_bytes().decode("latin-1") for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize("check_workers", ["0", "2"])
def test_crawl_with_faults_completes_and_audits_clean(corpus, tmp_path, check_workers):
    folder, nsids = corpus
    faults = "api:500=0.1,api:429=0.1,api:105=0.1,api:malformed=0.05,img:500=0.1,img:429=0.05,img:truncate=0.1,img:html=0.05"
    with ReplayServer(folder, api_key=KEY, faults=faults, seed=1) as server:
        result = CliRunner().invoke(cli, crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids),
                                                    "--check-workers", check_workers))
        assert server.stats["faults"], "the faults were injected"
    assert result.exit_code == 0, result.output
    workspace = Workspace(tmp_path / "ws")
    assert workspace.crawled_users() == sorted(nsids)
    for nsid in nsids:
        latest = latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id")
        kept = [validate_photo_record(r) for r in latest.values() if r["status"] == "ok"]
        assert len(kept) == 6
        assert all(r["license"]["id"] != "0" for r in kept)  # open licences only by default
    report = audit(workspace)
    assert report.ok, report.problems
    assert SECRET not in all_text(tmp_path / "ws") and SECRET not in result.output


def test_summary_line_and_secret_never_printed(corpus, tmp_path):
    folder, nsids = corpus
    with ReplayServer(folder, api_key=KEY) as server:
        args = [a for a in crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids[:2])) if a != "-q"]
        result = CliRunner().invoke(cli, args + ["--num-users", "2"])
    assert result.exit_code == 0, result.output
    assert "crawl: users 2 complete" in result.output and "12 ok" in result.output
    assert SECRET not in result.output


def test_usernames_urls_and_missing_users(corpus, tmp_path):
    folder, nsids = corpus
    lines = ["sample-user-00", "https://www.flickr.com/photos/sample01/", "424242@N01", nsids[2]]
    with ReplayServer(folder, api_key=KEY) as server:
        result = CliRunner().invoke(cli, crawl_args(server, tmp_path / "ws", users_file(tmp_path, lines)))
    assert result.exit_code == 1  # one of the four users asked for does not exist
    assert "crawl unfinished: 3 of the 4 users asked for have enough eligible photos" in result.output
    users = [json.loads(line) for line in (tmp_path / "ws/manifests/flickr-users.jsonl").read_text().splitlines()]
    assert {u["user"]: u["status"] for u in users} == {nsids[0]: "complete", nsids[1]: "complete",
                                                        "424242@N01": "missing", nsids[2]: "complete"}
    with ReplayServer(folder, api_key=KEY) as server:  # a rerun resolves nothing again
        again = CliRunner().invoke(cli, crawl_args(server, tmp_path / "ws", users_file(tmp_path, lines)))
        methods = server.stats["methods"]
    assert again.exit_code == 1 and "users 3 complete" not in again.output  # -q: only the unfinished line
    assert "flickr.people.findByUsername" not in methods and "flickr.urls.lookupUser" not in methods


def test_wrong_key_stops_at_once_with_one_line(corpus, tmp_path):
    folder, nsids = corpus
    with ReplayServer(folder, api_key="the-right-key") as server:
        result = CliRunner().invoke(cli, crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids)))
        calls = sum(server.stats["requests"].values())
    assert result.exit_code == 1
    assert "error 100" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert calls <= 2
    assert not (tmp_path / "ws" / "flickr").exists()


def test_hostile_ids_never_leave_the_workspace(corpus, tmp_path):
    folder, nsids = corpus
    hostile = tmp_path / "hostile"
    build_corpus(hostile, users=1, photos_per_user=10, valid_users=0, longest_edge=(340, 420), seed=5)
    user_dir = next(p for p in hostile.iterdir() if p.is_dir())
    photos = sorted(user_dir.glob("*.json"))
    overrides = [{"id": "../../../escape"}, {"owner": "../../x"}, {"server": "../.."},
                 {"secret": "/etc/passwd"}, {"id": "1" * 5, "url_n": "file:///etc/passwd"}]
    for sidecar, override in zip(photos, overrides):
        meta = json.loads(sidecar.read_text())
        meta["override"] = override
        meta["license"] = "4"
        sidecar.write_text(json.dumps(meta))
    with ReplayServer(hostile, api_key=KEY) as server:
        result = CliRunner().invoke(cli, crawl_args(server, tmp_path / "ws", users_file(tmp_path, [user_dir.name]))
                                    + ["--per-user", "3", "--num-users", "1"])
    assert result.exit_code == 0, result.output
    written = set(tmp_path.rglob("*")) - set(hostile.rglob("*")) - {hostile, tmp_path / "users.txt"}
    workspace_root = tmp_path / "ws"
    assert written and all(p == workspace_root or workspace_root in p.parents for p in written)
    assert not (tmp_path / "escape.jpg").exists()
    state = final_state(tmp_path / "ws")
    assert sum(1 for status, *_ in state.values() if status == "ok") == 3


def test_html_instead_of_jpeg_is_rejected_with_a_reason(corpus, tmp_path):
    folder, nsids = corpus
    with ReplayServer(folder, api_key=KEY, faults="img:html=1.0") as server:
        result = CliRunner().invoke(cli, crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids[:1]))
                                    + ["--num-users", "1"])
    assert result.exit_code == 1 and "0 of the 1 users asked for have enough eligible photos" in result.output
    records = final_state(tmp_path / "ws")
    assert records and all(status == "rejected" for status, *_ in records.values())
    reasons = {r["reason"].split(":")[0] for r in Workspace(tmp_path / "ws").flickr_manifest(nsids[0]).read().records}
    assert reasons == {"not-an-image"}
    assert not list((tmp_path / "ws" / "flickr").rglob("*.jpg"))


def test_published_pickle_list_through_a_mirror(tmp_path):
    """Re-fetch two users of the reference code's validation list from a replay of their photos."""
    from pipeline.safepickle import load_plain_pickle
    from pipeline.imageio import encode_jpeg
    from skimage import data

    crawl_list = load_plain_pickle((DATA / "valid_from_flickr.pkl").read_bytes())
    chosen = list(crawl_list)[:2]
    folder = tmp_path / "replay"
    base = data.astronaut()
    for user_index, nsid in enumerate(chosen):
        (folder / nsid).mkdir(parents=True)
        for index, url in enumerate(crawl_list[nsid][:5]):
            server_id, name = url.split("/")[-2:]
            photo_id, secret, _ = name.split("_")
            crop = base[index * 20:index * 20 + 300, user_index * 30:user_index * 30 + 420]
            (folder / nsid / f"{photo_id}.jpg").write_bytes(encode_jpeg(crop))
            (folder / nsid / f"{photo_id}.json").write_text(json.dumps(
                {"secret": secret, "server": server_id, "license": "0" if index == 4 else "4"}))
    with ReplayServer(folder, api_key=KEY, static_base="https://live.staticflickr.com/") as server:
        mirror = server.rest_url.replace("/services/rest/", "/static/")
        result = CliRunner().invoke(cli, [
            "--root", str(tmp_path / "ws"), "crawl", "--from-list", str(DATA / "valid_from_flickr.pkl"),
            "--num-users", "2", "--per-user", "100", "--min-side", "100", "--api-key", KEY,
            "--api-secret", SECRET, "--api-url", server.rest_url, "--mirror", mirror, "--calls-per-hour", "100000"])
    assert result.exit_code == 1  # the replay holds 5 of each user's 100 listed photos
    assert "0 of the 2 users asked for have enough eligible photos" in result.output
    workspace = Workspace(tmp_path / "ws")
    for nsid in chosen:
        latest = latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id")
        statuses = sorted(r["status"] for r in latest.values())
        # 4 openly licensed photos kept; the all-rights-reserved one and the 95 the replay lacks are rejected
        assert statuses.count("ok") == 4 and statuses.count("rejected") == 96
        assert all(r["url"].startswith("https://live.staticflickr.com/") for r in latest.values())


def test_offline_list_through_a_mirror_makes_no_api_call_and_marks_licences_unverified(tmp_path):
    from pipeline.safepickle import load_plain_pickle
    from pipeline.imageio import encode_jpeg
    from skimage import data

    crawl_list = load_plain_pickle((DATA / "valid_from_flickr.pkl").read_bytes())
    nsid = list(crawl_list)[0]
    folder = tmp_path / "replay"
    (folder / nsid).mkdir(parents=True)
    for index, url in enumerate(crawl_list[nsid][:3]):
        server_id, name = url.split("/")[-2:]
        photo_id, secret, _ = name.split("_")
        (folder / nsid / f"{photo_id}.jpg").write_bytes(encode_jpeg(data.astronaut()[index * 30:index * 30 + 300]))
        (folder / nsid / f"{photo_id}.json").write_text(json.dumps({"secret": secret, "server": server_id,
                                                                    "license": "0"}))
    with ReplayServer(folder, api_key=KEY, static_base="https://live.staticflickr.com/") as server:
        mirror = server.rest_url.replace("/services/rest/", "/static/")
        result = CliRunner().invoke(cli, [
            "--root", str(tmp_path / "ws"), "crawl", "--from-list", str(DATA / "valid_from_flickr.pkl"), "--offline",
            "--num-users", "1", "--per-user", "3", "--min-side", "100", "--mirror", mirror])
        api_calls = server.stats["requests"].get("api", 0)
    assert result.exit_code == 0, result.output
    assert api_calls == 0
    workspace = Workspace(tmp_path / "ws")
    latest = latest_by(workspace.flickr_manifest(nsid).read().records, "photo_id")
    assert [r["license"]["id"] for r in latest.values() if r["status"] == "ok"] == ["unknown"] * 3
    users = [json.loads(line) for line in (tmp_path / "ws/manifests/flickr-users.jsonl").read_text().splitlines()]
    assert users[-1]["unverified_licences"] == 3
    problems = audit(workspace).problems
    assert len(problems) == 3 and all("licence not verified" in p for p in problems)
    assert audit(workspace, licenses=frozenset({"unknown"})).ok
    plan = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "crawl", "--from-list",
                                    str(DATA / "valid_from_flickr.pkl"), "--offline", "--dry-run"])
    assert plan.exit_code == 0 and ",16,unknown; about 0 API calls" in plan.output
    misuse = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "crawl", "--users", str(DATA / "README.md"),
                                      "--offline"])
    assert misuse.exit_code == 2 and "--offline works with --from-list FILE only" in misuse.output


def test_hostile_pickle_list_is_one_line_error(tmp_path):
    evil = tmp_path / "list.pkl"
    evil.write_bytes(b"cposix\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    result = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "crawl", "--from-list", str(evil),
                                      "--api-key", KEY, "--api-secret", SECRET, "--api-url", "http://127.0.0.1:9/"])
    assert result.exit_code == 1 and "refused pickle opcode" in result.output
    assert not (tmp_path / "pwned").exists()


def test_dry_run_calls_nothing(corpus, tmp_path):
    folder, nsids = corpus
    with ReplayServer(folder, api_key=KEY) as server:
        args = [a for a in crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids)) if a != "-q"]
        result = CliRunner().invoke(cli, args + ["--dry-run"])
        assert sum(server.stats["requests"].values()) == 0
    assert result.exit_code == 0
    assert "4 users x up to 6 photos = 24 photos" in result.output and "API calls" in result.output
    assert not (tmp_path / "ws" / "flickr").exists()


def test_kill_minus_nine_then_resume_equals_a_straight_run(corpus, tmp_path):
    folder, nsids = corpus
    users = users_file(tmp_path, nsids)
    with ReplayServer(folder, api_key=KEY, faults="img:slow=0.3,slow_seconds=0.2", seed=2) as server:
        straight = tmp_path / "straight"
        assert CliRunner().invoke(cli, crawl_args(server, straight, users)).exit_code == 0

        killed = tmp_path / "killed"
        env = {**os.environ, "NO_PROXY": "127.0.0.1"}
        process = subprocess.Popen([sys.executable, "-m", "pipeline", *crawl_args(server, killed, users),
                                    "--concurrency", "2", "--check-workers", "2"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            manifests = list((killed / "manifests" / "flickr").glob("*.jsonl")) if killed.exists() else []
            if sum(len(p.read_bytes().splitlines()) for p in manifests) >= 8:
                break
            time.sleep(0.02)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert download_processes(workers) == 2
        process.send_signal(signal.SIGKILL)
        process.wait()
        interrupted = final_state(killed)
        assert 0 < sum(1 for status, *_ in interrupted.values() if status == "ok") < 24
        assert not psutil.wait_procs(workers, timeout=10)[1]  # none left behind

        result = CliRunner().invoke(cli, crawl_args(server, killed, users))
    assert result.exit_code == 0, result.output
    assert final_state(killed) == final_state(straight)
    assert audit(Workspace(killed)).ok
    rerun = CliRunner().invoke(cli, [a for a in crawl_args(server, killed, users) if a != "-q"])
    assert "photos 0 ok (+24 already done)" in rerun.output


def test_a_rejection_after_the_last_submission_gets_a_replacement(tmp_path):
    """Duplicates found late still leave every user complete and finalised (valid users with references)."""
    folder = tmp_path / "replay"
    nsids = build_corpus(folder, users=2, photos_per_user=12, valid_users=1, longest_edge=(340, 420), seed=4)
    for sidecar in folder.rglob("*.json"):
        if sidecar.name != "user.json":
            sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "license": "4"}))
    for nsid in nsids:
        photos = sorted((folder / nsid).glob("*.jpg"))
        for index, photo in enumerate(photos[-3:]):  # copies of photos listed early, under newer ids
            copy_id = str(int(photo.stem) + 90_000 + index)
            (folder / nsid / f"{copy_id}.jpg").write_bytes(photo.read_bytes())
            (folder / nsid / f"{copy_id}.json").write_text(json.dumps({"license": "4"}))
    with ReplayServer(folder, api_key=KEY) as server:
        args = crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids)) + ["--per-user", "12",
                                                                                   "--valid-refs", "5",
                                                                                   "--num-users", "2"]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    users = [json.loads(line) for line in (tmp_path / "ws/manifests/flickr-users.jsonl").read_text().splitlines()]
    assert sorted(u["user"] for u in users) == sorted(nsids)
    assert all(u["status"] == "complete" and u["photos_ok"] == 12 for u in users)
    report = audit(Workspace(tmp_path / "ws"), valid_refs=5)
    assert report.statuses["rejected"] >= 1 and not [p for p in report.problems if "reference" in p]


def test_discover_finds_owners_with_enough_eligible_photos(corpus, tmp_path):
    folder, nsids = corpus
    with ReplayServer(folder, api_key=KEY) as server:
        args = crawl_args(server, tmp_path / "ws", users_file(tmp_path, nsids))
        args[args.index("--users"):args.index("--users") + 2] = ["--discover"]
        result = CliRunner().invoke(cli, args + ["--num-users", "2"])
        methods = server.stats["methods"]
    assert result.exit_code == 0, result.output
    assert methods.get("flickr.photos.search", 0) >= 1
    users = [json.loads(line) for line in (tmp_path / "ws/manifests/flickr-users.jsonl").read_text().splitlines()]
    assert len(users) == 2 and all(u["status"] == "complete" and u["user"] in nsids for u in users)


def test_failed_downloads_and_an_empty_user_file_exit_1_and_a_rerun_finishes(corpus, tmp_path):
    from pipeline.replay.faults import FaultSpec

    folder, nsids = corpus
    pie = str(Path(sys.executable).with_name("pie"))
    people = users_file(tmp_path, nsids[:2])
    with ReplayServer(folder, api_key=KEY, faults="img:500=1.0", seed=2) as server:
        args = [a for a in crawl_args(server, tmp_path / "ws", people, "--num-users", "2") if a != "-q"]
        failed = subprocess.run([pie, *args, "--attempts", "2"], capture_output=True, text=True, timeout=300)
        assert failed.returncode == 1
        assert "0 users could not be listed and 2 are short after failed downloads; rerun the same command" \
            in failed.stderr
        server.faults = FaultSpec.none()
        rerun = subprocess.run([pie, *args], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "users 2 complete" in rerun.stdout
        empty = subprocess.run([pie, *crawl_args(server, tmp_path / "ws", users_file(tmp_path, ["# nobody"]))],
                               capture_output=True, text=True, timeout=300)
    assert empty.returncode == 1 and "users.txt: no users" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1


def crawl_until_a_photo_is_kept(server, root: Path, users: Path, *flags: str, **popen) -> subprocess.Popen:
    """The installed ``pie crawl`` (2 downloads in flight) in a subprocess, returned once a photo is on disk."""
    pie = str(Path(sys.executable).with_name("pie"))
    process = subprocess.Popen([pie, *crawl_args(server, root, users), "--concurrency", "2", *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "NO_PROXY": "127.0.0.1"}, **popen)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(root.glob("flickr/*/*.jpg")):
        time.sleep(0.02)
    return process


def test_ctrl_c_stops_the_crawl_and_its_download_processes_and_a_rerun_finishes(corpus, tmp_path):
    folder, nsids = corpus
    users = users_file(tmp_path, nsids)
    with ReplayServer(folder, api_key=KEY, faults="img:slow=0.5,slow_seconds=0.3", seed=5) as server:
        root = tmp_path / "ws"
        process = crawl_until_a_photo_is_kept(server, root, users, "--check-workers", "2", start_new_session=True)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert download_processes(workers) == 2
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole process group
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr, stderr
        assert not psutil.wait_procs(workers, timeout=5)[1]
        result = CliRunner().invoke(cli, crawl_args(server, root, users))
    assert result.exit_code == 0, result.output
    assert audit(Workspace(root)).ok
    assert not [path for path in root.rglob("*") if ".part-" in path.name]


def test_a_download_process_that_dies_stops_the_crawl_with_one_line_and_a_rerun_finishes(corpus, tmp_path):
    folder, nsids = corpus
    users = users_file(tmp_path, nsids)
    with ReplayServer(folder, api_key=KEY, faults="img:slow=0.5,slow_seconds=0.3", seed=6) as server:
        root = tmp_path / "ws"
        process = crawl_until_a_photo_is_kept(server, root, users, "--check-workers", "1")
        checker, = [child for child in psutil.Process(process.pid).children(recursive=True)
                    if "spawn_main" in " ".join(child.cmdline())]
        checker.kill()  # as the kernel's out-of-memory killer would
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1
        assert stderr.strip().splitlines() == ["Error: a process downloading and checking images died (out of memory?); "
                                               "rerun the same command to resume"]
        result = CliRunner().invoke(cli, crawl_args(server, root, users))
    assert result.exit_code == 0, result.output
    assert audit(Workspace(root)).ok
