"""The crawl's parts on their own: budget, splits, listings, user lists, duplicates, config."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import cli, option_names
from pipeline.config import ConfigError, load_defaults
from pipeline.stages.crawl import splits
from pipeline.stages.crawl.budget import ApiBudget
from pipeline.stages.crawl.dedupe import DuplicateIndex, perceptual_hash
from pipeline.stages.crawl.listing import ReplyError, candidate_from_entry, candidate_from_url, parse_photo_page, \
    rewrite_for_mirror
from pipeline.stages.crawl.users import UserListError, read_crawl_list, read_user_file


class FakeClock:
    def __init__(self):
        self.now = 1_000_000.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_budget_never_overspends_an_hour_and_survives_a_restart(tmp_path):
    clock = FakeClock()
    state = tmp_path / "budget.json"
    budget = ApiBudget(state, calls_per_hour=120, burst=10, clock=clock.time, sleep=clock.sleep)
    start = clock.now
    for _ in range(10):
        budget.acquire()
    assert clock.now == start  # the burst is free
    restarted = ApiBudget(state, calls_per_hour=120, burst=10, clock=clock.time, sleep=clock.sleep)
    restarted.acquire()  # the restart does not get a fresh burst
    assert clock.now > start
    for _ in range(108):
        restarted.acquire()
    # 119 calls: 10 burst + 109 at (120 - 10) / 3600 per second -> about 3,567 s
    assert clock.now - start == pytest.approx(109 * 3600 / 110, rel=0.01)
    assert clock.now - start < 3600 and 10 + 109 <= 120


def test_budget_is_shared_through_its_file(tmp_path):
    clock = FakeClock()
    one = ApiBudget(tmp_path / "b.json", calls_per_hour=3600, burst=5, clock=clock.time, sleep=clock.sleep)
    two = ApiBudget(tmp_path / "b.json", calls_per_hour=3600, burst=5, clock=clock.time, sleep=clock.sleep)
    for _ in range(3):
        one.acquire()
        two.acquire()
    assert clock.now > 1_000_000.0  # six calls exceed the shared burst of five
    assert one.calls == two.calls == 3


def test_user_split_is_stable_and_about_ten_percent():
    nsids = [f"{n}@N01" for n in range(100_000, 104_000)]
    valid = [nsid for nsid in nsids if splits.user_split(nsid) == "valid"]
    assert 0.08 < len(valid) / len(nsids) < 0.12
    assert [splits.user_split(nsid) for nsid in valid] == ["valid"] * len(valid)
    references = splits.reference_photos("1@N01", [str(i) for i in range(100)])
    assert len(references) == 20
    assert references == splits.reference_photos("1@N01", [str(i) for i in reversed(range(100))])


def entry(**changes):
    value = {"id": "51741674882", "owner": "193092213@N08", "secret": "d3eff8c74b", "server": "65535",
             "farm": 66, "title": "t", "license": "4", "media": "photo", "ownername": "o",
             "datetaken": "2021-01-01 00:00:00",
             "url_z": "https://live.staticflickr.com/65535/51741674882_d3eff8c74b_z.jpg",
             "width_z": 640, "height_z": "427"}
    value.update(changes)
    return value


def test_candidate_from_a_valid_entry():
    candidate = candidate_from_entry(entry(), "z", user="193092213@N08")
    assert candidate.photo_id == "51741674882" and candidate.license.name == "CC BY 2.0"
    assert candidate.page_url.endswith("/193092213@N08/51741674882/")


@pytest.mark.parametrize("changes,match", [
    ({"id": "../../etc/passwd"}, "photo id"),
    ({"owner": "../x"}, "NSID"),
    ({"owner": "5@N01"}, "belongs to"),
    ({"secret": "../.."}, "secret"),
    ({"server": "1/2"}, "server"),
    ({"url_z": None}, "no url_z"),
    ({"url_z": "file:///etc/passwd"}, "http"),
    ({"url_z": "https://live.staticflickr.com/65535/999_d3eff8c74b_z.jpg"}, "does not name"),
])
def test_hostile_entries_are_refused(changes, match):
    with pytest.raises((ReplyError, ValueError), match=match):
        candidate_from_entry(entry(**changes), "z", user="193092213@N08")


@pytest.mark.parametrize("reply", [{}, {"photos": []}, {"photos": {"photo": {}}}, {"photos": {"pages": "x"}}])
def test_malformed_list_replies(reply):
    with pytest.raises(ReplyError):
        parse_photo_page(reply)


def test_list_urls_and_mirror():
    url = "https://live.staticflickr.com/65535/51741674882_d3eff8c74b_z.jpg"
    candidate = candidate_from_url("193092213@N08", url)
    assert (candidate.server, candidate.secret, candidate.size) == ("65535", "d3eff8c74b", "z")
    assert rewrite_for_mirror(url, "http://127.0.0.1:9/static/") == \
        "http://127.0.0.1:9/static/65535/51741674882_d3eff8c74b_z.jpg"


def test_user_file(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("# users\n12037949754@N01\nhttps://www.flickr.com/photos/someone/\nsome name # comment\n"
                    "12037949754@N01\n")
    refs = read_user_file(path)
    assert [(ref.kind, ref.value) for ref in refs] == [
        ("nsid", "12037949754@N01"), ("url", "https://www.flickr.com/photos/someone/"), ("username", "some name")]
    path.write_text("https://example.com/evil\n")
    with pytest.raises(UserListError, match="users.txt:1"):
        read_user_file(path)


def test_crawl_lists_in_three_formats(tmp_path):
    urls = ["https://live.staticflickr.com/65535/1_ab_z.jpg"]
    (tmp_path / "l.json").write_text(json.dumps({"12@N01": urls}))
    (tmp_path / "l.csv").write_text("nsid,url\n12@N01," + urls[0] + "\n")
    assert read_crawl_list(tmp_path / "l.json") == read_crawl_list(tmp_path / "l.csv") == {"12@N01": urls}
    (tmp_path / "bad.json").write_text(json.dumps({"../x": urls}))
    with pytest.raises(UserListError, match="not an NSID"):
        read_crawl_list(tmp_path / "bad.json")
    (tmp_path / "bad.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(UserListError, match="refused pickle opcode"):
        read_crawl_list(tmp_path / "bad.pkl")


def test_duplicates_exact_and_near(photo):
    index = DuplicateIndex()
    first = perceptual_hash(photo)
    index.add("1@N01/1", "a" * 64, first)
    assert index.find("2@N01/2", "a" * 64, None).startswith("duplicate:")
    darker = (photo * 0.9).astype(np.uint8)
    assert index.find("2@N01/3", "b" * 64, perceptual_hash(darker)).startswith("near-duplicate:")
    other = np.ascontiguousarray(photo[:, ::-1])
    assert index.find("2@N01/4", "c" * 64, perceptual_hash(other)) is None
    assert index.find("1@N01/1", "a" * 64, first) is None  # a photo never duplicates itself


def test_config_defaults_and_secret_refusal(tmp_path):
    path = tmp_path / "pie.toml"
    path.write_text("[crawl]\nper-user = 5\n")
    assert load_defaults(path) == {"crawl": {"per_user": 5}}
    path.write_text("[crawl]\napi-secret = 'x'\n")
    with pytest.raises(ConfigError, match="must not be stored"):
        load_defaults(path)
    path.write_text("[crawl\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_defaults(path)
    assert load_defaults(tmp_path / "missing.toml") == {}


def test_config_names_are_checked_against_the_commands_options(tmp_path):
    path = tmp_path / "pie.toml"
    names = option_names(cli)
    path.write_text("quiet = true\n[crawl]\nper-user = 5\n[rules.list]\npresets = 'looks'\n")
    assert load_defaults(path, names) == {"quiet": True, "crawl": {"per_user": 5},
                                          "rules": {"list": {"presets_dir": "looks"}}}
    for text, message in [("[crawl]\nnum-user = 5\n", "[crawl] has no option 'num-user'; did you mean 'num-users'?"),
                          ("[crawlx]\nnum-users = 5\n", "the top level has no option 'crawlx'; did you mean 'crawl'?"),
                          ("[train-degrader]\nstep = 5\n", "[train-degrader] has no option 'step'; did you mean 'steps'?"),
                          ("[audit]\nzzz = 1\n", "[audit] has no option 'zzz'")]:
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_defaults(path, names)
        assert str(error.value) == f"{path}: {message}"


def test_an_unknown_config_key_is_one_line_and_exit_1_from_the_installed_script(tmp_path):
    (tmp_path / "pie.toml").write_text("[crawl]\nnum-user = 5\n")
    result = subprocess.run([str(Path(sys.executable).with_name("pie")), "--root", str(tmp_path), "audit"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'pie.toml'}: [crawl] has no option 'num-user'; did you mean 'num-users'?"]


def test_a_group_option_after_the_command_says_where_it_goes(tmp_path):
    pie = str(Path(sys.executable).with_name("pie"))
    misplaced = subprocess.run([pie, "audit", "--root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert misplaced.returncode == 2
    assert misplaced.stderr.strip().splitlines()[-1] == (
        "Error: --root is an option of pie itself: put it before the command, as in 'pie --root ... audit ...'")
    nested = subprocess.run([pie, "rules", "list", "-q"], capture_output=True, text=True, timeout=120)
    assert nested.returncode == 2 and "'pie -q ... rules list ...'" in nested.stderr
    unknown = subprocess.run([pie, "audit", "--bogus"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "No such option '--bogus'" in unknown.stderr


def test_audit_of_a_missing_or_empty_workspace_fails(tmp_path):
    pie = str(Path(sys.executable).with_name("pie"))
    missing = subprocess.run([pie, "--root", str(tmp_path / "typo"), "audit"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "no such workspace" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "empty" / "manifests").mkdir(parents=True)
    empty = subprocess.run([pie, "--root", str(tmp_path / "empty"), "audit"], capture_output=True, text=True,
                           timeout=120)
    assert empty.returncode == 1 and "no manifest" in empty.stderr


# Downloading and checking in worker processes ------------------------------------------------------


def _jpeg(seed: int, size: tuple[int, int] = (300, 200)) -> bytes:
    from pipeline.imageio import encode_jpeg

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)
    return encode_jpeg(np.kron(coarse, np.ones((20, 20, 1), dtype=np.uint8)), quality=90)


@pytest.fixture
def body_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving the files of a folder; yields (folder, base URL)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_pool_gives_the_in_thread_outcomes_and_writes_the_temporaries(tmp_path, body_server):
    from manifests.files import PARTIAL_MARK
    from pipeline.imageio import decode_image
    from pipeline.stages.crawl.download import Downloader
    from pipeline.stages.crawl.fetchpool import FetchPool

    folder, base = body_server
    bodies = [_jpeg(seed) for seed in range(4)] + [b"<html>busy</html>", _jpeg(9, size=(120, 80))]
    for index, body in enumerate(bodies):
        (folder / f"{index}.jpg").write_bytes(body)
    urls = [f"{base}/{index}.jpg" for index in range(len(bodies))] + [f"{base}/missing.jpg"]
    out_thread, out_pool = tmp_path / "thread", tmp_path / "pool"
    out_thread.mkdir(), out_pool.mkdir()
    options = dict(concurrency=4, per_host=4, min_side=100, timeout=5.0)
    with Downloader(**options) as downloader:
        in_thread = [downloader.submit(url, out_thread / f"{i}.jpg").result() for i, url in enumerate(urls)]
    with FetchPool(2, **options) as pool:
        futures = [pool.submit(url, out_pool / f"{i}.jpg") for i, url in enumerate(urls)]
        pooled = [future.result(timeout=60) for future in futures]
    assert [f.status for f in pooled] == ["ok"] * 4 + ["rejected", "rejected", "failed"]
    for body, mine, theirs in zip(bodies + [b""], in_thread, pooled):
        assert (mine.status, mine.sha256, mine.phash, mine.width, mine.height, mine.size, mine.reason) == \
               (theirs.status, theirs.sha256, theirs.phash, theirs.width, theirs.height, theirs.size, theirs.reason)
        if theirs.status == "ok":
            assert theirs.phash == perceptual_hash(decode_image(body).as_uint8()) and theirs.size == len(body)
            assert PARTIAL_MARK in theirs.temporary.name and theirs.temporary.read_bytes() == body
    assert sorted(path.name for path in out_pool.iterdir()) == sorted(f.temporary.name for f in pooled[:4])
    assert len({f.phash for f in pooled[:4]}) == 4


def test_a_failed_temporary_write_names_the_target(tmp_path, body_server):
    from pipeline.stages.crawl.fetchpool import FetchPool

    folder, base = body_server
    (folder / "1.jpg").write_bytes(_jpeg(1))
    with FetchPool(1, min_side=100) as pool:
        future = pool.submit(f"{base}/1.jpg", tmp_path / "nowhere" / "1.jpg")
        with pytest.raises(OSError, match="nowhere/1.jpg"):
            future.result(timeout=60)


def test_closing_the_pool_drops_the_downloads_not_started(tmp_path, body_server):
    from pipeline.stages.crawl.fetchpool import FetchPool

    folder, base = body_server
    (folder / "1.jpg").write_bytes(_jpeg(1))
    pool = FetchPool(1, concurrency=1, min_side=100)
    futures = [pool.submit(f"{base}/1.jpg", None) for _ in range(200)]
    assert futures[0].result(timeout=60).status == "ok"
    pool.close()
    assert all(future.done() for future in futures)
    assert any(future.cancelled() for future in futures)
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(f"{base}/1.jpg")


def test_downloader_futures_behave_like_thread_pool_futures(body_server):
    from pipeline.stages.crawl.download import Downloader

    folder, base = body_server
    (folder / "1.jpg").write_bytes(_jpeg(1))
    downloader = Downloader(concurrency=1, min_side=100)
    futures = [downloader.submit(f"{base}/1.jpg") for _ in range(100)]
    assert futures[-1].cancel()  # not started yet
    assert futures[0].result(timeout=60).status == "ok"
    assert not futures[0].cancel()  # finished
    downloader.close()
    assert all(future.done() for future in futures)
    assert futures[-1].cancelled() and any(future.cancelled() for future in futures[1:-1])
    assert all(future.result().status == "ok" for future in futures if not future.cancelled())


def test_a_failed_temporary_write_fails_the_downloaders_future(tmp_path, body_server):
    from pipeline.stages.crawl.download import Downloader

    folder, base = body_server
    (folder / "1.jpg").write_bytes(_jpeg(1))
    with Downloader(concurrency=2, min_side=100) as downloader:
        future = downloader.submit(f"{base}/1.jpg", tmp_path / "nowhere" / "1.jpg")
        with pytest.raises(OSError, match="nowhere/1.jpg"):
            future.result(timeout=60)


def test_the_fetch_pool_keeps_to_its_concurrency_across_processes():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.stages.crawl.fetchpool import FetchPool

    body = _jpeg(3)
    in_flight, most = [0], [0]
    lock = threading.Lock()

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            time.sleep(0.2)
            with lock:
                in_flight[0] -= 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FetchPool(3, concurrency=2, per_host=8, min_side=100) as pool:
            futures = [pool.submit(f"http://127.0.0.1:{server.server_address[1]}/{index}.jpg") for index in range(24)]
            assert [future.result(timeout=60).status for future in futures] == ["ok"] * 24
    finally:
        server.shutdown()
        server.server_close()
    assert most[0] == 2  # 3 with a share of 1 per process and no limit in all


def test_download_processes_start_with_sigint_blocked():
    """A Ctrl-C to the process group cannot interrupt a download process's imports with a traceback."""
    import signal

    import psutil

    from pipeline.stages.crawl.fetchpool import FetchPool

    with FetchPool(2) as pool:
        workers = [child for child in psutil.Process().children() if "spawn_main" in " ".join(child.cmdline())]
        blocked = []
        for worker in workers:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines())
            blocked.append(bool(int(status["SigBlk"], 16) & 1 << (signal.SIGINT - 1)))
        assert pool.submit("ftp://nowhere/x.jpg").result(timeout=60).status == "failed"
    assert blocked == [True, True]


