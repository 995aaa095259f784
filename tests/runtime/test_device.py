"""Device and precision: impossible combinations refused at startup, fast defaults picked."""

from __future__ import annotations

import pytest
import torch

from service.runtime import device as device_module
from service.runtime.device import choose_precision, resolve_device
from service.runtime.errors import DeviceError
from service.runtime.manifest import PrecisionPolicy

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

ACCURATE_BF16 = PrecisionPolicy(measured_agreement={"bf16": 0.9995}, min_agreement=0.999)
INACCURATE_BF16 = PrecisionPolicy(measured_agreement={"bf16": 0.98}, min_agreement=0.999)


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda: ("avx512_bf16",))


@pytest.fixture
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda: ())


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(DeviceError, match="PRECISION=fp16") as refused:
        choose_precision("fp16", PrecisionPolicy(), CPU, model="digits")

    assert "digits" in str(refused.value)


@pytest.mark.usefixtures("plain_cpu")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_cpu_precision_is_honoured(precision: str) -> None:
    # Configured precisions win even over the model's default and its measured agreement.
    policy = PrecisionPolicy(default="fp32", measured_agreement={"bf16": 0.5})

    choice = choose_precision(precision, policy, CPU, model="digits")

    assert choice.precision == precision
    assert choice.reason == "configured"


@pytest.mark.usefixtures("bf16_cpu")
def test_auto_picks_bf16_on_a_bf16_cpu_when_the_model_is_accurate_enough() -> None:
    choice = choose_precision("auto", ACCURATE_BF16, CPU, model="digits")

    assert choice.precision == "bf16"
    assert "0.99950" in choice.reason


@pytest.mark.usefixtures("bf16_cpu")
def test_auto_accepts_agreement_exactly_at_the_bound() -> None:
    policy = PrecisionPolicy(measured_agreement={"bf16": 0.999}, min_agreement=0.999)

    assert choose_precision("auto", policy, CPU, model="digits").precision == "bf16"


@pytest.mark.usefixtures("plain_cpu")
def test_auto_keeps_the_default_on_a_cpu_without_bf16_flags() -> None:
    choice = choose_precision("auto", ACCURATE_BF16, CPU, model="digits")

    assert choice.precision == "fp32"
    assert choice.reason == "the model's default"


@pytest.mark.usefixtures("bf16_cpu")
def test_auto_keeps_the_default_when_bf16_misses_the_bound() -> None:
    choice = choose_precision("auto", INACCURATE_BF16, CPU, model="digits")

    assert choice.precision == "fp32"
    assert choice.reason == "the model's default"


@pytest.mark.usefixtures("bf16_cpu")
def test_auto_keeps_the_default_when_bf16_was_never_measured() -> None:
    policy = PrecisionPolicy(measured_agreement={"fp16": 1.0})

    assert choose_precision("auto", policy, CPU, model="digits").precision == "fp32"


@pytest.mark.usefixtures("plain_cpu")
def test_auto_falls_back_to_the_policy_default() -> None:
    policy = PrecisionPolicy(default="bf16", measured_agreement={"bf16": 0.5})

    assert choose_precision("auto", policy, CPU, model="digits").precision == "bf16"


@pytest.mark.usefixtures("plain_cpu")
def test_auto_never_picks_a_precision_that_the_device_refuses() -> None:
    # A model built for GPUs may default to fp16; on CPU, 'auto' must not hand back a precision
    # that an explicit PRECISION=fp16 would be refused for.
    policy = PrecisionPolicy(default="fp16")

    try:
        choice = choose_precision("auto", policy, CPU, model="gpu-model")
    except DeviceError:
        return
    assert choice.precision in ("fp32", "bf16")


def test_cpu_bf16_flags_lists_only_known_bf16_flags() -> None:
    assert set(device_module.cpu_bf16_flags()) <= {"amx_bf16", "avx512_bf16"}


@no_cuda
@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_cuda_without_a_cuda_device_is_refused(requested: str) -> None:
    with pytest.raises(DeviceError, match=f"DEVICE={requested}"):
        resolve_device(requested)


@no_cuda
def test_auto_resolves_to_cpu_without_cuda() -> None:
    assert resolve_device("auto") == CPU


def test_cpu_resolves_to_cpu() -> None:
    assert resolve_device("cpu") == CPU
