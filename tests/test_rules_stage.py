"""``pie rules``: the registry, the CLI and the Dask stage on real photographs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from manifests.jsonl import latest_by
from manifests.workspace import Workspace
from pipeline.cli import cli
from pipeline.cluster import dask_client
from pipeline.imageio import read_image
from pipeline.rules_stage import find_sources, run_rules
from rules.registry import builtin_rules

PRESET_DIR = Path(__file__).resolve().parents[1] / "rules" / "presets"


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """Originals in the modes FiveK and users bring: 8-bit, 16-bit TIFF, grey, CMYK, rotated, broken."""
    from skimage import data

    folder = tmp_path_factory.mktemp("fivek")
    chelsea = data.chelsea()[::4, ::4]  # 75 x 113
    coffee = data.coffee()[::5, ::5]  # 80 x 120
    Image.fromarray(chelsea).save(folder / "a0001-cat.png")
    tifffile.imwrite(folder / "a0002-coffee16.tif", coffee.astype(np.uint16) * 257)
    Image.fromarray(coffee).convert("L").save(folder / "a0003-grey.png")
    Image.fromarray(chelsea).convert("CMYK").save(folder / "a0004-cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(coffee).save(folder / "a0005-rotated.jpg", exif=exif)
    buffer = io.BytesIO()
    Image.fromarray(chelsea).save(buffer, "JPEG")
    (folder / "a0006-truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (folder / "bad.name.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def client():
    with dask_client(None, workers=2) as dask:
        yield dask


def test_registry_has_the_papers_25_rules():
    rules = builtin_rules()
    assert len(rules) == 25
    assert [rule.kind for rule in rules.values()].count("method") == 10
    assert {"CDSA", "CLAHE", "GCEHistMod", "JieP", "LDR", "LIME", "LLF", "NPEA", "PIE", "SRIE"} <= set(rules)
    json.dumps({name: rule.parameters for name, rule in rules.items()})  # records can carry them


def test_the_25_outputs_of_one_photo_are_pairwise_distinct():
    from skimage import data

    image = (data.astronaut()[::8, ::8].astype(np.float32) / 255.0)
    outputs = {name: rule(image) for name, rule in builtin_rules().items()}
    names = sorted(outputs)
    for index, first in enumerate(names):
        assert outputs[first].shape == image.shape and outputs[first].dtype == np.float32
        for second in names[index + 1:]:
            assert np.abs(outputs[first] - outputs[second]).mean() > 1e-3, (first, second)


def test_stage_writes_records_skips_bad_input_and_resumes(originals, tmp_path, client):
    workspace = Workspace(tmp_path / "ws")
    sources, problems = find_sources(originals)
    assert [s.name for s in sources] == ["a0001-cat", "a0002-coffee16", "a0003-grey", "a0004-cmyk",
                                         "a0005-rotated", "a0006-truncated"]
    assert any("bad.name.png" in p for p in problems)
    chosen = {name: rule for name, rule in builtin_rules().items() if name in ("CLAHE", "punch", "cyanotype")}
    summary = run_rules(workspace, sources, chosen, client=client)
    assert summary.done == {"ok": 15, "failed": 3}
    for name in chosen:
        latest = latest_by(workspace.rules_manifest(name).read().records, "name")
        assert latest["a0006-truncated"]["status"] == "failed"
        assert "a0006-truncated.jpg" in latest["a0006-truncated"]["reason"]
        assert "\n" not in latest["a0006-truncated"]["reason"]
        rotated = read_image(workspace.resolve_relative(latest["a0005-rotated"]["file"]))
        assert rotated.pixels.shape[:2] == (120, 80)  # the EXIF rotation was applied
        ok = latest["a0001-cat"]
        assert ok["source_sha256"] and ok["sha256"] and ok["parameters"] == chosen[name].parameters
    again = run_rules(workspace, sources, chosen, client=client)
    assert again.done["ok"] == 0 and again.skipped == 15 and again.done["failed"] == 3
    workspace.resolve_relative("rules/punch/a0003-grey.png").unlink()
    redo = run_rules(workspace, sources, chosen, client=client)
    assert redo.done["ok"] == 1


def test_cli_list_show_and_extra_presets(originals, tmp_path):
    runner = CliRunner()
    listing = runner.invoke(cli, ["rules", "list"])
    assert listing.exit_code == 0 and "LIME" in listing.output and "teal-orange" in listing.output
    extra = tmp_path / "presets"
    extra.mkdir()
    shutil.copy(PRESET_DIR / "yesteryear.lrtemplate", extra)
    (extra / "broken.xmp").write_text("<x:xmpmeta")
    listing = runner.invoke(cli, ["rules", "list", "--presets", str(extra)])
    assert listing.exit_code == 0 and "yesteryear" in listing.output
    assert "broken.xmp" in listing.output  # reported, not fatal
    out = tmp_path / "show.png"
    shown = runner.invoke(cli, ["rules", "show", "yesteryear", str(originals / "a0001-cat.png"), "--out", str(out),
                                "--presets", str(extra)])
    assert shown.exit_code == 0, shown.output
    assert read_image(out).pixels.shape == (75, 113, 3)
    bad = runner.invoke(cli, ["rules", "show", "nosuchrule", str(originals / "a0001-cat.png"), "--out", str(out)])
    assert bad.exit_code == 2 and "unknown rule" in bad.output
    broken = runner.invoke(cli, ["rules", "show", "punch", str(originals / "a0006-truncated.jpg"), "--out", str(out)])
    assert broken.exit_code == 1 and "a0006-truncated.jpg" in broken.output


def test_cli_stage_with_only_and_a_local_cluster(originals, tmp_path):
    result = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "rules", "--fivek", str(originals),
                                      "--only", "punch", "--workers", "1", "--max-side", "64"])
    assert result.exit_code == 0, result.output
    assert "rules: 5 outputs written" in result.output
    record = latest_by(Workspace(tmp_path / "ws").rules_manifest("punch").read().records, "name")["a0002-coffee16"]
    assert max(record["width"], record["height"]) == 64 and record["max_side"] == 64
    unknown = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "rules", "--fivek", str(originals),
                                       "--only", "nope"])
    assert unknown.exit_code == 2 and "unknown rule 'nope'" in unknown.output
