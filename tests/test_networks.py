"""The masked style modeling networks (model/networks.py), the reference layout and the complexity figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.complexity import format_table, inference_macs, parameter_counts
from model.networks import MSM, MSMConfig, StyleTransformer, interleave
from model.pca import StylePCA
from model.reference import (WeightsError, load_backbone, load_perceptual, read_reference, write_reference)

REFERENCE_KEYS = json.loads((Path(__file__).parent / "data" / "msm-reference-keys.json").read_text())
PAPER_COUNTS = {"style_embedding": 11_689_512, "content_embedding": 11_755_048, "masked_token": 512,
                "transformer_encoder": 50_924_032, "stylized_enhancer": 16_387_328, "total": 90_756_432}


@pytest.fixture(scope="module")
def paper() -> MSM:
    torch.manual_seed(0)
    return MSM(MSMConfig.paper()).eval()


def test_paper_config_has_the_reference_counts_keys_and_shapes(paper):
    assert parameter_counts(paper) == PAPER_COUNTS
    for name in MSM.MODULES:
        shapes = {key: list(value.shape) for key, value in paper.module(name).state_dict().items()}
        assert shapes == REFERENCE_KEYS[name], name


def test_small_config_shapes_and_enhancer_keeps_the_size():
    config = MSMConfig.small()
    model = MSM(config).eval()
    x = torch.rand(2, 3, config.embed_size, config.embed_size)
    with torch.no_grad():
        style = model.style_embedding(x, x.flip(1))
        assert style.shape == (2, 512) and (style < 0).any()  # no final ReLU: differences of signed features
        assert (model.style_embedding.embed(x) < 0).any()
        assert model.content_embedding(x).shape == (2, 512)
        token = model.masked_token(3)
        assert token.shape == (3, 512) and torch.allclose(token.norm(dim=1), torch.ones(3))
        image = torch.rand(2, 3, config.image_size, config.image_size)
        assert model.enhancer(image, style).shape == image.shape
    assert parameter_counts(model)["total"] < PAPER_COUNTS["total"] / 2
    with pytest.raises(ValueError, match="image_size"):
        MSMConfig(image_size=100)
    assert MSMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown MSMConfig fields: bogus"):
        MSMConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_tokens_interleave_as_the_reference_and_masked_tokens_are_ignored():
    styles, contents = torch.randn(2, 4, 512), torch.randn(2, 4, 512)
    reference = torch.zeros(2, 4, 1024)
    reference[:, :, 0::2], reference[:, :, 1::2] = styles, contents
    assert torch.equal(interleave(styles, contents), reference)
    transformer = StyleTransformer(MSMConfig.small()).eval()
    mask = torch.tensor([[True, False, False, False]] * 2)
    with torch.no_grad():
        base = transformer(styles, contents, mask)
        hidden, visible = styles.clone(), styles.clone()
        hidden[:, 0] += 5.0
        visible[:, 1] += 5.0
        assert torch.allclose(transformer(hidden, contents, mask), base, atol=1e-5)
        assert not torch.allclose(transformer(visible, contents, mask), base, atol=1e-3)


def test_reference_layout_round_trips_strictly_with_identical_outputs(paper, tmp_path):
    pca = StylePCA(torch.randn(512), torch.linalg.qr(torch.randn(512, 512))[0].T.contiguous(), torch.rand(512) + 0.1)
    write_reference(tmp_path, paper, pca)
    saved = torch.load(tmp_path / "stylized_enhancer.pth.tar", weights_only=True)
    assert all(key.startswith("module.") for key in saved["state_dict"])
    loaded, loaded_pca = read_reference(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        style = paper.style_embedding(x, x * 0.8)
        assert torch.equal(loaded.style_embedding(x, x * 0.8), style)
        assert torch.equal(loaded.content_embedding(x), paper.content_embedding(x))
        assert torch.equal(loaded.enhancer(x, style), paper.enhancer(x, style))
        assert torch.equal(loaded.masked_token(1), paper.masked_token(1))
    torch.testing.assert_close(loaded_pca.components, pca.components, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded_pca.std, pca.std)


def test_weights_that_do_not_fit_are_one_error_naming_file_and_key(paper, tmp_path):
    write_reference(tmp_path, paper)
    path = tmp_path / "masked_token.pth.tar"
    torch.save({"state_dict": {"module.masked_token.weight": torch.zeros(10, 1)}}, path)
    with pytest.raises(WeightsError, match=r"masked_token\.pth\.tar: key masked_token\.weight has shape \[10, 1\]"):
        read_reference(tmp_path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(WeightsError, match="missing key masked_token.weight"):
        read_reference(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        read_reference(tmp_path)
    torch.save({"state_dict": {"module.masked_token.weight": Path("/etc")}}, path)  # not a tensor: refused unpickled
    with pytest.raises(WeightsError, match="masked_token.pth.tar"):
        read_reference(tmp_path)


def test_backbone_and_perceptual_weights_load_from_local_files(tmp_path):
    from torchvision.models import resnet18

    source = resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = MSM(MSMConfig.paper())
    assert load_backbone(model, tmp_path / "resnet18.pth") > 0
    assert torch.equal(model.style_embedding.resnet18.conv1.weight, source.conv1.weight)
    assert torch.equal(model.enhancer.down2[0].conv1.weight, source.layer2[0].conv1.weight)
    embedding = load_perceptual(tmp_path / "resnet18.pth")
    torch.save({"state_dict": {f"module.resnet18.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "pienet_embedding.pth.tar")
    same = load_perceptual(tmp_path / "pienet_embedding.pth.tar")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(embedding(x).norm(dim=1), torch.ones(2)) and torch.equal(embedding(x), same(x))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="wrong.pth"):
        load_backbone(model, tmp_path / "wrong.pth")


def test_macs_per_module_and_the_table():
    config = MSMConfig.small()
    macs = inference_macs(config, num_preferred=20)
    assert all(isinstance(macs[name], int) for name in macs) and macs["total"] == sum(
        value for name, value in macs.items() if name != "total")
    half = inference_macs(MSMConfig(**{**config.to_dict(), "image_size": 64}))
    assert 3.5 < macs["stylized_enhancer"] / half["stylized_enhancer"] < 4.5
    table = format_table(parameter_counts(MSM(config)), macs)
    assert all(name in table for name in MSM.MODULES)
