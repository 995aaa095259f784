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
from contextlib import ExitStack, contextmanager
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

    @contextmanager
    def opened(self, instances: Sequence[Any]) -> Iterator[dict[int, Image.Image]]:
        """The request's `{"b64": ...}` images by position, each opened once with only its
        header read, refused as a whole before any is decoded; closed when the block ends."""
        with ExitStack() as stack:
            images: dict[int, Image.Image] = {}
            total = 0
            for index, instance in enumerate(instances):
                encoded = b64_of(instance, index=index)
                if encoded is None:
                    continue
                image = images[index] = stack.enter_context(_opened(encoded, index=index))
                pixels = image.width * image.height
                if pixels > self.max_pixels:
                    raise InvalidInput(
                        f"instance {index}: {image.width}x{image.height} is more than"
                        f" {self.max_pixels} pixels"
                    )
                total += pixels
            if total > self.max_request_pixels:
                raise RequestTooCostly(
                    f"the request's images hold {total} pixels, more than this model's budget"
                    f" of {self.max_request_pixels} per request"
                )
            yield images


def converted(
    image: Image.Image, *, index: int, mode: str, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """An opened image, decoded in `mode`; a JPEG larger than `draft_size` is decoded at a
    reduced scale, which costs a fraction."""
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
