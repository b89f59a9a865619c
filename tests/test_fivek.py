"""``pie fivek``: camera raw DNGs and ICC-tagged TIFFs/JPEGs to sRGB, records, reruns, the experts' split."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
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
from pipeline.imageio import ImageError, read_image
from pipeline.stages import rules as rules_stage
from pipeline.stages.fivek.decode import COLOUR_ASSUMED_SRGB, COLOUR_ICC, COLOUR_RAW, decode_original
from pipeline.stages.fivek.layout import (FiveKInputError, expert_folders, fivek_id, parse_expert, source_files,
                                          held_out_names)
from pipeline.stages.fivek.prepare import expert_test_users, run_fivek

PIE = Path(sys.executable).with_name("pie")

# ---------------------------------------------------------------- test data written here

#: XYZ (D65) -> linear sRGB (IEC 61966-2-1): as a DNG ColorMatrix1 it makes the test camera "linear sRGB".
XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])

#: ROMM (ProPhoto) RGB -> XYZ (D50), ISO 22028-2, and Bradford D50 -> D65.
PROPHOTO_TO_XYZ_D50 = np.array([[0.7977, 0.1352, 0.0313], [0.2880, 0.7119, 0.0001], [0.0, 0.0, 0.8251]])
BRADFORD_D50_TO_D65 = np.array([[0.9555766, -0.0230393, 0.0631636],
                                [-0.0282895, 1.0099416, 0.0210077],
                                [0.0122982, -0.0204830, 1.3299098]])


def dng_bytes(linear_rgb: np.ndarray, white: int = 4095, neutral=(1.0, 1.0, 1.0)) -> bytes:
    """A minimal DNG: an RGGB Bayer mosaic of ``linear_rgb`` (H x W x 3 in [0, 1], H and W even) with the tags
    LibRaw needs, from a camera whose colour is linear sRGB and that saw white as ``neutral``."""
    height, width, _ = linear_rgb.shape
    mosaic = np.empty((height, width), np.uint16)
    for (row, col), channel in {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}.items():
        mosaic[row::2, col::2] = np.round(linear_rgb[row::2, col::2, channel] * white)
    ratio = [part for value in XYZ_TO_SRGB.ravel() for part in (int(round(value * 10000)), 10000)]
    tags = [(271, "s", 0, "pie", True), (272, "s", 0, "test camera", True),
            (33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),  # CFARepeatPatternDim, CFAPattern
            (50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "pie test camera", True),  # DNGVersion, model
            (50721, 10, 9, ratio, True), (50778, "H", 1, 21, True),  # ColorMatrix1 (SRATIONAL), D65
            (50728, 5, 3, [part for value in neutral for part in (int(round(value * 1000)), 1000)], True),
            (50714, "H", 1, 0, True), (50717, "H", 1, white, True)]  # BlackLevel, WhiteLevel
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, mosaic, photometric=32803, extratags=tags, subfiletype=0)
    return buffer.getvalue()


def red_and_grey(height: int = 48, width: int = 64, red: float = 0.6) -> np.ndarray:
    """Linear RGB: a red left half, a mid-grey right half."""
    image = np.full((height, width, 3), 0.2)
    image[:, : width // 2] = (red, 0.05, 0.05)
    return image


def prophoto_icc() -> bytes:
    """An ICC v2 matrix/shaper profile with ProPhoto's primaries, D50 white and gamma 1.8 (test data only)."""
    def s15(value):
        return struct.pack(">i", int(round(value * 65536)))

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    text = b"ProPhoto RGB (test)\0"
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(1.8 * 256))
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 79),
            (b"cprt", b"text\0\0\0\0none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            *[(name, xyz(*PROPHOTO_TO_XYZ_D50[:, column])) for column, name in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))],
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for name, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += name + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def prophoto_to_srgb(values: np.ndarray) -> np.ndarray:
    """The sRGB [0, 1] of ProPhoto values, by the standards' formulas (independent of littleCMS)."""
    linear = (values ** 1.8) @ PROPHOTO_TO_XYZ_D50.T @ BRADFORD_D50_TO_D65.T @ XYZ_TO_SRGB.T
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * np.clip(linear, 0, None) ** (1 / 2.4) - 0.055)


