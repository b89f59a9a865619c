"""What a downloaded body is: decode, size check, SHA-256, pHash and the temporary file.

This is the crawl's CPU work per photo. A JPEG's luma is decoded by libjpeg
at 1/8 scale (Pillow's ``draft``): every byte of its entropy-coded data,
chroma included, is decoded, so a truncated or corrupt file is refused exactly
as by a decode at full size, but the inverse DCT runs on 1/64 of the pixels of
one channel, with no colour conversion, and the result is the pHash input
itself (:func:`.dedupe.perceptual_hash`), with no resize. That is about 0.7 ms
of CPU for a 640-px JPEG against 2.5 ms for a full decode followed by a
resize. Any other format, and any JPEG that this path does not accept, is
decoded fully by :func:`pipeline.imageio.decode_image`, which also names the
problem of a bad file. It runs on the download's event loop, in the crawl's
worker processes (:class:`.fetchpool.FetchPool`). A body that passes is
written under a temporary name beside its final path (the
:data:`manifests.files.PARTIAL_MARK` convention), so committing it is one
rename on the crawl's main thread.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from manifests.files import PARTIAL_MARK
from pipeline.imageio import MAX_PIXELS, ImageError, decode_image

from .dedupe import PHASH_REDUCTION, perceptual_hash, reduced_hash

_temporary_names = itertools.count()

#: EXIF orientation (2-8) as the Pillow transpose that shows the photo upright (as ``ImageOps.exif_transpose``).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Checked:
    """Outcome of :func:`check_image`: ``ok`` with the photo's facts, or ``not-an-image`` / ``too-small``."""

    status: str  # "ok", "not-an-image" or "too-small"
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    phash: int | None = None
    #: The bytes written beside the target, to be renamed onto it (``None`` when no target was given).
    temporary: Path | None = None


def check_image(data: bytes, source: str, min_side: int, target: Path | None = None) -> Checked:
    """Decode ``data`` fully and, if it is an image of at least ``min_side`` px on its shorter side, hash it.

    Parameters
    ----------
    data : bytes
        The downloaded body.
    source : str
        Its URL, for messages.
    min_side : int
        Smallest accepted shorter side in pixels (after EXIF orientation).
    target : Path, optional
        The photo's final path. An accepted body is written beside it under
        a temporary name (``<name>.part-<pid>-<n>``), returned as ``temporary``;
        the folder must exist.

    Returns
    -------
    Checked
        ``sha256`` is hex; ``phash`` is the 64-bit DCT pHash of
        :func:`.dedupe.perceptual_hash`, an int in [0, 2**64).

    Raises
    ------
    OSError
        The temporary could not be written; the message names ``target``.
    """
    facts = _reduced_jpeg(data)
    if facts is None:
        try:
            image = decode_image(data, source)
        except ImageError as exc:
            return Checked("not-an-image", reason=str(exc).split(": ", 1)[-1])
        width, height = image.width, image.height
    else:
        width, height, reduced = facts
    if min(width, height) < min_side:
        return Checked("too-small", reason=f"{width}x{height} < {min_side} px")
    temporary = None
    if target is not None:
        temporary = target.with_name(f"{target.name}{PARTIAL_MARK}{os.getpid()}-{next(_temporary_names)}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror or str(error), str(target)) from None
    phash = perceptual_hash(image.as_uint8()) if facts is None else reduced_hash(reduced)
    return Checked("ok", width=width, height=height, sha256=hashlib.sha256(data).hexdigest(), phash=phash,
                   temporary=temporary)


def _reduced_jpeg(data: bytes) -> tuple[int, int, Image.Image] | None:
    """A JPEG's upright width and height and its upright 1/8-scale luma (mode L); None for anything else.

    None also for a JPEG with any problem (damaged, truncated, too many
    pixels, an odd mode): :func:`pipeline.imageio.decode_image` then decodes
    it and names the problem.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if image.format != "JPEG" or image.mode not in ("RGB", "L") or not 0 < width * height <= MAX_PIXELS:
                return None
            orientation = image.getexif().get(0x0112, 1)
            image.draft("L", (max(32, -(-width // PHASH_REDUCTION)), max(32, -(-height // PHASH_REDUCTION))))
            image.load()
    except Exception:  # noqa: BLE001 - decode_image gives the one-line reason
        return None
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
        if orientation >= 5:
            width, height = height, width
    return width, height, image
