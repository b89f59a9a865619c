"""Safe image decoding for every stage.

Images come from the network (Flickr), from users' disks (FiveK originals) and
from our own earlier stages; any of them may be truncated, not an image at all,
a decompression bomb, or in an unusual mode (16-bit, CMYK, grey, palette,
alpha, rotated by an EXIF tag). Everything here turns such input into either a
well-formed RGB array or one :class:`ImageError` whose message names the source
and the problem in one line. Folders of images are listed and matched by
file stem here too.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Largest image accepted, in pixels (about 16k x 16k). Larger images are refused
#: as decompression bombs before their pixels are decoded.
MAX_PIXELS = 268_435_456

#: Formats accepted from any source.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "WEBP", "BMP", "MPO"})

#: File name endings taken as images when a folder is listed.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})

log = logging.getLogger("pie.imageio")

# Pillow warns above this many pixels and refuses twice as many; decode_image
# turns the warning into an error too.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(ValueError):
    """An input that is not a usable image; the message is one line."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: RGB pixels with EXIF orientation applied.

    ``pixels`` is uint8 (8-bit sources) or uint16 (16-bit sources), HxWx3.
    """

    pixels: np.ndarray
    format: str
    source_mode: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def as_float(self) -> np.ndarray:
        """float32 RGB in [0, 1]."""
        scale = 65535.0 if self.pixels.dtype == np.uint16 else 255.0
        return (self.pixels.astype(np.float32) / np.float32(scale)).clip(0.0, 1.0)

    def as_uint8(self) -> np.ndarray:
        """uint8 RGB, rounding 16-bit sources."""
        if self.pixels.dtype == np.uint8:
            return self.pixels
        return ((self.pixels.astype(np.float32) / 257.0) + 0.5).astype(np.uint8)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8/uint16 pixels from any PIL mode; alpha is composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image, dtype=np.int64)
        grey = grey.clip(0, 65535).astype(np.uint16)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        grey = (grey.clip(0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "CMYK":
        return np.asarray(image.convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _decode_16bit_tiff(data: bytes, source: str) -> np.ndarray | None:
    """RGB uint16 pixels of a 16-bit colour TIFF, which PIL cannot hold, else None."""
    import tifffile

    try:
        array = tifffile.imread(io.BytesIO(data))
    except Exception as exc:  # tifffile raises many types on damaged files
        raise ImageError(f"{source}: damaged TIFF ({exc.__class__.__name__}: {exc})") from None
    if array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(array[:, :, :3])


def _is_16bit_colour_tiff(image: Image.Image) -> bool:
    """True for a TIFF with 16 bits per sample and three or more samples per pixel."""
    if image.format != "TIFF":
        return False
    bits = image.tag_v2.get(258, (8,))  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = image.tag_v2.get(277, 1)  # SamplesPerPixel
    return 16 in bits and int(samples) >= 3


def decode_image(data: bytes, source: str = "<bytes>", *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode image bytes fully into RGB pixels, orientation applied.

    Parameters
    ----------
    data : bytes
        The encoded file.
    source : str
        A name for messages (file path or URL).
    max_pixels : int
        Images with more pixels than this are refused before decoding.

    Raises
    ------
    ImageError
        Not an image, truncated, unsupported format, or too many pixels.
    """
    if not data:
        raise ImageError(f"{source}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{source}: too many pixels (decompression bomb)") from None
        except UnidentifiedImageError:
            raise ImageError(f"{source}: not a recognised image format") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{source}: unreadable image header ({_first_line(exc)})") from None
        if image.format not in ALLOWED_FORMATS:
            raise ImageError(f"{source}: format {image.format} is not accepted")
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"{source}: empty image ({width}x{height})")
        if width * height > max_pixels:
            raise ImageError(f"{source}: {width}x{height} exceeds the {max_pixels}-pixel limit (decompression bomb)")
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
        try:
            pixels = _decode_16bit_tiff(data, source) if _is_16bit_colour_tiff(image) else None
            if pixels is None:
                image.load()
                pixels = _to_rgb_array(image)
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{source}: truncated or damaged image data ({_first_line(exc)})") from None
    pixels = _apply_orientation(pixels, orientation)
    return DecodedImage(np.ascontiguousarray(pixels), image.format, image.mode)


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1-8) to an HxWxC array."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1, :],
    }
    transform = transforms.get(int(orientation) if isinstance(orientation, int) else 1)
    return transform(pixels) if transform else pixels


def read_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Read and decode an image file; errors name the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_pixels=max_pixels)


def encode_png(pixels: np.ndarray, compression: int = 3) -> bytes:
    """Lossless PNG bytes of an HxWx3 uint8 or uint16 RGB array (zlib ``compression`` level 0-9)."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]),
                              [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise ImageError("PNG encoding failed")
    return buffer.tobytes()


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an HxWx3 uint8 RGB array (4:4:4 chroma at quality >= 90)."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if quality >= 90:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(pixels[:, :, ::-1]), params)
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buffer.tobytes()


def shrink_to_max_side(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """``pixels`` scaled down (area filter) so its longest side is at most ``max_side``; never enlarged."""
    import cv2

    if not max_side or max(pixels.shape[:2]) <= max_side:
        return pixels
    scale = max_side / max(pixels.shape[:2])
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Round float [0, 1] pixels to uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def folder_images(folder: Path) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) directly inside ``folder``, sorted by name; hidden files left out."""
    return sorted(path for path in Path(folder).iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))


def images_by_stem(paths: Iterable[Path]) -> dict[str, Path]:
    """``{stem: path}``; of two images with one stem the first is kept (``a.jpg`` before ``a.png`` in
    sorted input) and the second named in a warning."""
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            log.warning("%s: a second image with stem %r; using %s", path, path.stem, stems[path.stem].name)
            continue
        stems[path.stem] = path
    return stems
