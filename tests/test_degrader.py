"""Tests of the DSN degrading network library (degrader/)."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from degrader.dsn import (DSN, AffineCoupling, DSNConfig, count_trainable_parameters, default_encoder_filters,
                          encoder_from_vgg16, macs_per_pixel)
from degrader.infer import degrade_batch, degrade_image, enhance_batch
from degrader.train import (CheckpointError, TrainConfig, load_degrader, psnr, read_checkpoint, train,
                            weights_digest)

TESTS_DIR = Path(__file__).resolve().parent


# ---------------------------------------------------------------- real-photo pairs


def _photo(name: str, width: int) -> np.ndarray:
    image = getattr(data, name)()
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _darken(image: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for an unretouched original: gamma 1.6, 85 % contrast."""
    return np.rint(255 * 0.85 * (image / 255.0) ** 1.6).astype(np.uint8)


class PhotoPairs:
    """(enhanced, original) pairs: a downscaled real photo and its darkened version."""

    def __init__(self, names, width=64):
        self.names = list(names)
        self.images = [_photo(name, width) for name in names]

    def __len__(self):
        return len(self.images)

    def load(self, index):
        return self.images[index], _darken(self.images[index])

    def name(self, index):
        return self.names[index]


TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
VAL_PHOTOS = ("astronaut", "coffee")


def resume_config(steps=6):
    return TrainConfig(model=DSNConfig.tiny(), steps=steps, batch_size=2, crop_size=32,
                       val_every=3, checkpoint_every=3)


