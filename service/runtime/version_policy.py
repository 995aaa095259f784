"""Which versions of a model to serve: `all`, `latest:N` or `specific:1,3` (Triton's policies)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_LATEST = re.compile(r"^latest:(?P<count>[1-9]\d*)$")
_SPECIFIC = re.compile(r"^specific:\[?(?P<versions>[1-9]\d*(?:,\s*[1-9]\d*)*)\]?$")


@dataclass(frozen=True)
class VersionPolicy:
    latest: int | None = None  # the N highest
    specific: frozenset[int] | None = None  # exactly these

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        text = text.strip()
        if text == "all":
            return cls()
        if match := _LATEST.match(text):
            return cls(latest=int(match["count"]))
        if match := _SPECIFIC.match(text):
            return cls(specific=frozenset(int(v) for v in match["versions"].split(",")))
        raise ValueError(f"{text!r} is not all, latest:N or specific:V[,V...]")

    def select(self, versions: Iterable[int]) -> list[int]:
        """The versions to serve, ascending."""
        available = sorted(set(versions))
        if self.specific is not None:
            return [v for v in available if v in self.specific]
        if self.latest is not None:
            return available[-self.latest :]
        return available
