"""The bundled sample corpus: real photographs, cropped and retouched per user by content.

``pie demo`` and the tests need a Flickr-like corpus without any download. It
is made from the colour photographs that installed packages ship
(scikit-image's ``data`` folder and matplotlib's sample data). Each of a
user's photos is a seeded random crop of one of those photographs (35-95 % of
its sides, anywhere in it), flipped or not, given a mild exposure change
(up to +-0.3 stops), scaled (by default to a longest edge of 700-960 px), and
then retouched in one of the user's two looks chosen by what the crop shows.

The looks follow the paper's premise that a user's retouching depends on the
photo's content (Kosugi & Yamasaki, "Personalized Image Enhancement Featuring
Masked Style Modeling", IEEE TCSVT 2023, Sec. I): a *warm* scene (skin, fur,
coffee, retina; :func:`blue_red_balance` at most :data:`WARM_COOL_THRESHOLD`)
gets one look and a *cool* one (sky, space, blue cloth) the other, opposite on
brightness, white balance and saturation around a common enhancing look
(:func:`look_pair`, :data:`LOOK_CENTRE`), so a user's mean style is wrong for
both kinds of photo. The looks are tone curves, white balance and saturation,
the family of the conventional methods of ``rules/`` that the degrader learns
to undo.

The result is written in the folder format served by
:mod:`pipeline.replay.server`; the true original of every photo (the crop
before retouching, 8-bit sRGB PNG of the same size) goes to a separate folder,
``TRUTH/<nsid>/<photo_id>.png``, that the server does not see.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.stages.crawl.splits import user_split
from pipeline.imageio import encode_jpeg, encode_png, read_image

#: Every colour photograph of scikit-image's ``data`` folder and matplotlib's ``sample_data``. Left out:
#: the synthetic RGB images (``chessboard_RGB``, ``color``, ``phantom``), the RGBA cut-outs on a
#: transparent background (``horse``, ``logo``, ``Minduka_Present_Blue_Pack``) and the grey ones.
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


#: :func:`blue_red_balance` at or below which a scene is warm; about the median over crops of the
#: sample photographs (coffee, retina, fur and skin below; sky, space and blue cloth above).
WARM_COOL_THRESHOLD = -0.1

#: The sample users' looks lie around this enhancing look (brighter, more contrast and colour), as
#: retouching on Flickr mostly enhances and as the degrader learns from the enhancing rules; each
#: user's two looks sit on either side of it at :data:`LOOK_SPREAD` times the offsets of
#: :func:`look_pair`.
LOOK_CENTRE = Style(gamma=0.65, contrast=0.4, saturation=1.35)
LOOK_SPREAD = 0.7


def blue_red_balance(image: np.ndarray) -> float:
    """``(mean B - mean R) / (mean R + mean G + mean B)`` of RGB: negative for warm scenes, positive for cool.

    Dimensionless, in [-1, 1]; an overall exposure gain does not change it.
    """
    mean = image.reshape(-1, 3).astype(np.float64).mean(0)
    return float((mean[2] - mean[0]) / max(float(mean.sum()), 1e-6))


def look_pair(rng: np.random.Generator, centre: Style = Style(), spread: float = 1.0) -> tuple[Style, Style]:
    """Two looks opposite around ``centre`` on brightness, warmth and saturation (a random sign per axis).

    Offsets from the centre, times ``spread``: gamma factor ``exp(+-[0.25, 0.5])``,
    warmth ``+-[0.06, 0.15]``, saturation factor ``exp(+-[0.3, 0.6])``, and
    contrast drawn in [-0.2, 0.4] for each look; no lift, no vignette.
    """
    signs = rng.choice([-1.0, 1.0], size=3)

    def look(direction: float) -> Style:
        gamma, warmth, saturation = (direction * spread * signs * rng.uniform([0.25, 0.06, 0.3], [0.5, 0.15, 0.6]))
        return Style(gamma=float(centre.gamma * np.exp(gamma)), warmth=float(centre.warmth + warmth),
                     saturation=float(centre.saturation * np.exp(saturation)),
                     contrast=float(centre.contrast + spread * rng.uniform(-0.2, 0.4)))

    return look(1.0), look(-1.0)


@dataclass(frozen=True)
class UserLooks:
    """A sample user's content-dependent retouching: ``warm`` for warm scenes, ``cool`` for the others."""

    warm: Style
    cool: Style
    threshold: float = WARM_COOL_THRESHOLD

    def look_for(self, image: np.ndarray) -> Style:
        """The look this user gives ``image`` (RGB), a function of its :func:`blue_red_balance` only."""
        return self.warm if blue_red_balance(image) <= self.threshold else self.cool

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Retouch float32 RGB in [0, 1] in the look its content calls for."""
        return self.look_for(image).apply(image)


def sample_looks(count: int, seed: int) -> list[UserLooks]:
    """``count`` users' looks from a seeded generator: each :func:`look_pair` around :data:`LOOK_CENTRE`
    goes to two users, once in each order, so no single content-blind style serves either of them."""
    rng = np.random.default_rng(seed)
    users: list[UserLooks] = []
    while len(users) < count:
        first, second = look_pair(rng, LOOK_CENTRE, LOOK_SPREAD)
        users += [UserLooks(first, second), UserLooks(second, first)]
    return users[:count]


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
    """A random crop (35-95 % of the sides), flipped or not, exposed by +-0.3 stops, scaled to ``longest_edge``."""
    height, width = image.shape[:2]
    scale = rng.uniform(0.35, 0.95)
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
    resized = cv2.resize(np.ascontiguousarray(crop), size, interpolation=interpolation)
    return np.clip(resized * np.float32(2.0 ** rng.uniform(-0.3, 0.3)), 0.0, 1.0).astype(np.float32)


def build_corpus(folder: Path, *, users: int = 12, photos_per_user: int = 30, valid_users: int = 2,
                 longest_edge: tuple[int, int] = (700, 960), seed: int = 0, truth: Path | None = None) -> list[str]:
    """Write the sample corpus into ``folder`` and return its NSIDs.

    ``longest_edge`` is the range of the photos' longest edges in pixels; the
    default keeps Flickr's 640-px size ``z`` available for every photo. With
    ``truth``, the true original of every photo (the crop before retouching)
    is written to ``truth/<nsid>/<photo_id>.png`` (8-bit sRGB, the photo's
    size). Deterministic for a seed. Existing files are overwritten.
    """
    sources = {name: read_image(path).as_float() for name, path in sorted(source_photographs().items())}
    names = sorted(sources)
    looks = sample_looks(users, seed)
    nsids = sample_nsids(users, valid_users)
    for user_index, (nsid, user_looks) in enumerate(zip(nsids, looks)):
        user_dir = Path(folder) / nsid
        user_dir.mkdir(parents=True, exist_ok=True)
        (user_dir / "user.json").write_text(json.dumps({
            "username": f"sample-user-{user_index:02d}", "realname": f"Sample User {user_index:02d}",
            "path_alias": f"sample{user_index:02d}",
            "looks": {"warm": user_looks.warm.__dict__, "cool": user_looks.cool.__dict__,
                      "threshold": user_looks.threshold}}, indent=1))
        if truth is not None:
            (Path(truth) / nsid).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, user_index])
        for photo_index in range(photos_per_user):
            name = names[int(rng.integers(len(names)))]
            original = _crop(sources[name], rng, longest_edge)
            look = user_looks.look_for(original)
            photo_id = str(50_000_000_000 + user_index * 100_000 + photo_index * 97)
            pixels = (look.apply(original) * 255.0 + 0.5).astype(np.uint8)
            (user_dir / f"{photo_id}.jpg").write_bytes(encode_jpeg(pixels, quality=92))
            if truth is not None:
                (Path(truth) / nsid / f"{photo_id}.png").write_bytes(
                    encode_png((original * 255.0 + 0.5).astype(np.uint8)))
            digest = hashlib.sha256(f"{nsid}/{photo_id}".encode()).hexdigest()
            (user_dir / f"{photo_id}.json").write_text(json.dumps({
                "title": f"{Path(name).stem} {photo_index}",
                "license": SAMPLE_LICENSES[int(digest[:4], 16) % len(SAMPLE_LICENSES)],
                "date_taken": f"2021-{1 + photo_index % 12:02d}-{1 + user_index:02d} 12:00:00",
                "source_photograph": name,
                "look": "warm" if look is user_looks.warm else "cool",
            }))
    return nsids