#: In-gamut ProPhoto colours, one per 8x8 patch of the test TIFF.
PROPHOTO_COLOURS = np.array([[0.5, 0.3, 0.2], [0.35, 0.5, 0.3], [0.3, 0.3, 0.5], [0.5, 0.5, 0.5], [0.7, 0.6, 0.5]])


def prophoto_patches() -> np.ndarray:
    return np.repeat(np.repeat(PROPHOTO_COLOURS[None], 8, axis=0), 8, axis=1)  # 8 x 40 x 3


def write_prophoto_tiff(path: Path) -> None:
    """A 16-bit ProPhoto RGB TIFF with its profile embedded, as Lightroom exports the experts' versions."""
    pixels = np.round(prophoto_patches() * 65535).astype(np.uint16)
    tifffile.imwrite(path, pixels, photometric="rgb", iccprofile=prophoto_icc())


@pytest.fixture()
def fivek(tmp_path) -> Path:
    """A FiveK folder as distributed: raw_photos/HQa1to700/photos/*.dng, one of them corrupt, and expertC/."""
    folder = tmp_path / "fivek"
    photos = folder / "raw_photos" / "HQa1to700" / "photos"
    photos.mkdir(parents=True)
    (photos / "a0001-pie_red.dng").write_bytes(dng_bytes(red_and_grey()))
    (photos / "a0002-pie_grey.dng").write_bytes(dng_bytes(np.full((48, 64, 3), 0.3)))
    (photos / "a0003-pie_broken.dng").write_bytes(dng_bytes(red_and_grey())[:300])
    expert = folder / "expertC"
    expert.mkdir()
    write_prophoto_tiff(expert / "a0001.tif")
    tifffile.imwrite(expert / "a0002.tif", np.full((48, 64, 3), 30000, np.uint16), photometric="rgb")
    return folder


def run_pie(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PIE), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PIE_ROOT": ""})


def records(path: Path, key: str) -> dict[str, dict]:
    return latest_by([json.loads(line) for line in path.read_text().splitlines()], key)


# ---------------------------------------------------------------- decoding


def test_a_dng_is_developed_by_libraw_to_srgb_with_the_red_kept_red():
    original = decode_original(dng_bytes(red_and_grey()), "a0001.dng")
    assert original.colour == COLOUR_RAW
    assert original.pixels.shape == (48, 64, 3) and original.pixels.dtype == np.float32
    red = original.pixels[8:40, 4:28].reshape(-1, 3).mean(axis=0)
    grey = original.pixels[8:40, 36:60].reshape(-1, 3).mean(axis=0)
    assert red[0] > 2.5 * red[1] and red[0] > 2.5 * red[2], red
    assert np.ptp(grey) < 0.03 and 0.2 < grey.mean() < 0.95, grey  # neutral stays neutral (camera white balance)
    # the sRGB curve: linear 0.6 / 0.2 is about 0.80 / 0.48 before brightening; their ratio survives it
    assert abs(red[0] / grey.mean() - 0.7976 / 0.4845) < 0.1


def test_the_as_shot_white_balance_is_applied():
    """A camera that saw grey as (0.5, 1, 1) records AsShotNeutral (0.5, 1, 1): LibRaw neutralises it."""
    data = dng_bytes(np.full((32, 32, 3), 0.3) * (0.5, 1.0, 1.0), neutral=(0.5, 1.0, 1.0))
    assert np.ptp(decode_original(dng_bytes(np.full((32, 32, 3), 0.3) * (0.5, 1.0, 1.0)), "untinted.dng").pixels
                  .reshape(-1, 3).mean(axis=0)) > 0.1  # without it the grey is tinted
    pixels = decode_original(data, "tinted.dng").pixels.reshape(-1, 3).mean(axis=0)
    assert np.ptp(pixels) < 0.03, pixels


def test_a_prophoto_tiff_is_converted_to_srgb_by_its_embedded_profile(tmp_path):
    path = tmp_path / "a0001.tif"
    write_prophoto_tiff(path)
    original = decode_original(path.read_bytes(), str(path))
    assert original.colour == COLOUR_ICC and original.profile == "ProPhoto RGB (test)"
    got = original.pixels[4, 4::8] * 255
    expected = prophoto_to_srgb(PROPHOTO_COLOURS) * 255
    assert np.abs(got - expected).max() <= 2.0, (got, expected)
    assert np.abs(got - PROPHOTO_COLOURS * 255).max() > 10  # the conversion did something


