"""How much of the demo users' content-dependent retouching the pseudo pairs keep.

Masked style modeling can beat the content-blind mean style only where a
user's retouching depends on the photo's content (Kosugi & Yamasaki,
"Personalized Image Enhancement Featuring Masked Style Modeling", IEEE TCSVT
2023, Sec. I). The demo corpus builds its users that way (two looks chosen by
the scene's colour balance, :mod:`pipeline.stages.demo.corpus`), and records
which look every photo got; the model, though, learns from the pseudo pairs
(pseudo original, retouched), and the degrader decides how much of the look
survives in them.

:func:`look_headroom` measures that with the ground truth, without any
network: for every photo, a colour mapping (quadratic in RGB, least squares,
:func:`colour_features`) is fitted on the user's other photos, once on all of
them (the best content-blind style) and once on those of the photo's own look
(a content-aware style that knows the look), then applied to the photo and
scored by PSNR against the retouched photo. The difference is the headroom of
a content-aware method. On the true pairs (true original, retouched) it is the
looks' full effect; on the pseudo pairs it is what is left for the model to
find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from manifests.workspace import Workspace

from ...imageio import ImageError, read_image
from ..report.images import ground_truth_path, psnr

#: Side (pixels) of the square every image is scored at; the mappings are global, so detail does not matter.
SIDE = 64


def colour_features(image: np.ndarray) -> np.ndarray:
    """Float RGB ``H x W x 3`` in [0, 1] -> ``(H*W) x 10``: 1, R, G, B and their squares and products."""
    red, green, blue = image.reshape(-1, 3).T
    return np.stack([np.ones_like(red), red, green, blue, red * red, green * green, blue * blue,
                     red * green, red * blue, green * blue], axis=1)


@dataclass
class _Photo:
    look: str
    normal: np.ndarray  # X^T X of its pixels (10 x 10)
    moment: np.ndarray  # X^T Y (10 x 3)
    features: np.ndarray
    target: np.ndarray


def _photo(look: str, source: np.ndarray, target: np.ndarray) -> _Photo:
    features = colour_features(source)
    flat = target.reshape(-1, 3)
    return _Photo(look, features.T @ features, features.T @ flat, features, flat)


def _score(photo: _Photo, others: list[_Photo]) -> float:
    """PSNR (dB) of ``photo`` mapped by the least-squares mapping of ``others``."""
    normal = sum(other.normal for other in others) + 1e-6 * np.eye(10)
    mapping = np.linalg.solve(normal, sum(other.moment for other in others))
    return psnr(np.clip(photo.features @ mapping, 0.0, 1.0) * 255.0, photo.target * 255.0)


@dataclass
class Headroom:
    """Mean PSNR (dB) of the content-blind and the look-aware mapping, on true and on pseudo pairs."""

    true_blind: list[float] = field(default_factory=list)
    true_aware: list[float] = field(default_factory=list)
    pseudo_blind: list[float] = field(default_factory=list)
    pseudo_aware: list[float] = field(default_factory=list)

    @staticmethod
    def _mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    @property
    def true_gain(self) -> float:
        """dB a look-aware style gains over the best content-blind one on the true pairs."""
        return self._mean(self.true_aware) - self._mean(self.true_blind)

    @property
    def pseudo_gain(self) -> float:
        """The same on the pseudo pairs the model learns from."""
        return self._mean(self.pseudo_aware) - self._mean(self.pseudo_blind)

    def line(self) -> str:
        if not self.true_blind:
            return "content: no user had photos of both looks with ground truth"
        return (f"content: a look-aware colour mapping beats the best content-blind one by {self.true_gain:+.2f} dB "
                f"on the true pairs and by {self.pseudo_gain:+.2f} dB on the pseudo pairs "
                f"({len(self.true_blind)} photos; PSNR {self._mean(self.pseudo_blind):.2f} -> "
                f"{self._mean(self.pseudo_aware):.2f} dB on the pseudo pairs)")


def _small(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0


def look_headroom(workspace: Workspace, photos: dict[str, dict[str, dict]], corpus: Path) -> Headroom:
    """:class:`Headroom` over every degraded photo with ground truth whose look ``corpus`` records.

    ``photos`` is ``{nsid: {photo_id: latest record}}``
    (:func:`pipeline.stages.status.flickr_photos`). A photo counts when its
    user has at least one other photo of each look, so both mappings are
    fitted; unreadable files are passed over.
    """
    result = Headroom()
    for nsid in sorted(photos):
        true_pairs, pseudo_pairs = [], []
        for record in photos[nsid].values():
            degraded = record.get("degraded") or {}
            meta_path = Path(corpus) / nsid / f"{record['photo_id']}.json"
            truth_path = ground_truth_path(workspace, nsid, record["photo_id"])
            if record.get("status") != "ok" or not degraded.get("file") or not meta_path.is_file() \
                    or not truth_path.is_file():
                continue
            try:
                look = json.loads(meta_path.read_text())["look"]
                retouched = _small(read_image(workspace.resolve_relative(record["file"])).as_uint8())
                truth = _small(read_image(truth_path).as_uint8())
                pseudo = _small(read_image(workspace.resolve_relative(degraded["file"])).as_uint8())
            except (ImageError, OSError, ValueError, KeyError):
                continue
            true_pairs.append(_photo(look, truth, retouched))
            pseudo_pairs.append(_photo(look, pseudo, retouched))
        for pairs, blind, aware in ((true_pairs, result.true_blind, result.true_aware),
                                    (pseudo_pairs, result.pseudo_blind, result.pseudo_aware)):
            for index, photo in enumerate(pairs):
                others = pairs[:index] + pairs[index + 1:]
                same = [other for other in others if other.look == photo.look]
                if not same or len(same) == len(others):
                    continue
                blind.append(_score(photo, others))
                aware.append(_score(photo, same))
    return result
