"""Reading face images robustly: any PIL mode in, 8-bit RGB out, clear errors for bad files."""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image, ImageFile

# A truncated JPEG must fail loudly, not decode half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# The file suffixes (lower case) taken for images when a folder is searched for them.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class BadImageError(ValueError):
    """An image file that is missing, unreadable, truncated or of an unusable kind."""


def to_rgb8(img: Image.Image) -> Image.Image:
    """Converts grayscale, palette, CMYK, alpha and 16/32-bit images to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def open_rgb(source: str | pathlib.Path | bytes) -> Image.Image:
    """Opens and fully decodes an image as 8-bit RGB.

    Raises:
      BadImageError: naming the file, if it is missing, corrupt or truncated.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            return to_rgb8(img)
    except FileNotFoundError:
        raise BadImageError(f"image not found: {name}") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's ways of saying "corrupt"
        raise BadImageError(f"unreadable or corrupt image {name}: {e}") from None


def is_plain_rgb_jpeg(path: str | pathlib.Path) -> bool:
    """True if the file is an 8-bit RGB JPEG whose bytes can be stored unchanged."""
    with Image.open(path) as img:
        return img.format == "JPEG" and img.mode == "RGB"