def test_an_icc_tagged_jpeg_is_converted_and_an_untagged_file_is_taken_as_srgb(tmp_path):
    patches = np.round(prophoto_patches() * 255).astype(np.uint8)
    tagged, plain = io.BytesIO(), io.BytesIO()
    Image.fromarray(patches).save(tagged, "JPEG", quality=100, subsampling=0, icc_profile=prophoto_icc())
    Image.fromarray(patches).save(plain, "PNG")
    jpeg = decode_original(tagged.getvalue(), "a0001.jpg")
    assert jpeg.colour == COLOUR_ICC
    assert np.abs(jpeg.pixels[4, 4::8] * 255 - prophoto_to_srgb(PROPHOTO_COLOURS) * 255).max() <= 3.0
    png = decode_original(plain.getvalue(), "a0001.png")
    assert png.colour == COLOUR_ASSUMED_SRGB and png.profile is None
    assert np.array_equal(np.round(png.pixels * 255).astype(np.uint8), patches)


@pytest.mark.parametrize("data", [b"", b"II*\0" + b"\0" * 64, b"not a raw file at all" * 20])
def test_an_unreadable_dng_is_one_line_naming_the_file(data):
    with pytest.raises(ImageError) as error:
        decode_original(data, "/photos/a0009-x.dng")
    assert str(error.value).startswith("/photos/a0009-x.dng: ") and "\n" not in str(error.value)


# ---------------------------------------------------------------- layout and split


def test_the_fivek_layout_experts_and_split(tmp_path, fivek):
    assert [path.name for path in source_files(fivek)] == ["a0001-pie_red.dng", "a0002-pie_grey.dng",
                                                           "a0003-pie_broken.dng"]
    sources, problems = rules_stage.find_sources(fivek)
    assert [source.name for source in sources] == ["a0001-pie_red", "a0002-pie_grey", "a0003-pie_broken"]
    assert not problems
    (fivek / "Expert_A").mkdir()
    other = tmp_path / "elsewhere-c"
    other.mkdir()
    assert expert_folders(fivek, {}) == {"A": fivek / "Expert_A", "C": fivek / "expertC"}
    assert expert_folders(fivek, dict([parse_expert(f"c={other}")]))["C"] == other
    for bad in ("F=" + str(other), "C", f"C={tmp_path / 'missing'}"):
        with pytest.raises(FiveKInputError):
            parse_expert(bad)
    assert fivek_id("a0042-kme_0001") == "a0042" and fivek_id("a00420") == "a00420"
    names = [f"a{index:04d}-x" for index in range(1, 11)]
    assert held_out_names(names, test_count=3) == {"a0008-x", "a0009-x", "a0010-x"}
    assert held_out_names(names[:2], test_count=3) == set(names[:2])
    listed = tmp_path / "test.txt"
    listed.write_text("# held out\na0002\na0005-x\n\n")
    assert held_out_names(names, listed) == {"a0002-x", "a0005-x"}


# ---------------------------------------------------------------- the stage


def test_pie_fivek_prepares_originals_and_experts_and_fails_a_corrupt_dng_with_exit_1(tmp_path, fivek):
    root = tmp_path / "ws"
    result = run_pie("--root", str(root), "fivek", str(fivek), "--workers", "1", "--max-side", "32")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "a0003-pie_broken.dng" in line]
    assert error_lines and all(line.startswith("pie: ") for line in error_lines)
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 1 files could not be prepared")
    assert "2 originals prepared" in result.stdout and "2 expert images prepared" in result.stdout

    originals = records(root / "manifests" / "fivek.jsonl", "name")
    assert originals["a0003-pie_broken"]["status"] == "failed"
    assert "a0003-pie_broken.dng" in originals["a0003-pie_broken"]["reason"]
    assert not (root / "fivek" / "a0003-pie_broken.png").exists()
    red = originals["a0001-pie_red"]
    assert red["status"] == "ok" and red["colour"] == COLOUR_RAW and red["schema"] == rules_stage.PREPARED_SCHEMA
    assert (red["width"], red["height"], red["max_side"]) == (32, 24, 32)
    data = (fivek / "raw_photos" / "HQa1to700" / "photos" / "a0001-pie_red.dng").read_bytes()
    assert red["source_sha256"] == hashlib.sha256(data).hexdigest()
    png = read_image(root / red["file"]).pixels
    assert png.shape == (24, 32, 3) and png[:, :12, 0].mean() > 2 * png[:, :12, 1].mean()

    experts = records(root / "manifests" / "fivek-experts.jsonl", "key")
    assert set(experts) == {"C/a0001-pie_red", "C/a0002-pie_grey"}  # named as the originals of their ids
    assert experts["C/a0001-pie_red"]["colour"] == COLOUR_ICC
    assert experts["C/a0002-pie_grey"]["colour"] == COLOUR_ASSUMED_SRGB  # no profile: taken as sRGB, said so
    assert all(record["split"] == "test" for record in experts.values())  # fewer than 500: all are the last 500
    assert (root / "fivek" / "experts" / "C" / "a0001-pie_red.png").exists()


