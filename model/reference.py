"""The reference implementation's checkpoint layout, and local pretrained weights.

The public masked-style-modeling code saves one file per module,
``<module>.pth.tar`` = ``{'state_dict': ...}`` from ``nn.DataParallel`` (every
key prefixed ``module.``), plus ``pca_components.npy`` (rows = scikit-learn
``components_ * sqrt(explained_variance_)``) and ``pca_mean.npy``; its
published pretrained models come this way. This module is the only place in
``model/`` that reads weight files: ``torch.load(weights_only=True)`` and
``numpy.load(allow_pickle=False)`` only, every failure one :class:`WeightsError`
naming the file (and the first key that does not fit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from manifests.files import load_error_reason

from .networks import MSM, MSMConfig, _features, _resnet
from .pca import StylePCA

REFERENCE_FILES = {name: f"{name}.pth.tar" for name in MSM.MODULES}
PCA_FILES = ("pca_components.npy", "pca_mean.npy")
#: The network sizes, which the reference layout does not record; written by
#: :func:`write_reference` beside the module files (the reference code ignores it).
CONFIG_FILE = "pie-config.json"


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the first bad key."""


def _read(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for damaged or unsafe files
        raise WeightsError(f"{path}: not a readable weights file ({load_error_reason(error)})") from None


def load_state(module: nn.Module, state: dict, source) -> None:
    """Strict ``load_state_dict`` whose error names ``source`` and the first missing, unexpected or misshapen key."""
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: missing key {key}")
        if not isinstance(state[key], torch.Tensor) or tuple(state[key].shape) != tuple(value.shape):
            shape = list(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise WeightsError(f"{source}: key {key} has shape {shape}, expected {list(value.shape)}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]}")
    module.load_state_dict(state, strict=True)


def _strip(state: dict) -> dict:
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state.items()}


def read_reference(folder: str | os.PathLike, config: MSMConfig | None = None, *,
                   allow_missing: tuple[str, ...] = ()) -> tuple[MSM, StylePCA | None]:
    """An MSM (eval mode) and its PCA from a folder in the reference layout.

    ``config`` defaults to the folder's :data:`CONFIG_FILE` when it has one,
    else the paper's networks. Modules named in ``allow_missing`` may lack
    their file and keep random weights; the PCA is None when its files are
    absent.
    """
    folder = Path(folder)
    model = MSM(config or read_reference_config(folder) or MSMConfig.paper())
    for name, file_name in REFERENCE_FILES.items():
        path = folder / file_name
        if not path.exists():
            if name in allow_missing:
                continue
            raise WeightsError(f"{path}: missing")
        saved = _read(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
            raise WeightsError(f"{path}: no 'state_dict' in the file")
        load_state(model.module(name), _strip(saved["state_dict"]), path)
    return model.eval(), read_reference_pca(folder)


def read_reference_config(folder: Path) -> MSMConfig | None:
    """The network sizes in the folder's :data:`CONFIG_FILE`, or None without one."""
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return MSMConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise WeightsError(f"{path}: not a network config ({error})") from None


def read_reference_pca(folder: Path) -> StylePCA | None:
    """The PCA of ``pca_components.npy`` / ``pca_mean.npy``, or None if absent."""
    paths = [folder / name for name in PCA_FILES]
    if not all(path.exists() for path in paths):
        return None
    try:
        rows, mean = (np.load(path, allow_pickle=False) for path in paths)
    except (OSError, ValueError) as error:
        raise WeightsError(f"{folder}: unreadable PCA file ({error})") from None
    if rows.ndim != 2 or mean.shape != (rows.shape[1],):
        raise WeightsError(f"{paths[0]}: shape {rows.shape} does not fit pca_mean.npy {mean.shape}")
    rows = torch.from_numpy(rows.astype(np.float64))
    std = rows.norm(dim=1)
    components = rows / torch.where(std > 0, std, 1.0)[:, None]
    return StylePCA(torch.from_numpy(mean.astype(np.float32)), components.float(), std.float())


def _save(path: Path, payload) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(payload, bytes):
            temporary.write_bytes(payload)
        elif isinstance(payload, np.ndarray):
            with open(temporary, "wb") as file:
                np.save(file, payload)
        else:
            torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_reference(folder: str | os.PathLike, model: MSM, pca: StylePCA | None = None) -> None:
    """Write ``model`` (and ``pca``) in the reference layout, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, file_name in REFERENCE_FILES.items():
        state = {f"module.{key}": value.detach().cpu() for key, value in model.module(name).state_dict().items()}
        _save(folder / file_name, {"state_dict": state})
    _save(folder / CONFIG_FILE, (json.dumps(model.config.to_dict(), indent=2) + "\n").encode())
    if pca is not None:
        rows = pca.components.double() * pca.std.double()[:, None]
        _save(folder / PCA_FILES[0], rows.numpy())
        _save(folder / PCA_FILES[1], pca.mean.double().numpy())


def load_backbone(model: MSM, path: str | os.PathLike) -> int:
    """Initialise every ResNet of ``model`` from a local torchvision ResNet-18 state dict; returns tensors loaded."""
    path = Path(path)
    state = _read(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    state = _strip(state.get("state_dict", state))
    loaded = 0
    for resnet in (model.style_embedding.resnet18, model.content_embedding.resnet18):
        load_state(resnet, state, path)
        loaded += len(state)
    encoder = _resnet(model.config)
    load_state(encoder, state, path)
    enhancer = model.enhancer
    for target, source in ((enhancer.down0[0], encoder.conv1), (enhancer.down0[1], encoder.bn1),
                           (enhancer.down1[1], encoder.layer1), (enhancer.down2, encoder.layer2),
                           (enhancer.down3, encoder.layer3), (enhancer.down4[0], encoder.layer4)):
        target.load_state_dict(source.state_dict())
    return loaded + len(state) - 2  # the enhancer has no fc


class PerceptualEmbedding(nn.Module):
    """The PieNet embedding of the perceptual loss: ResNet-18 without the last ReLU, pooled, L2-normalised."""

    def __init__(self, config: MSMConfig | None = None):
        super().__init__()
        self.resnet18 = _resnet(config or MSMConfig.paper())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.resnet18.avgpool(_features(self.resnet18, images, final_relu=False)), 1)
        return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def load_perceptual(path: str | os.PathLike) -> PerceptualEmbedding:
    """A frozen :class:`PerceptualEmbedding` from the reference ``pienet_embedding.pth.tar`` or ResNet-18 weights."""
    path = Path(path)
    state = _read(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    state = _strip(state.get("state_dict", state))
    if not any(key.startswith("resnet18.") for key in state):
        state = {f"resnet18.{key}": value for key, value in state.items()}
    embedding = PerceptualEmbedding()
    load_state(embedding, state, path)
    return embedding.requires_grad_(False).eval()
