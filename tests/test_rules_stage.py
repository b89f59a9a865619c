"""``pie rules``: the registry, the CLI and the Dask stage on real photographs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from manifests.audit import audit
from manifests.jsonl import latest_by
from manifests.workspace import Workspace
from pipeline.cli import cli
from pipeline.cluster import dask_client
from pipeline.imageio import ImageError, encode_png, float_to_uint8, read_image
from pipeline.stages.rules import SourceImage, find_sources, load_source, run_rules
from rules.registry import builtin_rules

PRESET_DIR = Path(__file__).resolve().parents[1] / "rules" / "presets"
TWO_RULES = ("punch", "cold-tone")


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
    assert summary.done == {"ok": 15, "failed": 3} and summary.prepared == {"ok": 5, "failed": 1}
    prepared = latest_by(workspace.prepared_manifest().read().records, "name")
    assert "a0006-truncated.jpg" in prepared["a0006-truncated"]["reason"]
    assert prepared["a0002-coffee16"]["source"] == str(originals / "a0002-coffee16.tif")
    for name in chosen:
        latest = latest_by(workspace.rules_manifest(name).read().records, "name")
        assert latest["a0006-truncated"]["status"] == "failed"
        assert latest["a0006-truncated"]["reason"] == prepared["a0006-truncated"]["reason"]
        assert "\n" not in latest["a0006-truncated"]["reason"]
        rotated = read_image(workspace.resolve_relative(latest["a0005-rotated"]["file"]))
        assert rotated.pixels.shape[:2] == (120, 80)  # the EXIF rotation was applied
        ok = latest["a0001-cat"]
        assert ok["source_sha256"] and ok["sha256"] and ok["parameters"] == chosen[name].parameters
        for image in [source.name for source in sources][:5]:
            record, original = latest[image], prepared[image]
            assert record["input_file"] == original["file"] == f"fivek/{image}.png"
            assert (record["input_sha256"], record["input_bytes"]) == (original["sha256"], original["bytes"])
    for image in ("a0002-coffee16", "a0005-rotated"):  # the rules read exactly the stored 8-bit pixels
        pixels = read_image(workspace.prepared_original(image)).as_float()
        for name, rule in chosen.items():
            expected = float_to_uint8(rule(pixels))
            assert np.array_equal(read_image(workspace.rule_output(name, image)).pixels, expected), (name, image)
    assert read_image(workspace.prepared_original("a0005-rotated")).pixels.shape[:2] == (120, 80)
    written = {path.name: path.stat().st_mtime_ns for path in (workspace.root / "fivek").iterdir()}

    again = run_rules(workspace, sources, chosen, client=client)
    assert again.done["ok"] == 0 and again.skipped == 15 and again.done["failed"] == 3
    assert again.prepared == {"failed": 1}  # a bad original is tried again, good ones once
    assert {path.name: path.stat().st_mtime_ns for path in (workspace.root / "fivek").iterdir()} == written
    assert len(workspace.prepared_manifest().read().records) == 7
    workspace.resolve_relative("rules/punch/a0003-grey.png").unlink()
    redo = run_rules(workspace, sources, chosen, client=client)
    assert redo.done["ok"] == 1 and redo.prepared == {"failed": 1}
    report = audit(workspace)
    assert report.ok, report.problems
    assert report.sections["fivek"] == {"ok": 5, "failed": 1}


@pytest.fixture()
def three_originals(tmp_path) -> list[SourceImage]:
    """Three small 8-bit originals, about 64-120 px."""
    from skimage import data

    folder = tmp_path / "fivek-src"
    folder.mkdir()
    for name, photo in (("b1", data.chelsea()[::4, ::4]), ("b2", data.coffee()[::5, ::5]),
                        ("b3", data.astronaut()[::8, ::8])):
        (folder / f"{name}.png").write_bytes(encode_png(photo))
    return find_sources(folder)[0]


def _old_format_outputs(workspace: Workspace, sources: list[SourceImage], rules: dict) -> None:
    """Outputs and records as ``pie rules`` wrote them before prepared originals were kept."""
    for rule in rules.values():
        records = []
        for source in sources:
            pixels, digest = load_source(source.path, None)
            png = encode_png(float_to_uint8(rule(pixels)))
            output = workspace.rule_output(rule.name, source.name)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(png)
            records.append({"schema": "pie.rule-output/1", "rule": rule.name, "kind": rule.kind,
                            "reference": rule.reference, "parameters": rule.parameters, "name": source.name,
                            "source": str(source.path), "source_sha256": digest, "max_side": None,
                            "file": workspace.relative(output), "width": 1, "height": 1, "bytes": len(png),
                            "sha256": hashlib.sha256(png).hexdigest(), "status": "ok", "reason": None,
                            "seconds": 0.1, "created_at": "2026-01-01T00:00:00+00:00"})
        workspace.rules_manifest(rule.name).append(records)


def test_old_workspace_is_upgraded_without_recomputing(three_originals, tmp_path, client):
    workspace = Workspace(tmp_path / "ws")
    chosen = {name: builtin_rules()[name] for name in TWO_RULES}
    _old_format_outputs(workspace, three_originals, chosen)
    store = workspace.rules_manifest("punch")  # this one's source changed since: recomputed, not upgraded
    store.append([{**latest_by(store.read().records, "name")["b3"], "source_sha256": "0" * 64}])
    outputs = sorted((workspace.root / "rules").glob("*/*.png"))
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in outputs}
    assert audit(workspace).problems.count("punch.jsonl b1: made before prepared originals were kept "
                                           "(no input_sha256); rerun pie rules") == 1

    summary = run_rules(workspace, three_originals, chosen, client=client)
    assert (summary.upgraded, summary.skipped, summary.done, summary.prepared) == (5, 0, {"ok": 1}, {"ok": 3})
    assert "0 already done, 5 upgraded, 0 failed; 3 originals prepared" in summary.line()
    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in outputs}
    changed = workspace.rule_output("punch", "b3")
    assert {path: value for path, value in after.items() if path != changed} == \
        {path: value for path, value in before.items() if path != changed}
    prepared = latest_by(workspace.prepared_manifest().read().records, "name")
    for name in chosen:
        for image, record in latest_by(workspace.rules_manifest(name).read().records, "name").items():
            assert record["input_file"] == f"fivek/{image}.png"
            assert (record["input_sha256"], record["input_bytes"]) == (prepared[image]["sha256"],
                                                                       prepared[image]["bytes"])
    assert audit(workspace).ok

    again = run_rules(workspace, three_originals, chosen, client=client)
    assert (again.upgraded, again.skipped, again.done, again.prepared) == (0, 6, {}, {})


def test_replaced_touched_and_corrupted_originals(three_originals, tmp_path, client):
    from skimage import data

    workspace = Workspace(tmp_path / "ws")
    chosen = {name: builtin_rules()[name] for name in TWO_RULES}
    assert run_rules(workspace, three_originals, chosen, client=client).done == {"ok": 6}
    first = latest_by(workspace.rules_manifest("punch").read().records, "name")
    b1, b2, b3 = (source.path for source in three_originals)

    b2.write_bytes(encode_png(data.rocket()[::6, ::6]))  # another picture under the same name
    replaced = run_rules(workspace, three_originals, chosen, client=client)
    assert (replaced.done, replaced.skipped, replaced.prepared) == ({"ok": 2}, 4, {"ok": 1})
    latest = latest_by(workspace.rules_manifest("punch").read().records, "name")
    assert latest["b2"]["input_sha256"] != first["b2"]["input_sha256"]
    assert latest["b1"] == first["b1"]

    stat = b1.stat()
    os.utime(b1, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, bytes unchanged
    touched = run_rules(workspace, three_originals, chosen, client=client)
    assert (touched.done, touched.skipped, touched.prepared) == ({}, 6, {})
    prepared = latest_by(workspace.prepared_manifest().read().records, "name")
    assert prepared["b1"]["source_mtime_ns"] == b1.stat().st_mtime_ns  # not hashed again next time

    b3.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    corrupted = run_rules(workspace, three_originals, chosen, client=client)
    assert (corrupted.done, corrupted.skipped, corrupted.prepared) == ({"failed": 2}, 4, {"failed": 1})
    reason = latest_by(workspace.prepared_manifest().read().records, "name")["b3"]["reason"]
    assert "b3.png" in reason and "\n" not in reason
    assert latest_by(workspace.rules_manifest("cold-tone").read().records, "name")["b3"]["reason"] == reason
    assert audit(workspace).ok

    shrunk = run_rules(workspace, three_originals, chosen, client=client, max_side=32)
    assert (shrunk.done, shrunk.prepared) == ({"ok": 4, "failed": 2}, {"ok": 2, "failed": 1})
    assert max(read_image(workspace.prepared_original("b1")).pixels.shape) == 32


def test_cli_list_show_and_extra_presets(originals, tmp_path):
    runner = CliRunner()
    listing = runner.invoke(cli, ["rules", "list"])
    assert listing.exit_code == 0 and "LIME" in listing.output and "teal-orange" in listing.output
    extra = tmp_path / "presets"
    extra.mkdir()
    shutil.copy(PRESET_DIR.with_name("example_presets") / "yesteryear.lrtemplate", extra)
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
    assert result.exit_code == 1, result.output  # the truncated original is a failed record, and said so
    assert "rules: 5 outputs written" in result.output
    assert "1 originals were unreadable" in result.output and "a rerun retries them" in result.output
    record = latest_by(Workspace(tmp_path / "ws").rules_manifest("punch").read().records, "name")["a0002-coffee16"]
    assert max(record["width"], record["height"]) == 64 and record["max_side"] == 64
    unknown = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "rules", "--fivek", str(originals),
                                       "--only", "nope"])
    assert unknown.exit_code == 2 and "unknown rule 'nope'" in unknown.output


def test_local_workers_keep_glibcs_malloc_trim_threshold_and_one_thread(client):
    """Dask's nanny would set MALLOC_TRIM_THRESHOLD_=65536, which makes the rules about 4x slower."""
    def worker_environment():
        import cv2
        import torch

        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), torch.get_num_threads(), cv2.getNumThreads()

    inherited = os.environ.get("MALLOC_TRIM_THRESHOLD_")  # the nanny also writes its settings here
    assert inherited != "65536"
    assert set(client.run(worker_environment).values()) == {(inherited, 1, 1)}


