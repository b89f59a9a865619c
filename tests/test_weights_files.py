"""Weights and checkpoint files holding pickled Python objects are refused in one line, without torch's
advice to load them with ``weights_only=False`` (which would run code from the file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from degrader.dsn import encoder_from_vgg16
from degrader.train import read_checkpoint as read_degrader_checkpoint
from manifests.files import load_error_reason
from model.reference import load_perceptual
from model.train import read_checkpoint as read_trainer_checkpoint


class Payload:
    """Stands for any object an untrusted file may carry."""


@pytest.fixture
def unsafe(tmp_path) -> Path:
    path = tmp_path / "unsafe.pt"
    torch.save({"format": "pie.degrader.dsn.v1", "state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, path)
    return path


@pytest.mark.parametrize("load", [read_degrader_checkpoint, lambda path: read_trainer_checkpoint(path, "pie.msm.step1"),
                                  encoder_from_vgg16, load_perceptual])
def test_every_loader_names_the_object_and_gives_no_unsafe_advice(unsafe, load):
    with pytest.raises(ValueError) as error:
        load(unsafe)
    message = str(error.value)
    assert message.startswith(f"{unsafe}: ") and len(message.splitlines()) == 1
    assert f"{__name__}.Payload" in message and "never unpickles" in message
    assert "weights_only" not in message and "\x1b[" not in message


def test_other_load_errors_keep_their_first_line():
    assert load_error_reason(RuntimeError("PytorchStreamReader failed\nmore detail")) == (
        "RuntimeError: PytorchStreamReader failed")
    assert load_error_reason(EOFError()) == "EOFError"


def test_the_cli_reports_an_unsafe_checkpoint_in_one_line(unsafe, tmp_path):
    pie = str(Path(sys.executable).with_name("pie"))
    result = subprocess.run([pie, "--root", str(tmp_path / "ws"), "degrade", "--checkpoint", str(unsafe)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unsafe.pt" in result.stderr and "weights_only" not in result.stderr