def test_a_rerun_skips_done_files_and_pie_rules_takes_them_as_prepared(tmp_path, fivek):
    workspace = Workspace(tmp_path / "ws")
    sources = rules_stage.find_sources(fivek)[0]
    experts = {"C": fivek / "expertC"}
    first = run_fivek(workspace, sources, experts, max_side=32, test_count=1)
    assert (first.done["originals ok"], first.done["originals failed"], first.done["experts ok"]) == (2, 1, 2)
    lines = len((workspace.root / "manifests" / "fivek.jsonl").read_text().splitlines())
    second = run_fivek(workspace, sources, experts, max_side=32, test_count=1)
    assert second.done["originals ok"] == 0 and second.done["experts ok"] == 0
    assert second.skipped["originals"] == 2 and second.skipped["experts"] == 2
    assert second.done["originals failed"] == 1  # a failed file is tried again
    assert len((workspace.root / "manifests" / "fivek.jsonl").read_text().splitlines()) == lines + 1

    to_prepare, current, _ = rules_stage.pending_originals(workspace, sources, 32)
    assert [source.name for source in to_prepare] == ["a0003-pie_broken"]  # only the one pie fivek could not
    for source in sources[:2]:
        kept = read_image(workspace.root / current[source.name]["file"]).pixels
        assert np.array_equal(rules_stage.prepared_pixels(source.path.read_bytes(), str(source.path), 32), kept)
    assert rules_stage.pending_originals(workspace, sources, 16)[0] == sources  # another --max-side: redone

    assert audit(workspace).ok  # the experts' PNGs are recorded files too
    workspace.fivek_expert("C", "a0001-pie_red").write_bytes(b"not the prepared PNG")
    assert [problem.kind for problem in audit(workspace).findings] == ["size"]


def test_a_changed_source_is_redone_and_a_touched_one_is_not(tmp_path, fivek):
    workspace = Workspace(tmp_path / "ws")
    sources = rules_stage.find_sources(fivek)[0][:2]
    run_fivek(workspace, sources, {}, max_side=32)
    manifest = workspace.root / "manifests" / "fivek.jsonl"
    before = records(manifest, "name")
    red = fivek / "raw_photos" / "HQa1to700" / "photos" / "a0001-pie_red.dng"
    grey = fivek / "raw_photos" / "HQa1to700" / "photos" / "a0002-pie_grey.dng"
    os.utime(grey, ns=(1_000_000_000, 1_000_000_000))  # touched, same bytes
    red.write_bytes(dng_bytes(red_and_grey(red=0.1)))  # same size, other bytes
    assert red.stat().st_size == before["a0001-pie_red"]["source_bytes"]
    summary = run_fivek(workspace, sources, {}, max_side=32)
    assert summary.done["originals ok"] == 1 and summary.skipped["originals"] == 1
    after = records(manifest, "name")
    assert after["a0001-pie_red"]["source_sha256"] != before["a0001-pie_red"]["source_sha256"]
    assert after["a0001-pie_red"]["sha256"] != before["a0001-pie_red"]["sha256"]
    assert after["a0002-pie_grey"]["source_mtime_ns"] == 1_000_000_000  # refreshed, not redone
    assert after["a0002-pie_grey"]["created_at"] == before["a0002-pie_grey"]["created_at"]