def test_presets_option_on_the_shipped_folders_and_a_changed_built_in(tmp_path):
    pie = str(Path(sys.executable).with_name("pie"))

    def listing(folder: Path) -> subprocess.CompletedProcess:
        return subprocess.run([pie, "rules", "list", "--presets", str(folder)], capture_output=True, text=True,
                              timeout=120)

    shipped = listing(PRESET_DIR)  # the fifteen built-ins themselves
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout == subprocess.run([pie, "rules", "list"], capture_output=True, text=True).stdout
    example = listing(PRESET_DIR.with_name("example_presets"))
    assert example.returncode == 0 and "yesteryear" in example.stdout
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "punch.xmp").write_bytes((PRESET_DIR / "punch.xmp").read_bytes()
                                          .replace(b'crs:Contrast2012="+25"', b'crs:Contrast2012="+60"'))
    clash = listing(changed)
    assert clash.returncode == 2 and "redefines built-in rule 'punch'" in clash.stderr


def _kill_the_worker(image):
    """A rule that takes its worker process down on the 64-px picture (b3), as running out of memory does."""
    if image.shape[0] == 64:
        os._exit(1)
    return image


def _fail_on_b3(image):
    """A rule that raises on the 64-px picture (b3) and brightens the others."""
    if image.shape[0] == 64:
        raise FloatingPointError("no convergence")
    return np.sqrt(image)


