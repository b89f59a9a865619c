"""The masked style modeling trainer (model/train.py, model/pca.py, model/losses.py) and `pie train`."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from model.losses import edge_aware_tv, psnr, step1_loss
from model.networks import MSMConfig
from model.pca import CovarianceAccumulator, StylePCA
from model.train import (CHECKPOINT_FORMAT, CheckpointError, TrainConfig, TrainData, load_model, read_checkpoint,
                         train)
from msm_fixtures import PRESET_USERS, write_msm_shards

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

PIE = Path(sys.executable).with_name("pie")


def tiny_config(**changes) -> TrainConfig:
    """The small networks at 64 px (embeddings at 32 px): a few seconds per epoch on a CPU."""
    model = MSMConfig.small()
    model = type(model)(**{**model.to_dict(), "image_size": 64, "embed_size": 32})
    values = dict(model=model, step1_epochs=3, step2_epochs=3, step1_batch_size=8, step2_batch_size=4,
                  learning_rate=1e-3, num_preferred=3, valid_preferred=4, valid_pairs_per_user=4,
                  shuffle_buffer=16, num_workers=0, seed=1, save_every=3, mixed_precision=False)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_msm_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def data(shards) -> TrainData:
    return TrainData.from_index(shards, PRESET_USERS)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data) -> Path:
    """One uninterrupted run of every part, shared by the tests that compare with it."""
    out = tmp_path_factory.mktemp("straight")
    train(tiny_config(), data, out)
    return out


def _all_weights(path: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(path)
    return model.state_dict()


# ---------------------------------------------------------------- PCA and losses


def test_pca_equals_an_svd_of_the_centred_styles():
    rng = np.random.default_rng(0)
    styles = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + rng.normal(size=16)
    accumulator = CovarianceAccumulator(16)
    for chunk in np.array_split(styles, 7):
        accumulator.update(torch.from_numpy(chunk))
    pca = accumulator.fit(16)
    centred = styles - styles.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(pca.mean.numpy(), styles.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pca.std.numpy(), singular / np.sqrt(len(styles) - 1), rtol=1e-4)
    # Same directions; signs follow scikit-learn: the largest-magnitude entry is positive.
    signs = np.sign(vt[np.arange(16), np.abs(vt).argmax(1)])
    np.testing.assert_allclose(pca.components.numpy(), vt * signs[:, None], atol=1e-4)
    assert (pca.components.numpy()[np.arange(16), np.abs(vt).argmax(1)] > 0).all()
    batch = torch.from_numpy(styles[:5]).float()
    whitened = pca.project(batch) / pca.std
    torch.testing.assert_close(pca.to_style(whitened), batch, atol=1e-4, rtol=1e-4)
    assert pca.loss(whitened, batch).item() < 1e-4


def test_pca_with_fewer_styles_than_dimensions_keeps_zero_variance_directions():
    accumulator = CovarianceAccumulator(8)
    accumulator.update(torch.randn(4, 8))
    pca = accumulator.fit(8)
    assert pca.components.shape == (8, 8) and (pca.std[3:] < 1e-5).all()
    assert torch.isfinite(pca.to_style(torch.randn(2, 8))).all()
    with pytest.raises(ValueError, match="at least 2"):
        CovarianceAccumulator(8).fit()
    restored = StylePCA.from_state_dict(pca.state_dict())
    assert torch.equal(restored.components, pca.components) and restored.samples == 4


def test_psnr_and_tv_on_known_values():
    image = torch.rand(2, 3, 16, 16) * 0.8
    assert psnr(image + 0.1, image).allclose(torch.full((2,), 20.0), atol=1e-3)  # 10 log10(1 / 0.01)
    assert (psnr(image, image) > 100).all()
    assert edge_aware_tv(image, torch.full_like(image, 0.3)).item() == 0.0
    ramp = torch.linspace(0, 1, 16).expand(1, 3, 16, 16).contiguous()
    flat = torch.zeros_like(ramp)
    # A residual that changes where the input is flat costs more than one that follows the input's edges.
    assert edge_aware_tv(flat, ramp) > edge_aware_tv(ramp * 40, ramp)
    loss, terms = step1_loss(image, torch.zeros_like(image), image)
    assert loss.item() == 0.0 and terms == {"l1": 0.0, "perceptual": 0.0, "tv": 0.0}


# ---------------------------------------------------------------- training


def test_all_parts_train_losses_fall_and_a_rerun_skips_everything(straight_run, data):
    with open(straight_run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    step1 = [row for row in rows if row["step"] == "step1"]
    step2 = [row for row in rows if row["step"] == "step2"]
    assert [row["epoch"] for row in step1] == ["1", "2", "3"] and len(step2) == 3
    assert float(step1[-1]["loss"]) < float(step1[0]["loss"])
    assert float(step2[-1]["loss"]) < float(step2[0]["loss"])
    assert all(np.isfinite(float(row["valid_psnr"])) for row in rows)
    for name in ("step1.pt", "step1-best.pt", "pca.pt", "step2.pt", "step2-best.pt", "model.pt"):
        assert (straight_run / name).is_file(), name
    model, pca, config = load_model(straight_run / "model.pt")
    assert config == tiny_config() and pca.components.shape == (512, 512)
    before = {path.name: path.stat().st_mtime_ns for path in straight_run.glob("*.pt")}
    summary = train(tiny_config(), data, straight_run)
    assert summary.ran == [] and summary.skipped == ["step1", "pca", "step2"]
    assert {path.name: path.stat().st_mtime_ns for path in straight_run.glob("*.pt") if path.name != "model.pt"} \
        == {name: value for name, value in before.items() if name != "model.pt"}


KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    from model.train import TrainData, train
    from msm_fixtures import PRESET_USERS
    from test_train import tiny_config
    part, at = sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(int(sys.argv[5]))  # float sums are bit-identical only at the same thread count
    def on_log(name, metrics):
        if name == part and metrics.get("batch") is not None and metrics.get("epoch") == 1 and metrics["batch"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    train(tiny_config(), TrainData.from_index(sys.argv[1], PRESET_USERS), sys.argv[2], on_log=on_log)
""")


