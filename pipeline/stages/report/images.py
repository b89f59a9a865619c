"""Pictures for the report: small JPEG thumbnails as ``data:`` URIs, and PSNR against ground truth.

Where a workspace holds the true originals of crawled photos (the demo corpus
does: ``ROOT/ground-truth/flickr/<nsid>/<photo_id>.png``, 8-bit sRGB, the size of
the kept photo), :func:`ground_truth_psnr` scores the pseudo original and the
retouched photo against them. A degrader that works brings the pseudo
original closer to the truth than the retouched photo is (Kosugi & Yamasaki,
TCSVT 2023, Sec. IV-A).
"""

from __future__ import annotations

import base64
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from manifests import ids
from manifests.workspace import Workspace

from ...imageio import ImageError, read_image

#: Longest side of a thumbnail, pixels.
THUMB_SIDE = 128
#: Mean squared error floor, so identical images score a finite 148.1 dB instead of infinity.
MSE_FLOOR = 1e-10


def thumbnail_uri(path: Path, side: int = THUMB_SIDE, quality: int = 80) -> str | None:
    """A JPEG thumbnail of the image at ``path`` (longest side ``side`` px) as a data URI; None if unreadable."""
    try:
        pixels = read_image(path).as_uint8()
    except (ImageError, OSError):
        return None
    image = Image.fromarray(pixels)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two RGB arrays of one shape on the 0-255 scale, uint8 or float (peak 255; about 148 dB
    for identical images)."""
    error = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return 10.0 * math.log10(255.0 ** 2 / max(float(error), MSE_FLOOR))


def resized(pixels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``pixels`` resized (bicubic, antialiased when shrinking) to ``shape`` (height, width, ...), or as is."""
    if pixels.shape == shape:
        return pixels
    image = Image.fromarray(pixels).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(image)


def ground_truth_path(workspace: Workspace, nsid: str, photo_id: str) -> Path:
    """Where the true original of a crawled photo lies, if the workspace has one."""
    return workspace.inside(workspace.root / "ground-truth" / "flickr" / ids.check_nsid(nsid)
                            / f"{ids.check_photo_id(photo_id)}.png")


@dataclass
class GroundTruth:
    """PSNR (dB) of pseudo originals and of retouched photos against the true originals, per photo."""

    pseudo: list[float] = field(default_factory=list)
    retouched: list[float] = field(default_factory=list)
    unreadable: int = 0

    @property
    def count(self) -> int:
        return len(self.pseudo)

    def as_dict(self) -> dict:
        return {"count": self.count, "unreadable": self.unreadable,
                "pseudo_psnr": round(statistics.fmean(self.pseudo), 2) if self.pseudo else None,
                "retouched_psnr": round(statistics.fmean(self.retouched), 2) if self.retouched else None}


def ground_truth_psnr(workspace: Workspace, photos: dict[str, dict[str, dict]]) -> GroundTruth:
    """Score every kept, degraded photo that has a true original (others are not counted)."""
    result = GroundTruth()
    folder = workspace.root / "ground-truth" / "flickr"
    if not folder.is_dir():
        return result
    for nsid in sorted(photos):
        if not (folder / nsid).is_dir():
            continue
        for photo_id in sorted(photos[nsid], key=int):
            record = photos[nsid][photo_id]
            degraded = record.get("degraded") or {}
            if record.get("status") != "ok" or not degraded.get("file"):
                continue
            truth_path = ground_truth_path(workspace, nsid, photo_id)
            if not truth_path.exists():
                continue
            try:
                truth = read_image(truth_path).as_uint8()
                retouched = read_image(workspace.resolve_relative(record["file"])).as_uint8()
                pseudo = read_image(workspace.resolve_relative(degraded["file"])).as_uint8()
            except (ImageError, OSError, ValueError):
                result.unreadable += 1
                continue
            result.pseudo.append(psnr(resized(pseudo, truth.shape), truth))
            result.retouched.append(psnr(resized(retouched, truth.shape), truth))
    return result
