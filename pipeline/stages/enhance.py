"""``pie enhance``: a user's preferred pairs applied to new photos (see :mod:`model.personalize`).

Each photo is decoded upright (EXIF orientation applied), enhanced at its own
size, turned back to the orientation it was stored in and written with the
input's EXIF bytes and ICC profile, so that a viewer shows the output as it
showed the input. Outputs are ``OUT/<stem>.<ext>``: the input's extension for
JPEG and PNG files, ``.png`` otherwise, always 8 bits per channel. A finished
output is never rewritten, so a rerun resumes; each is written under a
temporary name and renamed when complete, and a temporary that a killed run
left is removed by the next. A photo that cannot be read costs one warning
line and the run goes on.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from manifests.files import PARTIAL_MARK, write_atomic

from ..imageio import (ImageError, _apply_orientation, decode_image, float_to_uint8, folder_images, images_by_stem,
                      read_image)

log = logging.getLogger("pie.enhance")

#: Endings kept for the output; any other input is written as PNG.
KEPT_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}

#: The orientation that undoes each EXIF orientation (only 6 and 8 are not their own inverse).
INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}

#: Suffix of originals in a single preferred folder: ``name_input.jpg`` beside ``name.jpg``.
INPUT_SUFFIX = "_input"


def collect_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given (tried whatever their ending), and the images directly inside each folder (sorted),
    without repeats."""
    found: dict[Path, None] = {}
    for path in paths:
        for image in (folder_images(path) if path.is_dir() else [path]):
            found.setdefault(image, None)
    return list(found)


def find_pairs(preferred: Path, preferred_inputs: Path | None = None) -> list[tuple[Path, Path]]:
    """The preferred (original, retouched) files, sorted by stem.

    With ``preferred_inputs``: originals there and retouched photos in
    ``preferred``, matched by file stem. Without: one folder holding
    ``name.ext`` (retouched) and ``name_input.ext`` (original).
    """
    if preferred_inputs is not None:
        retouched = images_by_stem(folder_images(preferred))
        originals = images_by_stem(folder_images(preferred_inputs))
    else:
        files = folder_images(preferred)
        originals = images_by_stem(p for p in files if p.stem.endswith(INPUT_SUFFIX) and p.stem != INPUT_SUFFIX)
        originals = {stem[:-len(INPUT_SUFFIX)]: path for stem, path in originals.items()}
        retouched = images_by_stem(p for p in files if not p.stem.endswith(INPUT_SUFFIX))
    return [(originals[stem], retouched[stem]) for stem in sorted(set(originals) & set(retouched))]


class PairReader:
    """The preferred pairs' pixels, read one pair at a time; an unreadable pair is a warning and is left out."""

    def __init__(self, pairs: list[tuple[Path, Path]]):
        self.pairs, self.read, self.bad = pairs, 0, 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for original, retouched in self.pairs:
            try:
                pixels = read_image(original).as_float(), read_image(retouched).as_float()
            except ImageError as error:
                self.bad += 1
                log.warning(f"preferred pair skipped: {error}")
                continue
            self.read += 1
            yield pixels


def output_path(image: Path, out: Path) -> Path:
    """``OUT/<stem>.<ext>``: the input's ending for JPEG and PNG, ``.png`` otherwise."""
    suffix = image.suffix if image.suffix.lower() in KEPT_SUFFIXES else ".png"
    return out / f"{image.stem}{suffix}"


@dataclass(frozen=True)
class Photo:
    """A decoded input: upright float pixels and what the output must carry back."""

    pixels: np.ndarray
    exif: bytes | None
    icc_profile: bytes | None
    stored_orientation: int


def read_photo(path: Path) -> Photo:
    """Decode ``path`` upright, with its EXIF bytes, ICC profile and the orientation its EXIF records."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    decoded = decode_image(data, str(path))
    with Image.open(io.BytesIO(data)) as image:
        exif, icc = image.info.get("exif"), image.info.get("icc_profile")
    orientation = 1
    if exif:
        tags = Image.Exif()
        try:
            tags.load(exif)
            orientation = int(tags.get(0x0112, 1))
        except Exception:  # unreadable EXIF is carried as it is, the pixels upright
            orientation = 1
    return Photo(decoded.as_float(), exif or None, icc or None,
                 orientation if orientation in INVERSE_ORIENTATION else 1)


def encode_output(pixels: np.ndarray, photo: Photo, image_format: str, quality: int = 95) -> bytes:
    """Float [0, 1] upright pixels as JPEG or PNG bytes in the input's stored orientation, its EXIF and ICC kept.

    When the input has no EXIF to carry, the pixels are written upright.
    """
    stored = _apply_orientation(float_to_uint8(pixels), INVERSE_ORIENTATION[photo.stored_orientation])
    image = Image.fromarray(np.ascontiguousarray(stored), "RGB")
    extra = {key: value for key, value in (("exif", photo.exif), ("icc_profile", photo.icc_profile)) if value}
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2, **extra)
    else:
        image.save(buffer, "PNG", compress_level=3, **extra)
    return buffer.getvalue()


def _remove_partial_outputs(out: Path, names: set[str]) -> None:
    """Delete what a killed run left half-written of the outputs ``names`` (and nothing else of ``out``)."""
    for path in out.iterdir():
        name, mark, _ = path.name.partition(PARTIAL_MARK)
        if mark and name in names and path.is_file():
            path.unlink(missing_ok=True)


@dataclass
class EnhanceSummary:
    """What a run did: photos enhanced now, already there, failed."""

    out: Path
    enhanced: int = 0
    done_before: int = 0
    failed: int = 0
    preferred: int = 0
    method: str = ""
    full_resolution: str = ""

    def line(self) -> str:
        return (f"enhance: {self.enhanced} photos enhanced, {self.done_before} already done, {self.failed} failed "
                f"({self.method}, {self.full_resolution} full resolution, {self.preferred} preferred pairs) "
                f"-> {self.out}")


def run_enhance(personalizer, images: list[Path], out: Path, *, quality: int = 95,
                on_done: Callable[[int], object] | None = None) -> EnhanceSummary:
    """Enhance every photo in ``images`` into ``out`` with a fitted :class:`model.personalize.Personalizer`."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    _remove_partial_outputs(out, {output_path(image, out).name for image in images})
    summary = EnhanceSummary(out, preferred=len(personalizer.preferred) if personalizer.preferred is not None else 0,
                             method=personalizer.method, full_resolution=personalizer.full_resolution)
    claimed: dict[Path, Path] = {}
    for image in images:
        target = output_path(image, out)
        try:
            if target in claimed:
                raise ImageError(f"{image}: same output name {target.name} as {claimed[target]}")
            claimed[target] = image
            if target.exists():
                summary.done_before += 1
                continue
            photo = read_photo(image)
            try:
                enhanced = personalizer.enhance(photo.pixels)
            except torch.OutOfMemoryError:
                raise ImageError(f"{image}: out of memory at {photo.pixels.shape[1]}x{photo.pixels.shape[0]} "
                                 f"with --full-resolution {personalizer.full_resolution}") from None
            write_atomic(target, encode_output(enhanced, photo, KEPT_SUFFIXES.get(target.suffix.lower(), "PNG"),
                                                    quality))
            summary.enhanced += 1
        except ImageError as error:
            summary.failed += 1
            log.warning(f"{error}; skipped")
        finally:
            if on_done is not None:
                on_done(1)
    return summary