def test_kill_9_then_the_same_call_equals_an_uninterrupted_run(straight_run, shards, data, tmp_path):
    out = tmp_path / "msm"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (Path(__file__).resolve().parents[1], Path(__file__).parent)))}
    # Second epoch, fourth batch: two batches after the last checkpoint (every 3 steps), before the next.
    for part, at in (("step1", 4), ("step2", 4)):
        done = subprocess.run([sys.executable, "-c", KILLER, str(shards), str(out), part, str(at),
                               str(torch.get_num_threads())], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == -9, done.stderr[-2000:]
    assert read_checkpoint(out / "step2.pt", CHECKPOINT_FORMAT)["epoch"] == 1
    train(tiny_config(), data, out)
    straight, resumed = _all_weights(straight_run / "model.pt"), _all_weights(out / "model.pt")
    assert straight.keys() == resumed.keys()
    different = [name for name in straight if not torch.equal(straight[name], resumed[name])]
    assert different == []
    assert (out / "metrics.csv").read_text() .count("\n") == (straight_run / "metrics.csv").read_text().count("\n")


def test_checkpoint_problems_are_one_clear_error(straight_run, data, tmp_path):
    out = tmp_path / "msm"
    out.mkdir()
    (out / "step1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"step1\.pt: not a readable checkpoint"):
        train(tiny_config(), data, out)
    torch.save({"format": "something else"}, out / "step1.pt")
    with pytest.raises(CheckpointError, match=r"step1\.pt: not a pie\.msm\.train/1 file"):
        train(tiny_config(), data, out)
    shutil.copy(straight_run / "step1.pt", out / "step1.pt")
    with pytest.raises(CheckpointError, match="another configuration.*learning_rate"):
        train(tiny_config(learning_rate=5e-4), data, out)
    with pytest.raises(CheckpointError, match="no step-1 weights"):
        train(tiny_config(), data, tmp_path / "empty", parts=["step2"])


def test_bad_samples_are_skipped_and_counted_and_small_users_named_once(tmp_path, caplog):
    shards = write_msm_shards(tmp_path / "shards")
    spoiled = tmp_path / "shards" / "train-000000.tar"
    with tarfile.open(spoiled) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    with tarfile.open(spoiled, "w") as tar:
        broken = next(member.name for member, _ in members if member.name.endswith("target.jpg"))
        for member, payload in members:
            if member.name == broken:
                payload = b"\xff\xd8 broken"
                member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    data = TrainData.from_index(shards, PRESET_USERS)
    caplog.set_level("WARNING")
    train(tiny_config(step1_epochs=1, step2_epochs=1), data, tmp_path / "msm")
    with open(tmp_path / "msm" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert int(rows[0]["skipped"]) >= 1
    named = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert len(named) == 1 and "10000004@N01" in named[0]


# ---------------------------------------------------------------- DDP


DDP_SCRIPT = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from model.train import TrainData, setup_distributed, train, weights_digest
    from msm_fixtures import PRESET_USERS
    from test_train import tiny_config
    import model.train as trainer
    device, rank, world = setup_distributed("cpu")
    captured = {}
    original = trainer._run_step
    def spy(step, config, ctx, model):
        state = original(step, config, ctx, model)
        captured[step.name] = weights_digest({k: v for k, v in step.net.state_dict().items()})
        return state
    trainer._run_step = spy
    train(tiny_config(step1_epochs=2, step2_epochs=1), TrainData.from_index(sys.argv[1], PRESET_USERS), sys.argv[2],
          rank=rank, world_size=world)
    with open(f"{sys.argv[2]}/rank{rank}.txt", "w") as file:
        file.write(f"{world} {captured['step1']} {captured['step2']}")
    dist.destroy_process_group()
""")


def test_two_gloo_processes_train_and_end_with_the_same_weights(shards, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "msm"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (Path(__file__).resolve().parents[1], Path(__file__).parent))), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(shards), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = ((out / f"rank{rank}.txt").read_text().split() for rank in (0, 1))
    assert first[0] == "2" and first == second
    assert (out / "model.pt").is_file()


# ---------------------------------------------------------------- the command


def _pie(*args, cwd=None, timeout=600):
    return subprocess.run([str(PIE), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_pie_train_dry_run_prints_the_paper_model_and_the_data(shards, tmp_path):
    done = _pie("--root", tmp_path, "train", "--dry-run", "--model", "paper", "--shards", shards.parent)
    assert done.returncode == 0, done.stderr
    assert "90,756,432" in done.stdout and "stylized_enhancer" in done.stdout and "16,387,328" in done.stdout
    assert "train     3 shards" in done.stdout and "valid     1 shards" in done.stdout


def test_pie_train_runs_from_the_shell_and_fails_cleanly_without_shards(shards, tmp_path):
    root = tmp_path / "root"
    done = _pie("--root", root, "train", "--model", "small", "--image-size", "64", "--embed-size", "32",
                "--shards", shards.parent, "--step1-epochs", "1", "--step2-epochs", "1", "--num-preferred", "3",
                "--step1-batch-size", "8", "--step2-batch-size", "4", "--workers", "0", "--valid-pairs-per-user", "2")
    assert done.returncode == 0, done.stderr
    assert "ran step1, pca, step2" in done.stdout and (root / "msm" / "model.pt").is_file()
    assert "perceptual loss term is off" in done.stderr and "random weights" in done.stderr
    missing = _pie("--root", tmp_path / "nothing", "train")
    assert missing.returncode == 1 and "run `pie shard` first" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
