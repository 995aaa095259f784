"""Base64 PNG and JPEG images as the image handlers accept them: checked before they are decoded."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from service.runtime.errors import InvalidInput

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 4096 * 4096


def decode_image(
    encoded: str,
    *,
    index: int,
    mode: str,
    max_pixels: int = MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """The image in `mode`. Format and size are read from the header, before any decoding; a
    JPEG larger than `draft_size` is decoded at a reduced scale, which costs a fraction."""
    try:
        raw = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in FORMATS:
                raise InvalidInput(f"instance {index}: only PNG and JPEG images are accepted")
            if image.width * image.height > max_pixels:
                raise InvalidInput(
                    f"instance {index}: {image.width}x{image.height} is more than"
                    f" {max_pixels} pixels"
                )
            if draft_size is not None and image.format == "JPEG":
                image.draft(mode, draft_size)
            return image.convert(mode)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"instance {index}: 'b64' is not valid base64") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise InvalidInput(f"instance {index}: not a readable PNG or JPEG image") from None


def b64_of(instance: Any, *, index: int) -> str | None:
    """The encoded image of a `{"b64": ...}` instance; None for an instance of another form."""
    if not isinstance(instance, dict):
        return None
    encoded = instance.get("b64")
    if not isinstance(encoded, str) or set(instance) != {"b64"}:
        raise InvalidInput(f"instance {index}: an image instance is an object with one key, 'b64'")
    return encoded