def test_a_task_that_kills_its_worker_is_a_failed_record_and_the_stage_goes_on(three_originals, tmp_path):
    import dask
    import distributed  # noqa: F401  (its defaults must be loaded before dask.config.set, which restores on exit)

    from rules.registry import Rule

    workspace = Workspace(tmp_path / "ws")
    chosen = {"killer": Rule("killer", "method", "test", {}, _kill_the_worker), "punch": builtin_rules()["punch"]}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), dask_client(None, workers=1) as client:
        summary = run_rules(workspace, three_originals, chosen, client=client)
    assert summary.done == {"ok": 5, "failed": 1}  # b3's task died; run again rule by rule, only killer/b3 fails
    killer = latest_by(workspace.rules_manifest("killer").read().records, "name")
    assert killer["b3"]["status"] == "failed" and "KilledWorker" in killer["b3"]["reason"]
    assert killer["b1"]["status"] == killer["b2"]["status"] == "ok"
    punch = latest_by(workspace.rules_manifest("punch").read().records, "name")
    assert {record["status"] for record in punch.values()} == {"ok"}
    assert audit(workspace).ok


def _scribble(image):
    """A rule that writes into its input, which the other rules of the image also read."""
    image[:] = 0.0
    return image


def test_a_rule_that_raises_fails_only_its_own_pair(three_originals, tmp_path, client):
    from rules.registry import Rule

    workspace = Workspace(tmp_path / "ws")
    chosen = {"fragile": Rule("fragile", "method", "test", {}, _fail_on_b3),
              "scribbler": Rule("scribbler", "method", "test", {}, _scribble), "punch": builtin_rules()["punch"]}
    summary = run_rules(workspace, three_originals, chosen, client=client)
    assert summary.done == {"ok": 5, "failed": 4}
    fragile = latest_by(workspace.rules_manifest("fragile").read().records, "name")
    assert fragile["b3"]["reason"] == "fragile failed: FloatingPointError: no convergence"
    assert not workspace.rule_output("fragile", "b3").exists()
    assert workspace.rule_output("punch", "b3").exists() and fragile["b1"]["status"] == "ok"
    scribbler = latest_by(workspace.rules_manifest("scribbler").read().records, "name")
    assert all("read-only" in record["reason"] for record in scribbler.values())
    for image in ("b1", "b3"):  # the rule after it still saw the original's pixels
        original = read_image(workspace.prepared_original(image)).as_float()
        expected = float_to_uint8(builtin_rules()["punch"](original))
        assert np.array_equal(read_image(workspace.rule_output("punch", image)).pixels, expected)
    again = run_rules(workspace, three_originals, chosen, client=client)
    assert (again.done, again.skipped) == ({"failed": 4}, 5)  # failed pairs are tried again, the rest not


