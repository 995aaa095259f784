"""The held-out digits the manifest's accuracy was measured on, for tests that go through HTTP."""

from __future__ import annotations

import numpy as np

from service.packaging.bundled import digits

# One blank 8x8 digit, as a JSON instance.
ZEROS = [[0.0] * 8 for _ in range(8)]


def held_out() -> tuple[np.ndarray, np.ndarray]:
    _, _, x_test, y_test = digits.load_dataset()
    return x_test, y_test
