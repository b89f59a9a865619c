"""The Flickr replay server answers the real flickrapi client like Flickr does.

Loopback requests bypass proxies: ``tests/conftest.py`` sets ``NO_PROXY``.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import flickrapi
import numpy as np
import pytest
import requests
from PIL import Image, UnidentifiedImageError
from skimage import data

from pipeline.replay.server import ReplayServer
from pipeline.replay.api import paginate, paging_arguments
from pipeline.replay.corpus import SIZES_BY_EXTRA, load_corpus
from pipeline.replay.faults import KINDS, FaultSpec

KEY, SECRET = "0123456789abcdef0123456789abcdef", "fedcba9876543210"
ALICE, BOB, GONE, GROUP = "11111111@N01", "22222222@N02", "33333333@N03", "44444444@N04"
ECHO = {"method": "flickr.test.echo", "format": "json", "nojsoncallback": "1"}


def _photo(image: np.ndarray, longest: int) -> Image.Image:
    picture = Image.fromarray(image)
    scale = longest / max(picture.size)
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS)


def _write(folder: Path, photo_id: str, picture: Image.Image, sidecar: dict | None = None, **save) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    picture.save(folder / f"{photo_id}.{save.pop('extension', 'jpg')}", **save)
    if sidecar is not None:
        (folder / f"{photo_id}.json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """Three users (one deleted), real photos at 700 and 300 px, one group, one stray folder."""
    root = tmp_path_factory.mktemp("served")
    alice, bob, gone = root / ALICE, root / BOB, root / GONE
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:06:22 16:47:55"
    _write(alice, "1001", _photo(data.astronaut(), 700),
           {"title": "Astronaut portrait", "license": 4, "tags": ["space", "Portrait"],
            "date_taken": "2018-01-02 03:04:05", "date_upload": 1_600_000_300}, quality=92)
    _write(alice, "1002", _photo(data.coffee(), 700), {"license": "9", "date_upload": 1_600_000_200},
           quality=92, exif=exif)
    _write(alice, "1003", _photo(data.chelsea(), 300), {"title": "Chelsea the cat", "license": 0,
                                                        "date_upload": "2020-09-13 12:20:00"}, quality=92)
    (alice / "user.json").write_text(json.dumps({"username": "alice", "realname": "Alice Example",
                                                 "path_alias": "alice_astro", "location": "Tokyo"}))
    _write(bob, "2001", _photo(data.rocket(), 700), {"license": 4, "date_upload": 1_600_000_400}, extension="png")
    _write(bob, "2002", _photo(data.camera(), 300), {"license": 11, "date_upload": 1_600_000_050}, quality=92)
    _write(bob, "2003", _photo(data.chelsea(), 120), {"ispublic": 0, "date_upload": 1_600_000_060})
    _write(bob, "2004", _photo(data.coffee(), 120),
           {"date_upload": 1_600_000_070, "override": {"id": "../../etc/passwd", "server": 7, "farm": "x"}})
    (bob / "user.json").write_text(json.dumps({"username": "Bob"}))
    _write(gone, "3001", _photo(data.astronaut(), 120), {"date_upload": 1_600_000_500})
    (gone / "user.json").write_text(json.dumps({"username": "gone", "deleted": True}))
    (root / "not-a-user").mkdir()
    (root / "groups.json").write_text(json.dumps({GROUP: {"name": "Cats and coffee", "photos": [
        f"{ALICE}/1002", f"{ALICE}/1003", f"{BOB}/2002", f"{BOB}/9999"]}}))
    return root


@pytest.fixture(scope="module")
def server(served):
    with ReplayServer(served, api_key=KEY) as replay:
        yield replay


@pytest.fixture()
def flickr(server):
    client = flickrapi.FlickrAPI(KEY, SECRET, format="parsed-json", store_token=False, timeout=10)
    client.REST_URL = server.rest_url
    return client


def _entries(reply: dict) -> dict[str, dict]:
    return {entry["id"]: entry for entry in reply["photos"]["photo"]}


# --------------------------------------------------------------------------- the folder


def test_folder_is_indexed_with_warnings_for_strays(served, caplog):
    with caplog.at_level(logging.WARNING, logger="pie.replay"):
        corpus = load_corpus(served)
    assert set(corpus.users) == {ALICE, BOB, GONE}
    assert corpus.users[ALICE].photo_ids == ("1001", "1002", "1003")
    assert (corpus.photos["1002"].width, corpus.photos["1002"].height) == Image.open(served / ALICE / "1002.jpg").size
    assert corpus.groups[GROUP].photo_ids == ("1002", "1003", "2002")
    assert "not-a-user" in caplog.text
    assert f"{BOB}/9999" in caplog.text


def test_defaults_are_deterministic_and_flickr_shaped(served):
    first, second = load_corpus(served).photos["2002"], load_corpus(served).photos["2002"]
    assert first == second
    assert re.fullmatch(r"[0-9a-f]{10}", first.secret) and re.fullmatch(r"\d{2,5}", first.server)
    assert first.original_secret != first.secret
    assert first.secret_for(SIZES_BY_EXTRA["k"]) not in (first.secret, first.original_secret)
    assert load_corpus(served).photos["1002"].date_taken == "2019-06-22 16:47:55"  # from EXIF


def test_invalid_sidecar_names_file_and_field(tmp_path):
    _write(tmp_path / ALICE, "5", _photo(data.coffee(), 64), {"license": 99})
    with pytest.raises(ValueError, match=r"5\.json: license 99"):
        load_corpus(tmp_path)


# --------------------------------------------------------------------------- REST methods


def test_echo_returns_the_arguments(flickr):
    reply = flickr.test.echo(foo="bar")
    assert reply["stat"] == "ok"
    assert reply["foo"] == {"_content": "bar"}
    assert reply["method"] == {"_content": "flickr.test.echo"}


def test_public_photos_page_through_newest_first(flickr):
    pages = [flickr.people.getPublicPhotos(user_id=ALICE, per_page=2, page=page) for page in (1, 2, 3)]
    assert [page["photos"]["page"] for page in pages] == [1, 2, 3]
    assert {page["photos"]["pages"] for page in pages} == {"2"}
    assert {page["photos"]["total"] for page in pages} == {"3"}
    ids = [entry["id"] for page in pages[:2] for entry in page["photos"]["photo"]]
    assert ids == ["1001", "1002", "1003"]  # upload dates descending
    assert pages[2]["photos"]["photo"] == pages[1]["photos"]["photo"]  # past the last page it repeats


def test_list_types_follow_flickr_quirks(flickr):
    reply = flickr.people.getPublicPhotos(
        user_id=ALICE, extras="url_z,url_o,o_dims,license,date_taken,date_upload,owner_name,tags,media,"
                              "original_format,last_update,path_alias")
    photos = reply["photos"]
    assert isinstance(photos["page"], int) and isinstance(photos["perpage"], int)
    assert isinstance(photos["pages"], str) and isinstance(photos["total"], str)
    entry = _entries(reply)["1001"]
    for name in ("id", "owner", "secret", "server", "license", "o_width", "o_height", "dateupload",
                 "height_z", "height_o", "lastupdate", "datetakenunknown"):
        assert isinstance(entry[name], str), name
    for name in ("farm", "width_z", "width_o", "ispublic", "datetakengranularity"):
        assert isinstance(entry[name], int), name
    assert entry["license"] == "4" and entry["ownername"] == "alice" and entry["pathalias"] == "alice_astro"
    assert entry["tags"] == "space portrait" and entry["media"] == "photo"
    assert entry["datetaken"] == "2018-01-02 03:04:05" and entry["dateupload"] == "1600000300"
    assert (entry["o_width"], entry["o_height"]) == ("700", "700")
    assert entry["originalformat"] == "jpg"


def test_url_sizes_exist_only_when_the_original_is_large_enough(flickr, served):
    entries = _entries(flickr.people.getPublicPhotos(user_id=ALICE, extras="url_z,url_c,url_s,url_m,url_o,url_q"))
    for photo_id, entry in entries.items():
        longest = max(Image.open(served / ALICE / f"{photo_id}.jpg").size)
        assert ("url_z" in entry) == (longest >= 640)
        assert "url_c" not in entry  # no original reaches 800 px
        assert "url_o" in entry
    big = entries["1001"]
    assert big["url_s"].endswith("_m.jpg") and re.search(r"/1001_[0-9a-f]{10}\.jpg$", big["url_m"])
    picture = Image.open(io.BytesIO(requests.get(big["url_z"], timeout=10).content))
    assert picture.format == "JPEG" and max(picture.size) == 640 == big["width_z"]
    square = Image.open(io.BytesIO(requests.get(big["url_q"], timeout=10).content))
    assert square.size == (150, 150)
    original = requests.get(big["url_o"], timeout=10)
    assert original.content == (served / ALICE / "1001.jpg").read_bytes()
    assert original.headers["Content-Type"] == "image/jpeg"
    assert int(original.headers["Content-Length"]) == len(original.content)


def test_image_host_serves_small_originals_unchanged_and_refuses_bad_secrets(server, served):
    api, photo = server.api, server.corpus.photos["1003"]
    z_url = api.image_url(photo, SIZES_BY_EXTRA["z"])
    assert requests.get(z_url, timeout=10).content == (served / ALICE / "1003.jpg").read_bytes()
    assert requests.get(z_url.replace(photo.secret, "0" * 10), timeout=10).status_code == 404
    assert requests.get(z_url.replace("1003_", "7777_"), timeout=10).status_code == 404
    k_with_main_secret = re.sub(r"_z\.jpg$", "_k.jpg", z_url)
    assert requests.get(k_with_main_secret, timeout=10).status_code == 404  # k has its own secret
    assert requests.get(api.image_url(photo, SIZES_BY_EXTRA["k"]), timeout=10).status_code == 200
    head = requests.head(z_url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == (served / ALICE / "1003.jpg").stat().st_size


def test_png_originals_keep_their_format_and_sizes_are_jpeg(flickr, served):
    entry = _entries(flickr.people.getPublicPhotos(user_id=BOB, extras="url_o,url_l,original_format"))["2001"]
    assert entry["originalformat"] == "png" and entry["url_o"].endswith("_o.png")
    original = requests.get(entry["url_o"], timeout=10)
    assert original.headers["Content-Type"] == "image/png"
    assert original.content == (served / BOB / "2001.png").read_bytes()
    assert "url_l" not in entry
    large = requests.get(entry["url_o"].replace(f"_{entry['originalsecret']}_o.png", f"_{entry['secret']}_b.jpg"),
                         timeout=10)
    picture = Image.open(io.BytesIO(large.content))
    assert picture.format == "JPEG" and picture.size == Image.open(served / BOB / "2001.png").size


def test_get_sizes_lists_the_sizes_the_original_allows(flickr):
    sizes = flickr.photos.getSizes(photo_id="1001")["sizes"]["size"]
    labels = [size["label"] for size in sizes]
    assert labels == ["Square", "Large Square", "Thumbnail", "Small", "Small 320", "Small 400", "Medium",
                      "Medium 640", "Original"]
    original = sizes[-1]
    assert (original["width"], original["height"]) == (700, 700)
    assert sizes[7]["source"].endswith("_z.jpg") and "/sizes/z/" in sizes[7]["url"]
    picture = Image.open(io.BytesIO(requests.get(sizes[3]["source"], timeout=10).content))
    assert picture.size == (sizes[3]["width"], sizes[3]["height"])


def test_get_info_describes_the_photo(flickr):
    photo = flickr.photos.getInfo(photo_id="1001")["photo"]
    assert photo["owner"]["nsid"] == ALICE and photo["owner"]["path_alias"] == "alice_astro"
    assert photo["title"] == {"_content": "Astronaut portrait"}
    assert photo["license"] == "4" and photo["dates"]["taken"] == "2018-01-02 03:04:05"
    assert [tag["raw"] for tag in photo["tags"]["tag"]] == ["space", "portrait"]
    assert photo["urls"]["url"][0]["_content"] == "https://www.flickr.com/photos/alice_astro/1001/"


def test_private_photos_need_their_secret(flickr, server):
    assert "2003" not in _entries(flickr.people.getPublicPhotos(user_id=BOB))
    with pytest.raises(flickrapi.FlickrError) as caught:
        flickr.photos.getInfo(photo_id="2003")
    assert caught.value.code == 1
    secret = server.corpus.photos["2003"].secret
    assert flickr.photos.getInfo(photo_id="2003", secret=secret)["photo"]["visibility"]["ispublic"] == 0


def test_licenses_are_the_seventeen_flickr_ids(flickr):
    licenses = flickr.photos.licenses.getInfo()["licenses"]["license"]
    assert [entry["id"] for entry in licenses] == list(range(17))
    names = {entry["id"]: entry["name"] for entry in licenses}
    assert names[0] == "All Rights Reserved" and names[4] == "CC BY 2.0" and names[16] == "CC BY-NC-ND 4.0"


def test_people_lookups(flickr):
    assert flickr.people.findByUsername(username="ALICE")["user"]["nsid"] == ALICE
    by_alias = flickr.urls.lookupUser(url="https://www.flickr.com/photos/alice_astro/")["user"]
    assert by_alias == {"id": ALICE, "username": {"_content": "alice"}}
    assert flickr.urls.lookupUser(url=f"https://www.flickr.com/people/{BOB}/")["user"]["id"] == BOB
    person = flickr.people.getInfo(user_id=ALICE)["person"]
    assert person["realname"] == {"_content": "Alice Example"}
    assert person["photos"]["count"] == {"_content": 3}
    assert person["photosurl"] == {"_content": "https://www.flickr.com/photos/alice_astro/"}
    for call, code in ((lambda: flickr.people.findByUsername(username="nobody"), 1),
                       (lambda: flickr.urls.lookupUser(url="https://www.flickr.com/photos/nobody/"), 1),
                       (lambda: flickr.people.getInfo(user_id=GONE), 5),
                       (lambda: flickr.people.getPublicPhotos(user_id=GONE), 5),
                       (lambda: flickr.people.getPublicPhotos(user_id="99999999@N09"), 1)):
        with pytest.raises(flickrapi.FlickrError) as caught:
            call()
        assert caught.value.code == code


def test_search_filters_sorts_and_needs_a_limit(flickr):
    licensed = flickr.photos.search(user_id=ALICE, license="4,9", extras="license")
    assert {entry["id"]: entry["license"] for entry in licensed["photos"]["photo"]} == {"1001": "4", "1002": "9"}
    assert [e["id"] for e in flickr.photos.search(text="ASTRONAUT portrait")["photos"]["photo"]] == ["1001"]
    oldest_first = flickr.photos.search(user_id=ALICE, sort="date-posted-asc")["photos"]["photo"]
    assert [entry["id"] for entry in oldest_first] == ["1003", "1002", "1001"]
    recent = flickr.photos.search(min_upload_date="1600000250")["photos"]["photo"]
    assert {entry["id"] for entry in recent} == {"1001", "2001"}  # 3001's owner is deleted
    with pytest.raises(flickrapi.FlickrError) as caught:
        flickr.photos.search(license="4")
    assert caught.value.code == 3


def test_search_reaches_only_the_first_4000_results():
    items = list(range(4500))
    last = paginate(items, 8, 500, result_cap=4000)
    beyond = paginate(items, 9, 500, result_cap=4000)
    assert (beyond.total, beyond.pages, beyond.page) == (4500, 9, 9)
    assert beyond.items == last.items == list(range(3500, 4000))
    uneven = paginate(items, 20, 300, result_cap=4000)
    assert (uneven.pages, uneven.items) == (15, list(range(3900, 4000)))
    assert paging_arguments({"per_page": "9000", "page": "0"}) == (1, 500)
    assert paging_arguments({"per_page": "abc"}) == (1, 100)


def test_group_pool_lists_members_with_owner_and_date(flickr):
    pool = flickr.groups.pools.getPhotos(group_id=GROUP, extras="url_q")["photos"]
    assert [entry["id"] for entry in pool["photo"]] == ["1002", "1003", "2002"]
    assert pool["photo"][2]["ownername"] == "Bob" and pool["photo"][2]["dateadded"] == "1600000050"
    with pytest.raises(flickrapi.FlickrError) as caught:
        flickr.groups.pools.getPhotos(group_id="55555555@N05")
    assert caught.value.code == 1


def test_interestingness_ranks_public_photos(flickr, server):
    ranked = [entry["id"] for entry in flickr.interestingness.getList(per_page=50)["photos"]["photo"]]
    assert sorted(ranked) == sorted(["1001", "1002", "1003", "2001", "2002", "../../etc/passwd"])
    assert ranked == [entry["id"] for entry in flickr.interestingness.getList(per_page=50)["photos"]["photo"]]
    day = flickr.interestingness.getList(date="2020-09-13")["photos"]["photo"]
    assert {entry["id"] for entry in day} == {"1001", "1002", "1003", "2001", "2002", "../../etc/passwd"}
    assert flickr.interestingness.getList(date="2020-09-12")["photos"]["total"] == "0"
    with pytest.raises(flickrapi.FlickrError) as caught:
        flickr.interestingness.getList(date="13/09/2020")
    assert caught.value.code == 1


def test_override_injects_hostile_values_verbatim(flickr):
    entries = _entries(flickr.people.getPublicPhotos(user_id=BOB))
    assert sorted(entries) == ["../../etc/passwd", "2001", "2002"]
    hostile = entries["../../etc/passwd"]
    assert hostile["server"] == 7 and hostile["farm"] == "x" and hostile["owner"] == BOB


def test_wrong_key_unknown_method_and_static_base(flickr, server, served):
    stranger = flickrapi.FlickrAPI("someone-else", SECRET, format="parsed-json", store_token=False)
    stranger.REST_URL = server.rest_url
    with pytest.raises(flickrapi.FlickrError) as caught:
        stranger.test.echo()
    assert caught.value.code == 100
    with pytest.raises(flickrapi.FlickrError) as caught:
        flickr.photos.nonexistent()
    assert caught.value.code == 112
    unsigned = requests.get(server.rest_url, params={**ECHO, "api_key": KEY}, timeout=10).json()
    assert unsigned["stat"] == "ok"
    with ReplayServer(served, static_base="https://live.staticflickr.com/") as mirror:
        client = flickrapi.FlickrAPI(KEY, SECRET, format="parsed-json", store_token=False)
        client.REST_URL = mirror.rest_url
        entry = _entries(client.people.getPublicPhotos(user_id=ALICE, extras="url_z"))["1001"]
    assert re.fullmatch(r"https://live\.staticflickr\.com/\d{2,5}/1001_[0-9a-f]{10}_z\.jpg", entry["url_z"])


def test_etree_format_parses_lists_and_errors(server):
    client = flickrapi.FlickrAPI(KEY, SECRET, format="etree", store_token=False)
    client.REST_URL = server.rest_url
    rsp = client.people.getPublicPhotos(user_id=ALICE, per_page=2, extras="url_z,license")
    photos = rsp.find("photos")
    assert (photos.get("page"), photos.get("pages"), photos.get("total")) == ("1", "2", "3")
    assert [photo.get("id") for photo in rsp.findall("*/photo")] == ["1001", "1002"]
    assert rsp.find("*/photo").get("url_z").endswith("_z.jpg") and rsp.find("*/photo").get("license") == "4"
    with pytest.raises(flickrapi.FlickrError) as caught:
        client.people.getPublicPhotos(user_id="99999999@N09")
    assert caught.value.code == 1


def test_jsonp_without_nojsoncallback(server):
    body = requests.post(server.rest_url, data={"method": "flickr.test.echo", "format": "json", "api_key": KEY},
                         timeout=10).text
    assert body.startswith("jsonFlickrApi(") and body.endswith(")")
    assert json.loads(body[len("jsonFlickrApi("):-1])["stat"] == "ok"


def test_stats_count_and_log_lines_carry_no_authorization(flickr, server, caplog):
    before = server.stats
    with caplog.at_level(logging.DEBUG, logger="pie.replay"):
        flickr.test.echo()
        requests.get(server.rest_url.replace("/services/rest/", "/photos/x/1/"), timeout=10)
    after = server.stats
    assert after["requests"]["api"] == before["requests"]["api"] + 1
    assert after["requests"].get("other", 0) == before["requests"].get("other", 0) + 1
    assert after["methods"]["flickr.test.echo"] == before["methods"].get("flickr.test.echo", 0) + 1
    lines = [record.getMessage() for record in caplog.records if record.name == "pie.replay"]
    assert any("flickr.test.echo" in line for line in lines)
    assert not any("oauth" in line.lower() or KEY in line for line in lines)


def test_binding_is_loopback_only(served):
    for host in ("0.0.0.0", "192.168.1.10", "example.com"):
        with pytest.raises(ValueError, match="loopback"):
            ReplayServer(served, host=host)


# --------------------------------------------------------------------------- faults


def test_fault_spec_parses_the_documented_string_and_names_bad_items():
    spec = FaultSpec.parse("api:500=0.05,api:429=0.05,api:105=0.02,api:0=0.02,api:slow=0.05,api:malformed=0.02,"
                           "img:500=0.05,img:429=0.05,img:truncate=0.05,img:html=0.05,img:slow=0.02,img:timeout=0.01")
    assert spec.rates[("img", "html")] == 0.05 and spec.active
    assert FaultSpec.parse(str(spec)) == spec
    assert not FaultSpec.none().active and FaultSpec.parse("") == FaultSpec.none()
    for bad in ("api:html=0.1", "disk:500=0.1", "api:500=2", "api:500", "img:429=x", "slow_seconds=900"):
        with pytest.raises(ValueError, match=re.escape(bad.split("=")[0])):
            FaultSpec.parse(f"api:503=0.1,{bad}")
    with pytest.raises(ValueError, match="more than 1"):
        FaultSpec.parse("api:500=0.6,api:429=0.6")


def test_fault_draws_are_seeded_and_retries_get_fresh_draws():
    spec = FaultSpec.parse("api:500=0.5")
    draws = [spec.pick("api", seed=3, request_key="k", attempt=attempt) for attempt in range(40)]
    assert draws == [spec.pick("api", seed=3, request_key="k", attempt=attempt) for attempt in range(40)]
    assert set(draws) == {"500", None}
    assert draws != [spec.pick("api", seed=4, request_key="k", attempt=attempt) for attempt in range(40)]


def test_servers_with_one_seed_fail_the_same_requests(served):
    def statuses(seed: int) -> list[int]:
        with ReplayServer(served, faults="api:503=0.5", seed=seed) as replay:
            return [requests.post(replay.rest_url, data={**ECHO, "n": str(n % 5)}, timeout=10).status_code
                    for n in range(30)]

    first = statuses(11)
    assert first == statuses(11)
    assert set(first) == {200, 503}
    assert first != statuses(12)


def _fault_server(served: Path, spec: str) -> ReplayServer:
    return ReplayServer(served, faults=FaultSpec.parse(f"{spec},slow_seconds=0.6,timeout_seconds=0.6"))


@pytest.mark.parametrize("kind", ["500", "502", "503", "429"])
@pytest.mark.parametrize("target", ["api", "img"])
def test_status_faults_answer_html(served, target, kind):
    with _fault_server(served, f"{target}:{kind}=1") as replay:
        photo = replay.corpus.photos["1001"]
        url = replay.rest_url if target == "api" else replay.api.image_url(photo, SIZES_BY_EXTRA["z"])
        reply = requests.post(url, data=ECHO, timeout=10) if target == "api" else requests.get(url, timeout=10)
        assert reply.status_code == int(kind)
        assert reply.headers["Content-Type"].startswith("text/html") and b"<html>" in reply.content
        assert replay.stats["faults"] == {f"{target}:{kind}": 1}


@pytest.mark.parametrize("code", ["105", "0"])
def test_transient_api_errors_are_stat_fail(served, code):
    with _fault_server(served, f"api:{code}=1") as replay:
        reply = requests.post(replay.rest_url, data=ECHO, timeout=10)
        assert reply.status_code == 200 and reply.json()["code"] == int(code) and reply.json()["stat"] == "fail"
        client = flickrapi.FlickrAPI(KEY, SECRET, format="parsed-json", store_token=False)
        client.REST_URL = replay.rest_url
        with pytest.raises(flickrapi.FlickrError) as caught:
            client.test.echo()
        assert caught.value.code == int(code)


def test_throttling_reaches_flickrapi_as_status_error(served):
    with _fault_server(served, "api:429=1") as replay:
        client = flickrapi.FlickrAPI(KEY, SECRET, format="parsed-json", store_token=False)
        client.REST_URL = replay.rest_url
        with pytest.raises(flickrapi.FlickrError, match="Status code 429") as caught:
            client.test.echo()
        assert caught.value.code is None


def test_malformed_api_reply_does_not_parse(served):
    with _fault_server(served, "api:malformed=1") as replay:
        reply = requests.post(replay.rest_url, data=ECHO, timeout=10)
        assert reply.status_code == 200 and int(reply.headers["Content-Length"]) == len(reply.content)
        with pytest.raises(ValueError):
            json.loads(reply.content)


@pytest.mark.parametrize("target", ["api", "img"])
def test_truncated_bodies_break_off(served, target):
    with _fault_server(served, f"{target}:truncate=1") as replay:
        url = replay.rest_url if target == "api" else replay.api.image_url(replay.corpus.photos["1001"],
                                                                             SIZES_BY_EXTRA["o"])
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.post(url, data=ECHO, timeout=10) if target == "api" else requests.get(url, timeout=10)


def test_html_instead_of_jpeg(served):
    with _fault_server(served, "img:html=1") as replay:
        reply = requests.get(replay.api.image_url(replay.corpus.photos["1001"], SIZES_BY_EXTRA["z"]), timeout=10)
        assert reply.status_code == 200 and reply.headers["Content-Type"] == "image/jpeg"
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(reply.content))


@pytest.mark.parametrize("kind", ["slow", "timeout"])
@pytest.mark.parametrize("target", ["api", "img"])
def test_delays_outlast_a_short_client_timeout(served, target, kind):
    assert kind in KINDS[target]
    with _fault_server(served, f"{target}:{kind}=1") as replay:
        url = replay.rest_url if target == "api" else replay.api.image_url(replay.corpus.photos["1001"],
                                                                             SIZES_BY_EXTRA["z"])
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(url, data=ECHO, timeout=0.05) if target == "api" else requests.get(url, timeout=0.05)
        patient = requests.post(url, data=ECHO, timeout=10) if target == "api" else requests.get(url, timeout=10)
        assert patient.status_code == 200 and len(patient.content) == int(patient.headers["Content-Length"])
        assert set(replay.stats["faults"]) == {f"{target}:{kind}"}
