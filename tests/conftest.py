"""Shared fixtures: real photographs from scikit-image, loopback without proxies."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Loopback servers must never be reached through a proxy from the environment.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's 'coffee'), uint8 RGB 400x600."""
    from skimage import data

    return data.coffee()
