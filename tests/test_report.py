"""``pie report``: the offline page in headless Chromium, ground truth, ATTRIBUTION.csv and DATASET.md."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import status_fixtures
from html_page import PageParts, rendered
from manifests.workspace import Workspace
from pipeline.imageio import read_image
from pipeline.stages.report import write_report, write_report_files
from pipeline.stages.report.card import ATTRIBUTION_COLUMNS
from pipeline.stages.report.images import ground_truth_psnr
from pipeline.stages.status import flickr_photos

PIE = str(Path(sys.executable).with_name("pie"))

#: Appended to a copy of the page: what the browser measured, as JSON in <pre id=probe>.
PROBE = """<script>
window.addEventListener('load', () => {
  const root = document.documentElement;
  const clipped = (element) => {
    for (let node = element.parentElement; node; node = node.parentElement) {
      const overflow = getComputedStyle(node).overflowX;
      if (overflow === 'auto' || overflow === 'hidden' || overflow === 'scroll') return true;
    }
    return false;
  };
  const outside = [...document.querySelectorAll('body *')]
    .filter((element) => element.getBoundingClientRect().right > root.clientWidth + 0.5 && !clipped(element));
  const pairs = [...document.querySelectorAll('.pair')];
  const probe = document.createElement('pre');
  probe.id = 'probe';
  probe.textContent = JSON.stringify({
    images: document.images.length,
    broken: [...document.images].filter((image) => !(image.naturalWidth > 0)).length,
    scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, outside: outside.length,
    pairs: pairs.length,
    wrapped: pairs.filter((pair) => new Set([...pair.querySelectorAll('img')].map((i) => i.offsetTop)).size > 1).length,
    pairWidths: [...new Set(pairs.map((pair) => pair.getBoundingClientRect().width))],
  });
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    return status_fixtures.build(tmp_path_factory.mktemp("report") / "ws")


def _pie(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PIE, "--root", str(root), *args], capture_output=True, text=True, timeout=180)


def _render(page: Path, tmp_path: Path) -> PageParts:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    parsed = rendered(probed, tmp_path, "--window-size=1280,2000", "--virtual-time-budget=10000")
    assert parsed.probe, "the probe script did not run"
    return parsed


def test_the_page_renders_in_chromium_with_the_numbers_of_the_status(workspace, tmp_path):
    page = tmp_path / "report.html"
    result = _pie(workspace.root, "report", "--out", str(page), "--per-user", "5")
    assert result.returncode == 0, result.stderr
    assert "ground truth" in result.stdout
    status = json.loads(_pie(workspace.root, "status", "--json", "--users", "--per-user", "5").stdout)
    parsed = _render(page, tmp_path)
    probe = json.loads(parsed.probe)
    assert probe["images"] > 0 and probe["broken"] == 0
    assert 1200 < probe["clientWidth"] <= 1280
    assert probe["scrollWidth"] <= probe["clientWidth"]
    assert probe["outside"] == 0
    assert probe["pairs"] >= 5 and probe["wrapped"] == 0 and len(probe["pairWidths"]) == 1

    totals = dict(parsed.tables["totals"][1:])
    crawl = status["crawl"]
    assert int(totals["users"]) == crawl["users"]
    assert int(totals["users short"]) == crawl["users_by_state"]["short"]
    assert int(totals["users missing"]) == crawl["users_by_state"]["missing"]
    assert int(totals["photos kept"]) == crawl["photos"]["ok"]
    assert int(totals["pseudo originals"]) == status["degrade"]["degraded"]
    assert int(totals["shard pairs"]) == status["shards"]["totals"]["samples"]
    users = {row[0]: row for row in parsed.tables["users"][1:]}
    assert set(users) == set(crawl["per_user_detail"])
    for nsid, user in crawl["per_user_detail"].items():
        assert users[nsid][1:5] == [user["state"], str(user["ok"]), str(user["failed"]), str(user["rejected"])]
    licences = {row[0]: int(row[2]) for row in parsed.tables["licences"][1:]}
    assert licences == {key: value["photos"] for key, value in crawl["licenses"].items()}
    rules = {row[0]: row[1:] for row in parsed.tables["rules"][1:]}
    assert rules["cold-tone"] == ["2", "1", "1"]
    evaluation = {(row[1], row[2]): float(row[4]) for row in parsed.tables["evaluation"][1:]}
    assert evaluation[("2", "msm")] == pytest.approx(status["evaluation"]["runs"][0]["psnr"]["2"]["msm"], abs=0.005)
    truth = ground_truth_psnr(workspace, flickr_photos(workspace)).as_dict()
    rows = parsed.tables["ground-truth"][1:]
    assert [int(row[1]) for row in rows] == [truth["count"]] * 2 == [5, 5]
    assert [float(row[2]) for row in rows] == [truth["pseudo_psnr"], truth["retouched_psnr"]]


def test_pseudo_originals_score_higher_against_ground_truth_than_retouched_photos(workspace):
    truth = ground_truth_psnr(workspace, flickr_photos(workspace))
    assert truth.count == 5 and truth.unreadable == 0
    assert min(truth.pseudo) > max(truth.retouched) + 10
    # The first photo by hand: PSNR of its pseudo original against the true original.
    root = workspace.root
    true = read_image(root / "ground-truth" / "flickr" / status_fixtures.TRUTH_USER / "7000.png").as_uint8()
    pseudo = read_image(root / "degraded" / status_fixtures.TRUTH_USER / "7000.png").as_uint8()
    mse = np.mean((true.astype(float) - pseudo.astype(float)) ** 2)
    assert truth.pseudo[0] == pytest.approx(10 * np.log10(255 ** 2 / mse))


def test_attribution_has_one_row_per_kept_photo_with_its_licence_and_the_card_the_counts(workspace, tmp_path):
    cards = tmp_path / "cards"
    files = write_report_files(workspace, tmp_path / "r.html", card_dir=cards, per_user=5)
    assert files.attribution.parent == cards and files.card.parent == cards
    rows = list(csv.DictReader(io.StringIO(files.attribution.read_text(encoding="utf-8"))))
    assert tuple(rows[0]) == ATTRIBUTION_COLUMNS
    kept = {(record["user"], photo_id): record for records in flickr_photos(workspace).values()
            for photo_id, record in records.items() if record["status"] == "ok"}
    assert len(rows) == len(kept) == 22
    for row in rows:
        record = kept[(row["nsid"], row["photo_id"])]
        assert (row["license_name"], row["license_url"], row["license_id"]) == \
            (record["license"]["name"], record["license"]["url"], record["license"]["id"])
        assert (row["page_url"], row["owner_name"], row["title"]) == \
            (record["page_url"], record["owner_name"], record["title"])
    card = files.card.read_text(encoding="utf-8")
    assert "| photos kept | 22 |" in card and "| users short of the target | 1 |" in card
    assert "| 9 | Public Domain Dedication (CC0) | 5 |" in card and "| valid_ref | 2 |" in card


def test_a_second_report_of_the_same_workspace_is_identical(workspace, tmp_path):
    first = write_report(workspace, tmp_path / "a" / "report.html", per_user=5)
    second = write_report(workspace, tmp_path / "b" / "report.html", per_user=5)
    for name in ("report.html", "ATTRIBUTION.csv", "DATASET.md"):
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes(), name
    text = first.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text.split("<body>")[0]
    assert text.count("<svg") == 6 and "<polyline" in text


def test_report_errors_are_one_line_with_exit_1(workspace, tmp_path):
    missing = _pie(tmp_path / "nowhere", "report")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "nowhere" in missing.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = _pie(workspace.root, "report", "--out", str(blocked / "report.html"))
    assert unwritable.returncode == 1 and len(unwritable.stderr.strip().splitlines()) == 1
    assert str(blocked) in unwritable.stderr
    assert _pie(workspace.root, "report", "--sheet-pairs", "0").returncode == 2