_POOL_CHILD = """
import sys, time
from pipeline.stages.crawl.fetchpool import FetchPool
if __name__ == "__main__":
    pool = FetchPool(2, min_side=100)
    assert pool.submit(sys.argv[1]).result(timeout=60).status == "ok"
    print("ready", flush=True)
    time.sleep(60)
"""


def test_download_processes_exit_when_the_crawl_is_killed(tmp_path, body_server):
    import psutil

    folder, base = body_server
    (folder / "photo.jpg").write_bytes(_jpeg(2))
    script = tmp_path / "child.py"
    script.write_text(_POOL_CHILD)
    parent = subprocess.Popen([sys.executable, str(script), f"{base}/photo.jpg"], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        workers = [child for child in psutil.Process(parent.pid).children(recursive=True)
                   if "spawn_main" in " ".join(child.cmdline())]
        assert len(workers) == 2
    finally:
        parent.kill()
        parent.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_a_dead_download_process_fails_the_waiting_downloads(tmp_path, body_server):
    from concurrent.futures.process import BrokenProcessPool

    import psutil

    from pipeline.stages.crawl.fetchpool import FetchPool

    folder, base = body_server
    (folder / "1.jpg").write_bytes(_jpeg(1))
    with FetchPool(1, min_side=100) as pool:
        assert pool.submit(f"{base}/1.jpg").result(timeout=60).status == "ok"
        for child in psutil.Process().children():
            if "spawn_main" in " ".join(child.cmdline()):
                child.kill()
        waiting = pool.submit(f"{base}/1.jpg")
        with pytest.raises(BrokenProcessPool):
            waiting.result(timeout=30)


def test_user_folder_is_checked_once_and_links_out_of_the_workspace_are_refused(tmp_path):
    from manifests.ids import InvalidIdError
    from manifests.workspace import OutsideWorkspaceError, Workspace

    workspace = Workspace(tmp_path / "ws")
    folder = workspace.flickr_user_folder("12@N01")
    assert folder == workspace.flickr_photo("12@N01", "34").parent == workspace.root / "flickr" / "12@N01"
    with pytest.raises(InvalidIdError):
        workspace.flickr_user_folder("../12@N01")
    (workspace.root / "flickr").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (workspace.root / "flickr" / "13@N01").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutsideWorkspaceError):
        workspace.flickr_user_folder("13@N01")
    with pytest.raises(OutsideWorkspaceError):
        workspace.flickr_photo("13@N01", "1")
    assert workspace.relative(folder / "34.jpg") == "flickr/12@N01/34.jpg"
    assert Workspace(Path("/")).inside(tmp_path) == tmp_path.resolve()


