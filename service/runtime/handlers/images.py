"""Base64 PNG and JPEG images as the image handlers accept them: checked before they are decoded.

Decoding is the costly part of an image request (a 16 KB PNG can hold 16 million pixels), so a
request's images are opened first, header only, and refused as a whole when they would cost
more than the model's budget. Only then are they decoded, off the event loop (the handlers set
`blocking_decode`); Pillow releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from service.runtime.errors import InvalidInput, RequestTooCostly

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 4096 * 4096
# Four images at the per-image limit: on one core, about a second of decoding.
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS


@dataclass(frozen=True, slots=True)
class ImageBudget:
    """What one image, and all the images of one request, may hold once decoded."""

    max_pixels: int = MAX_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS

    @classmethod
    def from_preprocessing(cls, pre: Mapping[str, Any]) -> ImageBudget:
        max_pixels = int(pre.get("max_pixels", MAX_PIXELS))
        default = max(max_pixels, MAX_REQUEST_PIXELS)
        return cls(max_pixels, int(pre.get("max_request_pixels", default)))

    def check(self, encoded: Sequence[tuple[int, str]]) -> None:
        """Refuse the request's images, from their headers alone, before any is decoded."""
        total = 0
        for index, data in encoded:
            with _opened(data, index=index) as image:
                pixels = image.width * image.height
                if pixels > self.max_pixels:
                    raise InvalidInput(
                        f"instance {index}: {image.width}x{image.height} is more than"
                        f" {self.max_pixels} pixels"
                    )
            total += pixels
        if total > self.max_request_pixels:
            raise RequestTooCostly(
                f"the request's images hold {total} pixels, more than this model's budget of"
                f" {self.max_request_pixels} per request"
            )


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
    with _opened(encoded, index=index) as image:
        if image.width * image.height > max_pixels:
            raise InvalidInput(
                f"instance {index}: {image.width}x{image.height} is more than {max_pixels} pixels"
            )
        try:
            if draft_size is not None and image.format == "JPEG":
                image.draft(mode, draft_size)
            return image.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError):
            raise InvalidInput(f"instance {index}: not a readable PNG or JPEG image") from None


@contextmanager
def _opened(encoded: str, *, index: int) -> Iterator[Image.Image]:
    """The image with only its header read, in one of the accepted formats."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"instance {index}: 'b64' is not valid base64") from None
    try:
        # Only the accepted formats' parsers ever see the bytes.
        image = Image.open(io.BytesIO(raw), formats=FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidInput(
            f"instance {index}: only PNG and JPEG images are accepted, and this is not a"
            " readable one"
        ) from None
    with image:
        yield image


def b64_of(instance: Any, *, index: int) -> str | None:
    """The encoded image of a `{"b64": ...}` instance; None for an instance of another form."""
    if not isinstance(instance, dict):
        return None
    encoded = instance.get("b64")
    if not isinstance(encoded, str) or set(instance) != {"b64"}:
        raise InvalidInput(f"instance {index}: an image instance is an object with one key, 'b64'")
    return encoded


def encoded_images(instances: Sequence[Any]) -> list[tuple[int, str]]:
    """The `{"b64": ...}` instances of a request, by position."""
    found = []
    for index, instance in enumerate(instances):
        encoded = b64_of(instance, index=index)
        if encoded is not None:
            found.append((index, encoded))
    return found
