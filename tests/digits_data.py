"""The held-out digits the manifest's accuracy was measured on, for tests that go through HTTP."""

from __future__ import annotations

import numpy as np

from service.packaging.bundled import digits


def held_out() -> tuple[np.ndarray, np.ndarray]:
    _, _, x_test, y_test = digits.load_dataset()
    return x_test, y_test
