"""Full-resolution enhancement (model/personalize.py), the Personalizer API and `pie enhance`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from model.inference import enhance, encode_preferred, predict_styles, resize
from model.networks import MSM, MSMConfig, denormalize, normalize
from model.pca import StylePCA
from model.personalize import Personalizer, guided, network, residual
from model.reference import write_reference
from model.train import TrainConfig, save_model
from pipeline.imageio import read_image

PIE = Path(sys.executable).with_name("pie")
ROOT = Path(__file__).resolve().parents[1]


def small_config() -> MSMConfig:
    """The small networks at 64 px, embeddings at 32 px."""
    return MSMConfig(**{**MSMConfig.small().to_dict(), "image_size": 64, "embed_size": 32,
                        "resnet_blocks": (1, 1, 1, 1)})


def identity_pca() -> StylePCA:
    return StylePCA(mean=torch.zeros(512), components=torch.eye(512), std=torch.ones(512))


@pytest.fixture(scope="module")
def model() -> MSM:
    torch.manual_seed(0)
    return MSM(small_config()).eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, model, identity_pca(), TrainConfig(model=small_config()))
    return path


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture, uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([0.5 + 0.4 * np.sin(x / (7 + 3 * c) + y / (11 + c) + c) for c in range(3)], axis=2)
    return ((base + rng.normal(0, 0.03, base.shape)).clip(0, 1) * 255 + 0.5).astype(np.uint8)


def tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0


def preferred_pairs(count: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for k in range(count):
        original = photo(40 + 4 * k, 48, seed=k)
        pairs.append((original, (original.astype(np.float32) * 0.8 + 30).clip(0, 255).astype(np.uint8)))
    return pairs


def encoded(model):
    inputs = torch.cat([resize(tensor(o), 32) for o, _ in preferred_pairs()])
    targets = torch.cat([resize(tensor(r), 32) for _, r in preferred_pairs()])
    return encode_preferred(model, inputs, targets)


# ---------------------------------------------------------------- full-resolution methods


def test_residual_of_a_model_size_image_equals_the_network_output(model):
    x = tensor(photo(64, 64))
    preferred = encoded(model)
    out = enhance(model, identity_pca(), preferred, x)
    styles = predict_styles(model, identity_pca(), preferred, x)
    full = network(model, x, styles)
    torch.testing.assert_close(residual(x, resize(x, 64), out), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, out.clamp(0, 1), atol=1e-5, rtol=0)


def test_residual_upsamples_the_change_and_clamps():
    full = torch.full((1, 3, 90, 120), 0.5)
    small = resize(full, 32)
    out = residual(full, small, small + torch.tensor([0.1, -0.2, 0.9]).view(1, 3, 1, 1))
    assert out.shape == full.shape
    torch.testing.assert_close(out[0, :, 45, 60], torch.tensor([0.6, 0.3, 1.0]))


def test_guided_reproduces_a_global_affine_colour_transform():
    full = tensor(photo(150, 210, seed=3))
    small = resize(full, 64)
    matrix = torch.tensor([[0.7, 0.2, 0.0], [0.1, 0.6, 0.1], [-0.1, 0.1, 0.8]])
    offset = torch.tensor([0.05, 0.1, 0.12]).view(1, 3, 1, 1)

    def transform(images):
        return torch.einsum("ji,bihw->bjhw", matrix, images) + offset

    out = guided(full, small, transform(small))
    expected = transform(full).clamp(0, 1)
    assert out.shape == full.shape
    assert (out - expected).abs().mean() < 2e-3
    assert (out - expected).abs().max() < 2e-2


def test_guided_keeps_full_size_detail_that_residual_blurs():
    full = tensor(photo(160, 160, seed=4))
    small = resize(full, 32)
    target = (1.0 - small) * 0.9  # an inversion: the residual depends on the pixel, detail and all
    expected = (1.0 - full) * 0.9
    error_guided = (guided(full, small, target) - expected).abs().mean()
    error_residual = (residual(full, small, target) - expected).abs().mean()
    assert error_guided < 0.5 * error_residual


@pytest.mark.parametrize("size", [(50, 70), (64, 96), (5, 7)])
def test_network_pads_and_crops_to_the_input_size(model, size):
    x = tensor(photo(*size))
    styles = torch.randn(1, 512)
    out = network(model, x, styles)
    assert out.shape == x.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    if size == (64, 96):  # a multiple of 32: no padding, the enhancer's own output
        with torch.no_grad():
            direct = denormalize(normalize(x) + model.enhancer(normalize(x), styles)).clamp(0, 1)
        torch.testing.assert_close(out, direct)


# ---------------------------------------------------------------- Personalizer


def test_personalizer_needs_fit_before_enhance(model):
    personalizer = Personalizer(model, identity_pca())
    with pytest.raises(ValueError, match="fit"):
        personalizer.enhance(photo(20, 30))
    with pytest.raises(ValueError, match="at least one"):
        personalizer.fit([])
    with pytest.raises(ValueError, match="full-resolution"):
        Personalizer(model, identity_pca(), full_resolution="bicubic")
    with pytest.raises(ValueError, match="PCA"):
        Personalizer(model, None, method="msm")


@pytest.mark.parametrize("full_resolution", ["residual", "guided", "network"])
def test_personalizer_keeps_the_size_of_each_photo(model, full_resolution):
    personalizer = Personalizer(model, identity_pca(), full_resolution=full_resolution).fit(preferred_pairs())
    assert len(personalizer.preferred) == 3
    one = personalizer.enhance(photo(37, 53))
    assert one.shape == (37, 53, 3) and one.dtype == np.float32
    assert 0.0 <= one.min() and one.max() <= 1.0
    many = personalizer.enhance_batch([photo(37, 53), torch.from_numpy(photo(20, 90)).permute(2, 0, 1)])
    assert [m.shape for m in many] == [(37, 53, 3), (20, 90, 3)]
    np.testing.assert_allclose(many[0], one, atol=1e-5)


def test_personalizer_matches_the_model_size_enhancement(model):
    personalizer = Personalizer(model, identity_pca(), method="weighted-average").fit(preferred_pairs())
    x = photo(64, 64, seed=9)
    expected = enhance(model, identity_pca(), encoded(model), tensor(x), "weighted-average").clamp(0, 1)
    np.testing.assert_allclose(personalizer.enhance(x), expected[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_personalizer_from_a_model_file_and_a_reference_folder(model_file, model, tmp_path):
    from_file = Personalizer.from_checkpoint(model_file).fit(preferred_pairs())
    assert from_file.model.config.image_size == 64
    folder = tmp_path / "reference"
    write_reference(folder, model)  # no PCA: msm is refused, the other methods work
    with pytest.raises(ValueError, match="PCA"):
        Personalizer.from_checkpoint(folder)
    from_folder = Personalizer.from_checkpoint(folder, method="mean-style").fit(preferred_pairs())
    assert from_folder.enhance(photo(30, 40)).shape == (30, 40, 3)


# ---------------------------------------------------------------- pie enhance


def pie(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([str(PIE), "--root", str(cwd / "ws"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def enhance_inputs(tmp_path_factory) -> Path:
    """A preferred folder (NAME.png beside NAME_input.png), photos and a damaged file."""
    folder = tmp_path_factory.mktemp("enhance")
    (folder / "preferred").mkdir()
    for k, (original, retouched) in enumerate(preferred_pairs()):
        write_png(folder / "preferred" / f"p{k}_input.png", original)
        write_png(folder / "preferred" / f"p{k}.png", retouched)
    (folder / "photos").mkdir()
    stored = photo(40, 56, seed=5)  # stored 56 wide, 40 high; shown upright as 40 x 56
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "pie test camera"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(stored).save(folder / "photos" / "rotated.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)
    write_png(folder / "photos" / "plain.png", photo(30, 45, seed=6))
    Image.fromarray(photo(33, 35, seed=7)).save(folder / "photos" / "other.tif")
    good = (folder / "photos" / "rotated.jpg").read_bytes()
    (folder / "photos" / "broken.jpg").write_bytes(good[:len(good) // 3])
    return folder


def test_pie_enhance_keeps_size_orientation_and_metadata(enhance_inputs, model_file, tmp_path):
    out = tmp_path / "out"
    done = pie("enhance", "--checkpoint", model_file, "--preferred", enhance_inputs / "preferred",
               enhance_inputs / "photos", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    problems = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(problems) == 1 and "broken.jpg" in problems[0], done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["other.png", "plain.png", "rotated.jpg"]
    assert "3 photos enhanced" in done.stdout and "1 failed" in done.stdout

    source, result = Image.open(enhance_inputs / "photos" / "rotated.jpg"), Image.open(out / "rotated.jpg")
    assert result.size == source.size == (56, 40)
    assert result.info["exif"] == source.info["exif"]
    assert result.getexif()[0x0112] == 6
    assert result.info["icc_profile"] == source.info["icc_profile"]
    # The pixels were enhanced upright and stored back rotated: upright decodes agree with the API.
    personalizer = Personalizer.from_checkpoint(model_file).fit(preferred_pairs())
    upright = read_image(enhance_inputs / "photos" / "rotated.jpg")
    assert (upright.height, upright.width) == (56, 40)
    expected = personalizer.enhance(upright.as_float())
    written = read_image(out / "rotated.jpg").as_float()
    assert np.abs(written - expected).mean() < 0.02
    assert Image.open(out / "plain.png").size == (45, 30)
    assert Image.open(out / "other.png").size == (35, 33)

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = pie("enhance", "--checkpoint", model_file, "--preferred", enhance_inputs / "preferred",
                enhance_inputs / "photos", "--out", out, cwd=tmp_path)
    assert again.returncode == 0 and "0 photos enhanced, 3 already done" in again.stdout, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_pie_enhance_from_a_reference_folder(enhance_inputs, model, tmp_path):
    folder = tmp_path / "reference"
    write_reference(folder, model, identity_pca())
    inputs = tmp_path / "originals"
    inputs.mkdir()
    retouched = tmp_path / "retouched"
    retouched.mkdir()
    for k, (original, target) in enumerate(preferred_pairs()):
        write_png(inputs / f"a{k}.png", original)
        write_png(retouched / f"a{k}.png", target)
    out = tmp_path / "out"
    done = pie("enhance", "--checkpoint", folder, "--preferred", retouched, "--preferred-inputs", inputs,
               "--full-resolution", "network", enhance_inputs / "photos" / "plain.png", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Image.open(out / "plain.png").size == (45, 30)


def test_pie_enhance_refuses_an_unusable_checkpoint(enhance_inputs, tmp_path):
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"not a checkpoint at all")
    done = pie("enhance", "--checkpoint", broken, "--preferred", enhance_inputs / "preferred",
               enhance_inputs / "photos" / "plain.png", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(broken) in lines[0], done.stderr


def test_pie_enhance_usage_and_nothing_enhanced(enhance_inputs, model_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = pie("enhance", "--checkpoint", model_file, "--preferred", empty, enhance_inputs / "photos",
               "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2 and "no preferred pairs" in done.stderr, done.stderr
    done = pie("enhance", "--checkpoint", model_file, "--preferred", enhance_inputs / "preferred",
               enhance_inputs / "photos" / "broken.jpg", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 1 and "nothing enhanced" in done.stderr, done.stderr


def test_a_rerun_removes_only_its_own_half_written_outputs(model, tmp_path):
    from pipeline.stages.enhance import run_enhance

    write_png(tmp_path / "photo.png", photo(30, 40))
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.png.part-123-456").write_bytes(b"half a png")  # left by a killed run
    (out / "notes.part-2.txt").write_text("the user's own file")
    personalizer = Personalizer(model, identity_pca()).fit(preferred_pairs())
    summary = run_enhance(personalizer, [tmp_path / "photo.png"], out)
    assert summary.enhanced == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.part-2.txt", "photo.png"]
