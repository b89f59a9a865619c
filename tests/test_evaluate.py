"""The paper's metrics (model/metrics.py), the protocol (model/evaluation.py) and `pie evaluate`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ssim as reference_ssim

from model import inference
from model.evaluation import Settings, TestUser, draw_sets, evaluate_user, memory_loader
from model.metrics import delta_e, psnr, score, ssim
from model.networks import MSM, MSMConfig
from model.pca import StylePCA
from model.reference import write_reference
from model.train import TrainConfig, save_model
from html_page import chromium, rendered
from msm_fixtures import VALID_LAYOUT, write_msm_shards

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

PIE = Path(sys.executable).with_name("pie")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(Path(__file__).parent)])}
SETTINGS = dict(num_preferred=(2, 4), draws=3, size=64, batch_size=2, examples=2)


# ---------------------------------------------------------------- metrics


def test_metrics_of_identical_images_are_perfect():
    images = torch.rand(2, 3, 64, 64)
    assert torch.all(psnr(images, images) > 100)
    assert torch.allclose(ssim(images, images), torch.ones(2), atol=1e-6)
    assert torch.allclose(delta_e(images, images), torch.zeros(2), atol=1e-4)


def test_psnr_of_a_known_shift_and_the_output_is_clamped():
    target = torch.full((1, 3, 16, 16), 0.5)
    assert psnr(target + 0.1, target).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert psnr(torch.full_like(target, 5.0), torch.ones_like(target)).item() > 100  # clamped to 1 first


def test_delta_e_matches_reference_lab_values():
    """sRGB (D65) white is L*a*b* (100, 0, 0) and pure red (53.2408, 80.0925, 67.2032) (Lindbloom)."""
    def flat(rgb):
        return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 4, 4)

    assert delta_e(flat([1, 1, 1]), flat([0, 0, 0])).item() == pytest.approx(100.0, abs=1e-3)
    red_to_black = float(np.sqrt(53.2408 ** 2 + 80.0925 ** 2 + 67.2032 ** 2))
    assert delta_e(flat([1, 0, 0]), flat([0, 0, 0])).item() == pytest.approx(red_to_black, abs=0.01)
    red_to_white = float(np.sqrt((100 - 53.2408) ** 2 + 80.0925 ** 2 + 67.2032 ** 2))
    assert delta_e(flat([1, 0, 0]), flat([1, 1, 1])).item() == pytest.approx(red_to_white, abs=0.01)


def test_ssim_pools_to_about_256_pixels_on_the_short_side():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 512, 768, generator=generator)
    output = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    pooled = reference_ssim(torch.nn.functional.avg_pool2d(output, 2), torch.nn.functional.avg_pool2d(target, 2),
                            data_range=1.0, size_average=False)
    assert torch.allclose(ssim(output, target), pooled, atol=1e-6)
    assert torch.all(ssim(output, target) < 0.99)
    assert set(score(output, target)) == {"psnr", "ssim", "delta_e"}


# ---------------------------------------------------------------- draws and methods


def test_consecutive_draws_are_disjoint_blocks_then_wrap_and_random_draws_are_seeded():
    pool = list(range(100, 130))
    blocks = draw_sets(pool, 3, 10)
    assert blocks[0] == [100, 101, 102] and blocks[9] == [127, 128, 129]
    assert len({i for block in blocks for i in block}) == 30
    wrapped = draw_sets(pool, 20, 3)
    assert wrapped[1] == pool[20:] + pool[:10] and wrapped[2] == pool[10:30]
    assert draw_sets(pool, 31, 2) is None
    random_sets = draw_sets(pool, 5, 4, "random", seed=7, user="u")
    assert random_sets == draw_sets(pool, 5, 4, "random", seed=7, user="u")
    assert random_sets != draw_sets(pool, 5, 4, "random", seed=8, user="u")
    assert all(len(set(s)) == 5 and set(s) <= set(pool) for s in random_sets)


def _model(seed: int = 0) -> tuple[MSM, StylePCA, MSMConfig]:
    torch.manual_seed(seed)
    config = dataclasses.replace(MSMConfig.small(), image_size=64, embed_size=32)
    pca = StylePCA(torch.randn(512) * 0.1, torch.linalg.qr(torch.randn(512, 512))[0], torch.rand(512) + 0.5)
    return MSM(config).eval(), pca, config


def test_the_methods_follow_their_definitions():
    model, pca, _ = _model()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 40, 48, generator=generator)
    y = torch.rand(5, 3, 40, 48, generator=generator)
    preferred = inference.encode_preferred(model, x, y)
    unseen = torch.rand(2, 3, 40, 48, generator=generator)
    mean_style = inference.predict_styles(model, pca, preferred, unseen, "mean-style")
    assert torch.allclose(mean_style, preferred.styles.mean(0).expand(2, -1))
    weighted = inference.predict_styles(model, pca, preferred, unseen, "weighted-average")
    contents = inference.contents_of(model, unseen)
    cosine = torch.nn.functional.normalize(contents, dim=1) @ torch.nn.functional.normalize(preferred.contents, dim=1).T
    assert torch.allclose(weighted, cosine @ preferred.styles / 5, atol=1e-5)
    msm = inference.predict_styles(model, pca, preferred, unseen, "msm")
    assert msm.shape == (2, 512) and not torch.allclose(msm, mean_style)
    assert torch.equal(inference.enhance(model, pca, preferred, unseen, "identity"), inference.resize(unseen, 64))
    # the shared-encoder path equals one enhancer call per style
    both = inference.enhance_with_styles(model, unseen, [mean_style, msm])
    assert torch.allclose(both[1], inference.enhance(model, pca, preferred, unseen, "msm"), atol=1e-5)


def test_evaluate_user_scores_every_draw_and_leaves_out_too_small_n():
    model, pca, _ = _model()
    generator = torch.Generator().manual_seed(2)
    inputs = (torch.rand(9, 3, 64, 64, generator=generator) * 255).to(torch.uint8)
    targets = (inputs.float() * 0.8).to(torch.uint8)
    user = TestUser("u", [str(i) for i in range(9)], memory_loader(inputs, targets), pool=list(range(6)),
                    unseen=[6, 7, 8])
    result = evaluate_user(model, pca, user, Settings(num_preferred=(2, 7), draws=3, size=64))
    assert result.skipped == [7] and set(result.scores) == {2}
    identity = result.scores[2]["identity"]["psnr"]
    expected = float(psnr(inputs[6:].float() / 255, targets[6:].float() / 255).mean())
    assert identity == pytest.approx([expected] * 3, abs=1e-4)
    assert len(set(result.scores[2]["msm"]["psnr"])) == 3  # each draw its own preferred set
    assert set(result.examples) == {"input", "mean-style", "weighted-average", "msm", "target"}


# ---------------------------------------------------------------- pie evaluate


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Tiny shards, the same valid users' pairs as folders, a model file and the same model in the reference layout."""
    root = tmp_path_factory.mktemp("evaluate")
    index = write_msm_shards(root / "shards")
    model, pca, config = _model()
    save_model(root / "model.pt", model, pca, TrainConfig(model=config))
    write_reference(root / "reference", model, pca)
    folders = {}
    with tarfile.open(root / "shards" / "valid-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.rsplit(".", 2)[0] for name in members}, key=lambda k: int(k.split("/")[1]))
    for user, _ in VALID_LAYOUT[0]:
        user_keys = [k for k in keys if k.startswith(user)]
        splits = {k: json.loads(members[f"{k}.json"])["split"] for k in user_keys}
        ordered = [k for k in user_keys if splits[k] == "valid_ref"] + [k for k in user_keys if splits[k] == "valid"]
        originals, retouched = root / user / "originals", root / user / user
        originals.mkdir(parents=True), retouched.mkdir()
        for position, key in enumerate(ordered):
            (originals / f"{position:03d}.jpg").write_bytes(members[f"{key}.input.jpg"])
            (retouched / f"{position:03d}.jpg").write_bytes(members[f"{key}.target.jpg"])
        folders[user] = (originals, retouched)
    return {"root": root, "index": index, "folders": folders}


def _pie(*args, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PIE), "--root", str(root), *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def _evaluate_args(setup, *data, checkpoint: str = "model.pt", extra=()) -> list[str]:
    return ["evaluate", "--checkpoint", str(setup["root"] / checkpoint), "--num-preferred", "2,4",
            "--num-draws", "3", "--size", "64", "--examples", "2", *data, *extra]


def test_shards_and_folders_give_the_same_numbers_and_reference_checkpoints_load(setup, tmp_path):
    shards = _pie(*_evaluate_args(setup, "--shards", str(setup["root"] / "shards"),
                                  extra=["--json", str(tmp_path / "shards.json")]), root=tmp_path / "ws")
    assert shards.returncode == 0, shards.stderr
    pairs = []
    for originals, retouched in setup["folders"].values():
        pairs += ["--pairs", str(originals), str(retouched)]
    folders = _pie(*_evaluate_args(setup, *pairs, checkpoint="reference",
                                   extra=["--test-count", "3", "--json", str(tmp_path / "folders.json")]),
                   root=tmp_path / "ws")
    assert folders.returncode == 0, folders.stderr
    from_shards = json.loads((tmp_path / "shards.json").read_text())
    from_folders = json.loads((tmp_path / "folders.json").read_text())
    assert from_shards["users"] == from_folders["users"] == {"2": 2, "4": 2}
    for n, methods in from_shards["table"].items():
        for method, metrics in methods.items():
            for metric, value in metrics.items():
                assert from_folders["table"][n][method][metric]["mean"] == pytest.approx(value["mean"], abs=1e-5)
    assert set(from_folders["per_user"]) == set(from_shards["per_user"]) == {u for u, _ in VALID_LAYOUT[0]}
    assert "msm" in shards.stdout and "weighted-average" in shards.stdout  # the terminal table


def test_a_rerun_resumes_at_the_next_user_and_another_evaluation_needs_another_folder(setup, tmp_path):
    args = _evaluate_args(setup, "--shards", str(setup["root"] / "shards"),
                          extra=["--out", str(tmp_path / "run"), "--json", str(tmp_path / "first.json")])
    assert _pie(*args, root=tmp_path / "ws").returncode == 0
    lines = (tmp_path / "run" / "users.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 2
    (tmp_path / "run" / "users.jsonl").write_text(lines[0] + lines[1][:20])  # as if killed mid-write
    args[-1] = str(tmp_path / "second.json")
    second = _pie(*args, root=tmp_path / "ws")
    assert second.returncode == 0, second.stderr
    assert "2 users (1 now)" in second.stdout
    first, again = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("first", "second"))
    assert first["table"] == again["table"]
    other = _pie(*_evaluate_args(setup, "--shards", str(setup["root"] / "shards"),
                                 extra=["--out", str(tmp_path / "run"), "--draws", "random"]), root=tmp_path / "ws")
    assert other.returncode == 1 and "another evaluation" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_each_with_the_documented_exit_codes(setup, tmp_path):
    originals, retouched = setup["folders"]["10000011@N01"]
    broken = tmp_path / "broken"
    shutil.copytree(originals.parent, broken)
    (broken / "originals" / "001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    skipped = _pie(*_evaluate_args(setup, "--pairs", str(broken / "originals"), str(broken / "10000011@N01"),
                                   extra=["--test-count", "3"]), root=tmp_path / "ws")
    assert skipped.returncode == 0, skipped.stderr
    assert "pair 001 left out" in skipped.stderr and "Traceback" not in skipped.stderr
    missing = _pie(*_evaluate_args(setup, "--shards", str(setup["root"] / "shards"), checkpoint="nothing.pt"),
                   root=tmp_path / "ws")
    assert missing.returncode == 1 and "nothing.pt" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    garbage = _pie(*_evaluate_args(setup, "--shards", str(setup["root"] / "shards"),
                                   checkpoint=str(tmp_path / "garbage.pt")), root=tmp_path / "ws")
    assert garbage.returncode == 1 and "garbage.pt" in garbage.stderr and "Traceback" not in garbage.stderr
    usage = _pie("evaluate", "--num-preferred", "20,zero", root=tmp_path / "ws")
    assert usage.returncode == 2 and "--num-preferred" in usage.stderr
    no_users = _pie(*_evaluate_args(setup, "--shards", str(setup["root"] / "shards"),
                                    extra=["--num-preferred", "50"]), root=tmp_path / "ws")
    assert no_users.returncode == 0 and "left out at that N" in no_users.stderr


def test_the_html_page_renders_in_chromium_with_tables_and_example_sheets(setup, tmp_path):
    page = tmp_path / "evaluation.html"
    result = _pie(*_evaluate_args(setup, "--shards", str(setup["root"] / "shards"),
                                  extra=["--html", str(page), "--json", str(tmp_path / "e.json")]),
                  root=tmp_path / "ws")
    assert result.returncode == 0, result.stderr
    parsed = rendered(page, tmp_path)
    summary = json.loads((tmp_path / "e.json").read_text())
    rows = parsed.tables["summary"][1:]
    assert len(rows) == 2 * 4
    msm_row = next(row for row in rows if row[:2] == ["2", "msm"])
    assert msm_row[3].startswith(f"{summary['table']['2']['msm']['psnr']['mean']:.2f}")
    assert len(parsed.images) == 2 and all(src.startswith("data:image/jpeg;base64,") for src in parsed.images)
    shot = tmp_path / "shot.png"
    subprocess.run([*chromium(tmp_path), f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # photographs, not only text on white