def _state(workspace: Workspace) -> dict:
    """Every file under ROOT with its bytes and mtime: what a run that redoes nothing leaves alone."""
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(workspace.root.rglob("*"))
            if path.is_file() and path.suffix != ".lock"}


def test_outputs_are_redone_exactly_when_their_input_or_bytes_changed(three_originals, tmp_path, client):
    workspace = Workspace(tmp_path / "ws")
    chosen = {name: builtin_rules()[name] for name in TWO_RULES}
    b1, b2, _ = (source.path for source in three_originals)
    for source in (b1, b2):  # uncompressed, so a different picture can have exactly the same size
        source.write_bytes(_uncompressed_tiff(read_image(source).pixels))
    assert run_rules(workspace, three_originals, chosen, client=client).done == {"ok": 6}

    before = _state(workspace)
    untouched = run_rules(workspace, three_originals, chosen, client=client)
    assert (untouched.done, untouched.prepared, untouched.skipped) == ({}, {}, 6)
    assert _state(workspace) == before  # no file written, no record appended

    first = latest_by(workspace.rules_manifest("punch").read().records, "name")
    other = _uncompressed_tiff(255 - read_image(b2).pixels)  # another picture under the same name and size
    assert len(other) == b2.stat().st_size
    b2.write_bytes(other)
    replaced = run_rules(workspace, three_originals, chosen, client=client)
    assert (replaced.done, replaced.prepared, replaced.skipped) == ({"ok": 2}, {"ok": 1}, 4)
    latest = latest_by(workspace.rules_manifest("punch").read().records, "name")
    assert latest["b2"]["input_sha256"] != first["b2"]["input_sha256"]
    assert latest["b2"]["sha256"] != first["b2"]["sha256"] and latest["b1"] == first["b1"]

    output = workspace.rule_output("cold-tone", "b1")
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupted at the same size
    output.write_bytes(bytes(data))
    corrupted = run_rules(workspace, three_originals, chosen, client=client)
    assert (corrupted.done, corrupted.prepared, corrupted.skipped) == ({"ok": 1}, {}, 5)
    assert hashlib.sha256(output.read_bytes()).hexdigest() == \
        latest_by(workspace.rules_manifest("cold-tone").read().records, "name")["b1"]["sha256"]

    prepared = workspace.prepared_original("b1")  # the kept original itself overwritten at the same size
    data = bytearray(prepared.read_bytes())
    data[len(data) // 2] ^= 0xFF
    prepared.write_bytes(bytes(data))
    remade = run_rules(workspace, three_originals, chosen, client=client)
    assert (remade.done, remade.prepared, remade.skipped) == ({}, {"ok": 1}, 6)  # the same pixels again
    assert audit(workspace).ok


def test_installed_pie_redoes_only_a_corrupted_output(three_originals, tmp_path):
    pie = str(Path(sys.executable).with_name("pie"))
    command = [pie, "--root", str(tmp_path / "ws"), "rules", "--fivek", str(three_originals[0].path.parent),
               "--only", "punch", "--workers", "1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "rules: 3 outputs written, 0 already done" in first.stdout + first.stderr
    output = Workspace(tmp_path / "ws").rule_output("punch", "b2")
    data = bytearray(output.read_bytes())
    data[-20] ^= 0x01  # one bit, same size
    output.write_bytes(bytes(data))
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "rules: 1 outputs written, 2 already done" in second.stdout + second.stderr
    assert read_image(output).pixels.shape == (80, 120, 3)


def _uncompressed_tiff(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels)
    return buffer.getvalue()


def test_an_original_too_large_for_the_rules_is_refused_unless_shrunk(tmp_path, monkeypatch):
    import pipeline.stages.rules as stage

    monkeypatch.setattr(stage, "MAX_RULE_PIXELS", 100)
    png = encode_png(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ImageError, match=r"big.png: 30x20 is more than the rules take .*give --max-side"):
        stage.prepared_pixels(png, "big.png", None)
    assert stage.prepared_pixels(png, "big.png", 12).shape == (8, 12, 3)
