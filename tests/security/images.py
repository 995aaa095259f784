"""The hostile images of the review: small files that decode into millions of pixels."""

from __future__ import annotations

import base64
import functools
import io

from PIL import Image


@functools.cache
def blank_png_b64(side: int) -> str:
    """A black square PNG: 4096x4096 compresses to 16 KB and decodes to 16 million pixels."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
