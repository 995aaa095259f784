"""The one exception `torchdock package` turns into its one-line refusal."""

from __future__ import annotations


class PackagingError(Exception):
    """A model that cannot be packaged as asked; the message says why in one line."""
