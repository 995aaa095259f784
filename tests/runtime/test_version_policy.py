"""Version policies: which versions of a model are served."""

from __future__ import annotations

import pytest

from service.runtime.repository import version_number
from service.runtime.version_policy import VersionPolicy

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("all", [1, 2, 5, 9]),
        ("latest:1", [9]),
        ("latest:3", [2, 5, 9]),
        ("latest:10", [1, 2, 5, 9]),
        ("specific:2,9", [2, 9]),
        ("specific:[5]", [5]),
        ("specific:[1, 3]", [1]),
    ],
)
def test_selection(text: str, selected: list[int]) -> None:
    assert VersionPolicy.parse(text).select([9, 1, 5, 2]) == selected


@pytest.mark.parametrize("text", ["latest", "latest:0", "specific:", "specific:a", "newest"])
def test_invalid_policies_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not all, latest:N or specific"):
        VersionPolicy.parse(text)


@pytest.mark.parametrize(
    ("text", "number"),
    [("1", 1), ("42", 42), ("999999999", 999_999_999), ("²", None), ("٣", None),
     ("", None), ("1234567890", None), ("-1", None), ("1.0", None)],
)  # fmt: skip
def test_version_numbers_are_ascii_digits(text: str, number: int | None) -> None:
    assert version_number(text) == number