def test_jpeg_fast_path_agrees_with_a_full_decode():
    """Size, orientation and rejections as decode_image; the pHash of the 1/8-scale decode near the full one's."""
    from PIL import Image
    from skimage import data

    from pipeline.imageio import decode_image, encode_jpeg, encode_png
    from pipeline.stages.crawl.dedupe import NEAR_DUPLICATE_BITS
    from pipeline.stages.crawl.imagecheck import _reduced_jpeg, check_image

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        body = encode_jpeg(getattr(data, name)(), quality=85)
        checked, full = check_image(body, name, 100), decode_image(body)
        assert _reduced_jpeg(body) is not None
        assert (checked.width, checked.height) == (full.width, full.height)
        assert (checked.phash ^ perceptual_hash(full.as_uint8())).bit_count() <= NEAR_DUPLICATE_BITS

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.fromarray(data.coffee()).save(buffer, "JPEG", exif=exif, quality=90)
    rotated = buffer.getvalue()
    checked, full = check_image(rotated, "r", 100), decode_image(rotated)
    assert (checked.width, checked.height) == (full.width, full.height) == (400, 600)
    assert (checked.phash ^ perceptual_hash(full.as_uint8())).bit_count() <= NEAR_DUPLICATE_BITS

    cut = rotated[: len(rotated) // 2]
    assert _reduced_jpeg(cut) is None
    with pytest.raises(Exception) as error:
        decode_image(cut, "cut")
    assert check_image(cut, "cut", 100).reason == str(error.value).split(": ", 1)[-1]
    png = encode_png(data.coffee())
    assert _reduced_jpeg(png) is None and check_image(png, "p", 100).phash == perceptual_hash(data.coffee())
    assert check_image(encode_jpeg(data.coffee()[:90]), "s", 100).status == "too-small"
