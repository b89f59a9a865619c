"""MIT-Adobe FiveK files as sRGB pixels: camera raw DNGs and ICC-tagged TIFFs and JPEGs.

FiveK (Bychkovsky et al., "Learning Photographic Global Tonal Adjustment with a
Database of Input/Output Image Pairs", CVPR 2011) ships its originals as
camera raw DNGs, and the experts' versions are exported from Lightroom as
16-bit ProPhoto RGB TIFFs. The rules, the degrader and the masked style model
(Kosugi & Yamasaki, TCSVT 2023) all work on sRGB, so every file is brought to
sRGB here, by libraries and never by hand-written colour maths:

* a DNG is developed by LibRaw (``rawpy``): the camera's as-shot white balance,
  LibRaw's sRGB output with the sRGB tone curve (gamma 2.4, slope 12.92),
  LibRaw's default automatic brightening (at most 1 % of pixels clipped);
* a TIFF, JPEG or PNG with an embedded RGB ICC profile is converted to sRGB by
  littleCMS through Pillow's ``ImageCms`` (relative colorimetric intent). Pillow
  transforms 8 bits a channel, so a 16-bit file is rounded to 8 bits first; the
  result is kept at 8 bits anyway;
* a file without a profile is taken as sRGB, and :attr:`Original.colour` says so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from ...imageio import MAX_PIXELS, ImageError, decode_image

#: File name endings taken as camera raw files.
RAW_SUFFIXES = (".dng",)

#: :attr:`Original.colour` values.
COLOUR_RAW = "raw-camera-wb"
COLOUR_ICC = "icc"
COLOUR_ASSUMED_SRGB = "assumed-srgb"

#: The sRGB tone curve as LibRaw takes it: (power, toe slope).
SRGB_GAMMA = (2.4, 12.92)


@dataclass(frozen=True)
class Original:
    """A decoded file: float32 sRGB ``H x W x 3`` in [0, 1] and how it became sRGB.

    ``colour`` is one of :data:`COLOUR_RAW`, :data:`COLOUR_ICC` and
    :data:`COLOUR_ASSUMED_SRGB`; ``profile`` is the embedded ICC profile's
    description (``None`` without one).
    """

    pixels: np.ndarray
    colour: str
    profile: str | None = None


def is_raw(source: str) -> bool:
    """True when ``source`` names a camera raw file (by its ending)."""
    return PurePath(source).suffix.lower() in RAW_SUFFIXES


def decode_original(data: bytes, source: str) -> Original:
    """Decode a FiveK file (DNG, or TIFF/JPEG/PNG with or without an ICC profile) to sRGB.

    Raises ImageError with a one-line message naming ``source``.
    """
    return develop_raw(data, source) if is_raw(source) else decode_tagged(data, source)


def develop_raw(data: bytes, source: str) -> Original:
    """Develop camera raw bytes with LibRaw: as-shot white balance, sRGB primaries and curve, 16-bit."""
    import rawpy

    if not data:
        raise ImageError(f"{source}: empty file")
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            width, height = raw.sizes.width, raw.sizes.height
            if width * height > MAX_PIXELS:
                raise ImageError(f"{source}: {width}x{height} exceeds the {MAX_PIXELS}-pixel limit")
            pixels = raw.postprocess(use_camera_wb=True, output_color=rawpy.ColorSpace.sRGB, output_bps=16,
                                     gamma=SRGB_GAMMA)
    except ImageError:
        raise
    except (rawpy.LibRawError, ValueError, OSError, MemoryError) as exc:
        detail = exc.args[0] if exc.args else ""
        text = (detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)).strip().splitlines()
        raise ImageError(f"{source}: not a readable camera raw file "
                         f"({exc.__class__.__name__}{': ' + text[0] if text else ''})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise ImageError(f"{source}: LibRaw gave an image of shape {pixels.shape}, not RGB")
    return Original(pixels.astype(np.float32) / np.float32(65535.0), COLOUR_RAW)


def decode_tagged(data: bytes, source: str) -> Original:
    """Decode a TIFF/JPEG/PNG and convert it from its embedded ICC profile to sRGB (none: taken as sRGB)."""
    image = decode_image(data, source)
    icc = embedded_profile(data)
    if icc is None:
        return Original(image.as_float(), COLOUR_ASSUMED_SRGB)
    pixels, description = icc_to_srgb(image.as_uint8(), icc, source)
    return Original(pixels.astype(np.float32) / np.float32(255.0), COLOUR_ICC, description)


def embedded_profile(data: bytes) -> bytes | None:
    """The ICC profile embedded in image bytes (Pillow reads it from TIFF, JPEG, PNG and WebP), else None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            profile = image.info.get("icc_profile")
    except Exception:  # the caller has decoded these bytes already; a header Pillow rejects has no profile
        return None
    return bytes(profile) if profile else None


def icc_to_srgb(pixels: np.ndarray, icc: bytes, source: str) -> tuple[np.ndarray, str]:
    """uint8 RGB pixels in the colour space of profile ``icc`` converted to sRGB by littleCMS.

    Returns the converted uint8 pixels and the profile's description. Raises
    ImageError for a damaged profile or one that does not describe RGB.
    """
    from PIL import Image, ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
        description = (ImageCms.getProfileDescription(profile) or "").strip() or "unnamed profile"
        if space != "RGB":
            raise ImageError(f"{source}: embedded ICC profile {description!r} is for {space}, not RGB")
        converted = ImageCms.profileToProfile(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), profile,
                                              ImageCms.createProfile("sRGB"),
                                              renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                              outputMode="RGB")
    except ImageError:
        raise
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        text = str(exc).strip().splitlines()
        raise ImageError(f"{source}: unusable embedded ICC profile ({text[0] if text else exc.__class__.__name__})"
                         ) from None
    return np.asarray(converted), description