def run_resume_training(checkpoint_path, kill_at_step=None, on_step=None):
    """Train ``resume_config`` on one CPU thread; with ``kill_at_step`` the process SIGKILLs itself then.

    Bit-identical results need the same thread count in every run: CPU
    convolutions sum in a thread-dependent order.
    """
    def on_log(step, metrics):
        if on_step is not None:
            on_step(step)
        if step == kill_at_step:
            os.kill(os.getpid(), 9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(resume_config(), PhotoPairs(TRAIN_PHOTOS), PhotoPairs(VAL_PHOTOS[:1]), checkpoint_path,
                     device="cpu", on_log=on_log)
    finally:
        torch.set_num_threads(threads)


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Replace every trainable weight by Gaussian noise, so no subnet is zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DSN trained for 30 steps on real-photo pairs, with its log."""
    log = []
    config = TrainConfig(model=DSNConfig.tiny(), steps=30, batch_size=4, crop_size=32, val_every=15,
                         checkpoint_every=15)
    path = tmp_path_factory.mktemp("trained") / "dsn.pt"
    model = train(config, PhotoPairs(TRAIN_PHOTOS), PhotoPairs(VAL_PHOTOS), path, device="cpu",
                  on_log=lambda step, metrics: log.append((step, metrics)))
    return model, log, path


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_coupling_blocks_invert_exactly(dtype, tolerance):
    model = DSN(DSNConfig.tiny()).to(dtype)
    _randomize(model, seed=1)
    features = torch.randn(2, 32, 20, 17, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.no_grad():
        mapped = features
        for coupling in model.couplings:
            mapped = coupling(mapped)
        restored = mapped
        for coupling in reversed(model.couplings):
            restored = coupling.inverse(restored)
    assert (mapped - features).abs().mean() > 0.1  # the blocks do change their input
    assert (restored - features).abs().max() < tolerance


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_paper_size_coupling_block_inverts_exactly(dtype, tolerance):
    block = AffineCoupling(DSNConfig.paper()).to(dtype)
    _randomize(block, seed=3, scale=0.02)
    features = torch.randn(1, 64, 12, 10, generator=torch.Generator().manual_seed(4), dtype=dtype)
    with torch.no_grad():
        mapped = block(features)
        restored = block.inverse(mapped)
    assert (mapped - features).abs().mean() > 0.1
    assert (restored - features).abs().max() < tolerance


def _reference_keys(blocks=8, residual_blocks=3):
    """State-dict keys of the reference InvRescaleNet (Inv_arch.py, Subnet_constructor.py)."""
    se = ["conv_du.0.weight", "conv_du.0.bias", "conv_du.1.weight", "conv_du.2.weight", "conv_du.2.bias"]
    res = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "prelu.weight"] + [f"so.{k}" for k in se]
    subnet = (["conv1.weight", "conv1.bias"]
              + [f"res{i}.{k}" for i in range(1, residual_blocks + 1) for k in res]
              + ["conv2.weight", "conv2.bias", "prelu.weight"] + [f"soca.{k}" for k in se])
    keys = ["operations.0.haar_weights1", "operations.0.haar_weights2"]
    for block in range(1, blocks + 1):
        keys += [f"operations.{block}.{net}.{k}" for net in "FGH" for k in subnet]
    return keys + [f"operations.{blocks + 1}.haar_weights1", f"operations.{blocks + 1}.haar_weights2"]


def test_paper_configuration_sizes_and_reference_key_names():
    config = DSNConfig.paper()
    model = DSN(config)
    assert count_trainable_parameters(model) == 11_573_568
    assert sum(buffer.numel() for buffer in model.buffers()) == 2 * (64 * 3 * 9 + 64 * 64 * 9)
    assert list(model.state_dict()) == _reference_keys()
    assert len(model.state_dict()) == 964
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes["operations.0.haar_weights1"] == (64, 3, 3, 3)
    assert shapes["operations.9.haar_weights2"] == (64, 64, 3, 3)
    assert shapes["operations.1.F.conv1.weight"] == (64, 32, 3, 3)
    assert shapes["operations.8.H.res3.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["operations.8.H.res3.so.conv_du.0.weight"] == (4, 64, 1, 1)
    assert shapes["operations.4.G.conv2.weight"] == (32, 64, 3, 3)
    assert config == DSNConfig.from_dict(config.to_dict())


def test_small_configs_follow_the_reference_layout():
    model = DSN(DSNConfig.tiny())
    assert list(model.state_dict()) == _reference_keys(blocks=2, residual_blocks=2)
    assert count_trainable_parameters(model) == 42_696


@pytest.mark.parametrize("config", [DSNConfig.paper(), DSNConfig.tiny()])
def test_macs_per_pixel_matches_the_convolutions_run(config):
    model = DSN(config)
    counted = []

    def count(module, inputs, output):
        if output.shape[-2:] == inputs[0].shape[-2:] and output.shape[-1] > 1:
            counted.append(module.weight.numel() * output.shape[-2] * output.shape[-1])

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(count)
    height, width = 6, 5
    with torch.no_grad():
        model(torch.rand(1, 3, height, width))
    encoder_macs = 2 * sum(buffer.numel() for buffer in model.operations[0].buffers())
    assert macs_per_pixel(config) == sum(counted) // (height * width) + encoder_macs
    if config == DSNConfig.paper():
        assert macs_per_pixel(config) == 11_578_752


def test_fresh_network_is_identity_inside_the_border():
    model = DSN(DSNConfig.tiny())
    image = torch.from_numpy(_photo("coffee", 40)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        for reverse in (False, True):
            output = model(image, rev=reverse)
            assert output.shape == image.shape
            assert (output - image)[..., 1:-1, 1:-1].abs().max() < 1e-5
            assert torch.allclose(output[..., 0, 0], image[..., 0, 0] * 4 / 9, atol=1e-5)


def test_default_encoder_filters_are_deterministic_and_well_conditioned():
    config = DSNConfig.paper()
    first, second = default_encoder_filters(config)
    again = default_encoder_filters(config)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    frame = first.reshape(64, 27).double()
    assert torch.allclose(frame.T @ frame, torch.eye(27, dtype=torch.float64) / 9, atol=1e-6)
    mix = second[:, :, 1, 1].double()
    assert torch.allclose(mix @ mix.T, torch.eye(64, dtype=torch.float64), atol=1e-6)
    assert not torch.equal(first, default_encoder_filters(config, seed=1)[0])


def test_encoder_filters_from_a_vgg16_state_dict(tmp_path):
    generator = torch.Generator().manual_seed(5)
    state = {"features.0.weight": torch.randn(64, 3, 3, 3, generator=generator),
             "features.0.bias": torch.randn(64, generator=generator),
             "features.2.weight": torch.randn(64, 64, 3, 3, generator=generator),
             "features.2.bias": torch.randn(64, generator=generator),
             "classifier.6.weight": torch.randn(10, 4, generator=generator)}
    torch.save(state, tmp_path / "vgg16.pth")
    first, second = encoder_from_vgg16(tmp_path / "vgg16.pth")
    assert torch.equal(first, state["features.0.weight"]) and torch.equal(second, state["features.2.weight"])
    model = DSN(DSNConfig.paper(), (first, second))
    for encoder in (model.operations[0], model.operations[9]):
        assert torch.equal(encoder.haar_weights1, first) and torch.equal(encoder.haar_weights2, second)
    assert count_trainable_parameters(model) == 11_573_568  # the filters stay frozen

    torch.save({"conv1_1.weight": first, "conv1_2.weight": second}, tmp_path / "caffe.weight")
    assert torch.equal(encoder_from_vgg16(tmp_path / "caffe.weight")[1], second)
    torch.save({"features.0.weight": first}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth"):
        encoder_from_vgg16(tmp_path / "partial.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="garbage.pth"):
        encoder_from_vgg16(tmp_path / "garbage.pth")


# ---------------------------------------------------------------- training


def test_training_loss_falls_and_validation_beats_doing_nothing(trained):
    _, log, _ = trained
    losses = [metrics["loss"] for _, metrics in log]
    assert [step for step, _ in log] == list(range(1, 31))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    validation = PhotoPairs(VAL_PHOTOS)
    untouched = np.mean([psnr(*validation.load(i)) for i in range(len(validation))])
    final = log[-1][1]
    assert final["val_psnr_degrade"] > untouched + 5
    assert final["val_psnr_enhance"] > untouched + 3
    assert {"val_psnr_degrade", "val_psnr_enhance"} <= set(log[14][1]) and "val_psnr_degrade" not in log[13][1]
    assert all(metrics["lr"] == 2e-4 for _, metrics in log)


def test_killed_and_resumed_run_equals_a_straight_run(tmp_path):
    straight = run_resume_training(tmp_path / "straight.pt")

    killed_path = tmp_path / "killed.pt"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_degrader as t; "
            "t.run_resume_training(sys.argv[2], kill_at_step=5)")
    result = subprocess.run([sys.executable, "-c", code, str(TESTS_DIR), str(killed_path)],
                            capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    assert read_checkpoint(killed_path)["step"] == 3
    assert not list(tmp_path.glob(".*.tmp"))

    steps = []
    resumed = run_resume_training(killed_path, on_step=steps.append)
    assert steps == [4, 5, 6]
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    straight_state, resumed_state = read_checkpoint(tmp_path / "straight.pt"), read_checkpoint(killed_path)
    assert straight_state["step"] == resumed_state["step"] == 6
    assert torch.equal(straight_state["data"]["order"], resumed_state["data"]["order"])
    assert straight_state["data"]["rng"] == resumed_state["data"]["rng"]
    for index, state in straight_state["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed_state["optimizer"]["state"][index]["exp_avg_sq"])
    assert load_degrader(tmp_path / "straight.pt")[1] == load_degrader(killed_path)[1]


def test_finished_run_is_not_trained_again(trained):
    model, _, path = trained
    config = TrainConfig(model=DSNConfig.tiny(), steps=30, batch_size=4, crop_size=32, val_every=15,
                         checkpoint_every=15)
    steps = []
    again = train(config, PhotoPairs(TRAIN_PHOTOS), None, path, device="cpu",
                  on_log=lambda step, metrics: steps.append(step))
    assert steps == []
    assert weights_digest(again.state_dict()) == weights_digest(model.state_dict())


def test_learning_rate_halves_at_milestones(tmp_path):
    config = TrainConfig(model=DSNConfig.tiny(), steps=5, batch_size=2, crop_size=24,
                         lr_milestones=(2, 4), learning_rate=1e-3, checkpoint_every=100)
    rates = []
    train(config, PhotoPairs(TRAIN_PHOTOS[:2]), None, tmp_path / "lr.pt", device="cpu",
          on_log=lambda step, metrics: rates.append(metrics["lr"]))
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_pairs_smaller_than_the_crop_are_refused(tmp_path):
    config = TrainConfig(model=DSNConfig.tiny(), steps=1, batch_size=2, crop_size=100)
    with pytest.raises(ValueError, match="smaller than crop_size 100"):
        train(config, PhotoPairs(TRAIN_PHOTOS), None, tmp_path / "c.pt", device="cpu")


# ---------------------------------------------------------------- checkpoints


def test_damaged_or_foreign_checkpoints_raise_checkpoint_error(trained, tmp_path):
    _, _, path = trained
    payload = path.read_bytes()
    pairs = PhotoPairs(TRAIN_PHOTOS)
    config = TrainConfig(model=DSNConfig.tiny(), steps=31, batch_size=4, crop_size=32)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(payload[: len(payload) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    for damaged in (truncated, garbage):
        with pytest.raises(CheckpointError, match=damaged.name):
            train(config, pairs, None, damaged, device="cpu")
        with pytest.raises(CheckpointError, match=damaged.name):
            load_degrader(damaged)

    mismatched = tmp_path / "mismatched.pt"
    mismatched.write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"mismatched.pt.*crop_size: 32 in the checkpoint, 48 now"):
        train(TrainConfig(model=DSNConfig.tiny(), steps=31, batch_size=4, crop_size=48), pairs, None,
              mismatched, device="cpu")
    with pytest.raises(CheckpointError, match=r"mismatched.pt.*model\.coupling_blocks: 2 in the checkpoint, 4 now"):
        train(TrainConfig(model=DSNConfig.small(), steps=31, batch_size=4, crop_size=32), pairs, None,
              mismatched, device="cpu")

    changed = tmp_path / "changed.pt"
    changed.write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"changed.pt: the training pairs changed since this checkpoint "
                                              r"\(4 pairs then, 5 now\)"):
        train(config, PhotoPairs(TRAIN_PHOTOS + ("astronaut",)), None, changed, device="cpu")
    with pytest.raises(CheckpointError, match=r"\(4 pairs then, 4 now\)"):  # the same count, other pairs
        train(config, PhotoPairs(TRAIN_PHOTOS[::-1]), None, changed, device="cpu")

    wrong_weights = tmp_path / "wrong_weights.pt"
    torch.save(DSN(DSNConfig.tiny()).state_dict(), wrong_weights)
    with pytest.raises(CheckpointError, match="wrong_weights.pt.*do not fit"):
        load_degrader(wrong_weights)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "pie.degrader.dsn.v1", "payload": PhotoPairs(VAL_PHOTOS[:1])}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        read_checkpoint(unsafe)
    assert issubclass(CheckpointError, ValueError)


def test_reference_state_dict_loads_strictly(tmp_path):
    reference = DSN(DSNConfig.paper())
    _randomize(reference, seed=6, scale=0.01)
    torch.save(reference.state_dict(), tmp_path / "degrading_model.pth")
    model, digest = load_degrader(tmp_path / "degrading_model.pth")
    assert weights_digest(reference.state_dict()) == digest and len(digest) == 64
    assert torch.equal(model.operations[3].G.res2.conv1.weight, reference.operations[3].G.res2.conv1.weight)
    assert not model.training


def test_weights_digest_is_stable_and_sensitive(trained):
    model, _, path = trained
    loaded, digest = load_degrader(path)
    assert digest == weights_digest(model.state_dict()) == weights_digest(loaded.state_dict())
    changed = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    changed["operations.1.F.conv1.bias"][0] += 1e-6
    assert weights_digest(changed) != digest


# ---------------------------------------------------------------- inference


def test_tiled_pass_matches_a_whole_pass(trained):
    model, _, _ = trained
    image = _photo("astronaut", 120)  # 120 x 120, tiles of 64 start at 0, 32, 56
    whole = degrade_batch(model, [image])[0].astype(int)
    tiled = degrade_image(model, image, tile=64, overlap=32).astype(int)
    difference = np.abs(tiled - whole)
    assert difference.mean() < 0.1 and difference.max() <= 2
    assert np.array_equal(degrade_image(model, image, tile=128, overlap=32), whole)  # a single tile
    assert np.abs(whole - image.astype(int)).mean() > 10  # the model does degrade


def test_batched_equals_unbatched_and_keeps_order(trained):
    model, _, _ = trained
    images = [_photo(name, 40) for name in TRAIN_PHOTOS]
    images.append(np.ascontiguousarray(images[0][:17, :23]))
    batched = degrade_batch(model, images, max_batch_pixels=3 * 40 * 40)
    for image, output in zip(images, batched):
        assert output.dtype == np.uint8 and output.shape == image.shape
        # Batched convolutions round differently in the last float bit, which
        # may flip an 8-bit rounding at a rare pixel.
        difference = np.abs(output.astype(int) - degrade_batch(model, [image])[0])
        assert difference.max() <= 1 and np.count_nonzero(difference) <= 0.002 * difference.size
    enhanced = enhance_batch(model, images[:2])
    assert not np.array_equal(enhanced[0], batched[0])


def test_images_above_the_batch_bound_are_tiled(trained):
    model, _, _ = trained
    image = _photo("chelsea", 100)  # 100 x 67
    bounded = degrade_batch(model, [image], max_batch_pixels=40 * 40)[0]
    assert np.array_equal(bounded, degrade_image(model, image, tile=40, overlap=10))
    difference = np.abs(bounded.astype(int) - degrade_batch(model, [image])[0])
    assert difference.mean() < 0.2


def test_inference_rejects_non_uint8_rgb(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        degrade_batch(model, [np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="overlap"):
        degrade_image(model, np.zeros((8, 8, 3), np.uint8), tile=16, overlap=16)