def test_a_changed_split_is_recorded_without_decoding_and_feeds_evaluation(tmp_path, fivek):
    from model.evaluation import Settings
    from pipeline.stages.evaluate import folder_user

    workspace = Workspace(tmp_path / "ws")
    sources = rules_stage.find_sources(fivek)[0]
    experts = {"C": fivek / "expertC"}
    run_fivek(workspace, sources, experts, max_side=32)
    listed = tmp_path / "test.txt"
    listed.write_text("a0002\n")
    summary = run_fivek(workspace, sources, experts, max_side=32, test_list=listed)
    assert summary.done["experts ok"] == 0 and summary.skipped["experts"] == 2
    assert (summary.splits["test"], summary.splits["train"]) == (1, 1)
    [(user, originals, retouched, test)] = expert_test_users(workspace, ["C"])
    assert user == "fivek-expertC" and test == {"a0002-pie_grey"}
    assert retouched == workspace.root / "fivek" / "experts" / "C"
    with pytest.raises(ValueError, match="fivek-experts.jsonl: no prepared image of expert A"):
        expert_test_users(workspace, ["A"])
    settings = Settings(num_preferred=(1,), draws=1, size=32, methods=("identity",))
    tested = folder_user(user, originals, retouched, settings, 32, test_stems=test)
    assert [tested.keys[i] for i in tested.pool] == ["a0001-pie_red"]
    assert [tested.keys[i] for i in tested.unseen] == ["a0002-pie_grey"]
    assert len(workspace.fivek_experts_manifest().read().records) == 3  # two prepared, then a0001 moved to train


def test_usage_errors_are_one_line_with_exit_2(tmp_path, fivek):
    result = run_pie("--root", str(tmp_path / "ws"), "fivek", str(fivek), "--expert", "Z=" + str(tmp_path))
    assert result.returncode == 2 and "--expert 'Z=" in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "fivek", str(empty), "--workers", "1"])
    assert result.exit_code == 1 and "no FiveK originals" in result.output
    result = CliRunner().invoke(cli, ["--root", str(tmp_path / "ws"), "evaluate", "--fivek-expert", "A"])
    assert result.exit_code == 1 and "no prepared image of expert A" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_pie_evaluate_takes_a_prepared_expert_as_a_test_user_on_its_split(tmp_path):
    import dataclasses

    import torch

    from model.networks import MSM, MSMConfig
    from model.pca import StylePCA
    from model.train import TrainConfig, save_model

    folder = tmp_path / "fivek"
    photos, expert = folder / "raw_photos" / "HQa1to700" / "photos", folder / "expertC"
    photos.mkdir(parents=True), expert.mkdir()
    rng = np.random.default_rng(0)
    for index in range(1, 7):
        linear = np.clip(red_and_grey(red=0.2 + 0.1 * index) + rng.uniform(0, 0.05, (48, 64, 3)), 0, 1)
        (photos / f"a{index:04d}-pie.dng").write_bytes(dng_bytes(linear))
        tifffile.imwrite(expert / f"a{index:04d}.tif", np.round(np.clip(linear ** 0.6, 0, 1) * 65535)
                         .astype(np.uint16), photometric="rgb", iccprofile=prophoto_icc())
    workspace = Workspace(tmp_path / "ws")
    summary = run_fivek(workspace, rules_stage.find_sources(folder)[0], expert_folders(folder, {}), test_count=2)
    assert (summary.done["originals ok"], summary.done["experts ok"], summary.splits["test"]) == (6, 6, 2)

    torch.manual_seed(0)
    config = dataclasses.replace(MSMConfig.small(), image_size=64, embed_size=32)
    pca = StylePCA(torch.randn(512) * 0.1, torch.linalg.qr(torch.randn(512, 512))[0], torch.rand(512) + 0.5)
    save_model(tmp_path / "model.pt", MSM(config).eval(), pca, TrainConfig(model=config))
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["--root", str(workspace.root), "evaluate", "--fivek-expert", "c",
                                      "--checkpoint", str(tmp_path / "model.pt"), "--num-preferred", "2",
                                      "--num-draws", "2", "--size", "64", "--examples", "1", "--device", "cpu",
                                      "--json", str(report)])
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["users"] == {"2": 1} and set(document["per_user"]) == {"fivek-expertC"}
    assert any(entry.startswith("fivek-expertC=") for entry in document["data"])
