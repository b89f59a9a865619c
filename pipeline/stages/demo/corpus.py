"""The bundled sample corpus: real photographs, cropped and retouched per user.

``pie demo`` and the tests need a Flickr-like corpus without any download. It
is made from the colour photographs that installed packages ship
(scikit-image's ``data`` folder and matplotlib's sample data): each sample
user gets a retouching style of its own (tone curve, white balance, saturation,
vignette), and each of its photos is a seeded random crop of one of those
photographs, flipped or not, scaled (by default to a longest edge of 700-960 px), then
retouched in the user's style. The result is written in the folder format
served by :mod:`pipeline.replay.server`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.stages.crawl.splits import user_split
from pipeline.imageio import encode_jpeg, read_image

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                  "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)

#: Licence ids given to the sample photos, cycling; "0" (All Rights Reserved) is
#: there so that the licence filter has something to filter.
SAMPLE_LICENSES = ("4", "5", "9", "2", "11", "0", "1", "10")


def source_photographs() -> dict[str, Path]:
    """Paths of the real photographs shipped by scikit-image and matplotlib."""
    import matplotlib
    import skimage

    skimage_dir = Path(skimage.__file__).parent / "data"
    sample_dir = Path(matplotlib.get_data_path()) / "sample_data"
    found = {name: skimage_dir / name for name in SKIMAGE_PHOTOS if (skimage_dir / name).is_file()}
    found.update({name: sample_dir / name for name in MATPLOTLIB_PHOTOS if (sample_dir / name).is_file()})
    if len(found) < 4:
        raise FileNotFoundError("fewer than four sample photographs found in scikit-image and matplotlib")
    return found


@dataclass(frozen=True)
class Style:
    """A sample user's retouching: all parameters dimensionless, identity at the defaults.

    ``gamma`` < 1 brightens; ``contrast`` is the strength of an S-curve in
    [-1, 1]; ``saturation`` scales chroma; ``warmth`` shifts red up and blue
    down (negative cools); ``lift`` raises the black point; ``vignette`` darkens
    the corners by up to that fraction.
    """

    gamma: float = 1.0
    contrast: float = 0.0
    saturation: float = 1.0
    warmth: float = 0.0
    lift: float = 0.0
    vignette: float = 0.0

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Retouch float32 RGB in [0, 1]."""
        out = np.clip(image, 0.0, 1.0) ** np.float32(self.gamma)
        out = out + np.float32(self.contrast) * out * (1.0 - out) * (2.0 * out - 1.0) * -2.0
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (out - grey) * np.float32(self.saturation)
        out = out * np.array([1.0 + self.warmth, 1.0, 1.0 - self.warmth], dtype=np.float32)
        out = np.float32(self.lift) + (1.0 - np.float32(self.lift)) * out
        if self.vignette:
            height, width = out.shape[:2]
            y, x = np.ogrid[-1.0:1.0:height * 1j, -1.0:1.0:width * 1j]
            falloff = 1.0 - np.float32(self.vignette) * np.clip((x * x + y * y) / 2.0, 0.0, 1.0) ** 1.5
            out = out * falloff[:, :, None].astype(np.float32)
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def sample_styles(count: int, seed: int) -> list[Style]:
    """``count`` distinct retouching styles drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    styles = []
    for _ in range(count):
        styles.append(Style(gamma=float(rng.uniform(0.7, 1.3)), contrast=float(rng.uniform(-0.4, 0.8)),
                            saturation=float(rng.uniform(0.4, 1.6)), warmth=float(rng.uniform(-0.12, 0.12)),
                            lift=float(rng.uniform(0.0, 0.08)), vignette=float(rng.choice([0.0, 0.3, 0.5]))))
    return styles


def sample_nsids(count: int, valid: int) -> list[str]:
    """``count`` NSIDs of which exactly ``valid`` fall in the valid split."""
    chosen_valid, chosen_train = [], []
    number = 48_600_000
    while len(chosen_valid) < valid or len(chosen_train) < count - valid:
        nsid = f"{number}@N0{number % 9 + 1}"
        target = chosen_valid if user_split(nsid) == "valid" else chosen_train
        if len(target) < (valid if target is chosen_valid else count - valid):
            target.append(nsid)
        number += 7919
    return sorted(chosen_valid + chosen_train)


def _crop(image: np.ndarray, rng: np.random.Generator, longest_edge: tuple[int, int]) -> np.ndarray:
    height, width = image.shape[:2]
    scale = rng.uniform(0.55, 0.95)
    crop_h, crop_w = max(32, int(height * scale)), max(32, int(width * scale * rng.uniform(0.8, 1.2)))
    crop_w = min(crop_w, width)
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    crop = image[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    longest = int(rng.integers(longest_edge[0], longest_edge[1] + 1))
    factor = longest / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), size, interpolation=interpolation)


def build_corpus(folder: Path, *, users: int = 12, photos_per_user: int = 30, valid_users: int = 2,
                 longest_edge: tuple[int, int] = (700, 960), seed: int = 0) -> list[str]:
    """Write the sample corpus into ``folder`` and return its NSIDs.

    ``longest_edge`` is the range of the photos' longest edges in pixels; the
    default keeps Flickr's 640-px size ``z`` available for every photo.
    Deterministic for a seed. Existing files are overwritten.
    """
    sources = {name: read_image(path).as_float() for name, path in sorted(source_photographs().items())}
    names = sorted(sources)
    styles = sample_styles(users, seed)
    nsids = sample_nsids(users, valid_users)
    for user_index, (nsid, style) in enumerate(zip(nsids, styles)):
        user_dir = Path(folder) / nsid
        user_dir.mkdir(parents=True, exist_ok=True)
        (user_dir / "user.json").write_text(json.dumps({
            "username": f"sample-user-{user_index:02d}", "realname": f"Sample User {user_index:02d}",
            "path_alias": f"sample{user_index:02d}", "style": style.__dict__}, indent=1))
        rng = np.random.default_rng([seed, user_index])
        for photo_index in range(photos_per_user):
            name = names[int(rng.integers(len(names)))]
            retouched = style.apply(_crop(sources[name], rng, longest_edge))
            photo_id = str(50_000_000_000 + user_index * 100_000 + photo_index * 97)
            pixels = (retouched * 255.0 + 0.5).astype(np.uint8)
            (user_dir / f"{photo_id}.jpg").write_bytes(encode_jpeg(pixels, quality=92))
            digest = hashlib.sha256(f"{nsid}/{photo_id}".encode()).hexdigest()
            (user_dir / f"{photo_id}.json").write_text(json.dumps({
                "title": f"{Path(name).stem} {photo_index}",
                "license": SAMPLE_LICENSES[int(digest[:4], 16) % len(SAMPLE_LICENSES)],
                "date_taken": f"2021-{1 + photo_index % 12:02d}-{1 + user_index:02d} 12:00:00",
                "source_photograph": name,
            }))
    return nsids
