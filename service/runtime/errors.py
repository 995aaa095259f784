"""Exceptions raised inside the runtime; the API maps each one to an HTTP problem in one place."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """An exception's first line (or its type, where it has no message), for a log or a reason:
    torch's and ONNX Runtime's messages run to pages."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


class RuntimeProblem(Exception):
    """Base class: a failure that a client request can run into."""


class ModelNotFound(RuntimeProblem):
    pass


class ModelNotReady(RuntimeProblem):
    pass


class InvalidInput(RuntimeProblem):
    """The request is well-formed JSON but not a valid input for this model."""


class TooManyInstances(InvalidInput):
    pass


class RequestTooCostly(RuntimeProblem):
    """Valid, but more work than the model's per-request budget allows (pixels, tokens)."""


class QueueFull(RuntimeProblem):
    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(RuntimeProblem):
    pass


class ClientDisconnected(RuntimeProblem):
    """The client went away before its request was computed; nobody reads the answer."""


class ShuttingDown(RuntimeProblem):
    pass


class InferenceFailed(RuntimeProblem):
    pass


class ModelControlDisabled(RuntimeProblem):
    """Load and unload requests in a MODEL_CONTROL mode that does not take them."""


class ModelLoadFailed(RuntimeProblem):
    """A requested load did not give a serving version; the message says why."""


class ModelLoadError(Exception):
    """A model version could not be loaded: missing, corrupt, or a checksum mismatch."""


class DeviceError(Exception):
    """An impossible device or precision setting, detected at startup."""
