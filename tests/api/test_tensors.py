"""Open Inference Protocol tensors: JSON inputs checked against the manifest, outputs encoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.api.schemas import RequestInput
from service.api.tensors import decode_inputs, encode_outputs, select_outputs
from service.runtime.errors import InvalidInput
from service.runtime.manifest import TensorSpec

pytestmark = pytest.mark.unit

PIXELS = TensorSpec(name="pixels", datatype="FP32", shape=[-1, 4])
TEXT = TensorSpec(name="text", datatype="BYTES", shape=[-1])
IDS = TensorSpec(name="ids", datatype="INT64", shape=[-1, 2])


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> RequestInput:
    return RequestInput(name=name, shape=shape, datatype=datatype, data=data)


def test_flat_data_is_reshaped_to_the_declared_shape() -> None:
    arrays = decode_inputs([tensor("pixels", [2, 4], "FP32", list(range(8)))], [PIXELS])

    assert set(arrays) == {"pixels"}
    assert arrays["pixels"].dtype == np.float32
    assert arrays["pixels"].shape == (2, 4)
    assert arrays["pixels"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_nested_data_gives_the_same_array_as_flat_data() -> None:
    nested = [[0.5, 1, 2, 3], [4, 5, 6, 7.25]]

    arrays = decode_inputs([tensor("pixels", [2, 4], "FP32", nested)], [PIXELS])

    assert arrays["pixels"].tolist() == nested


def test_several_inputs_are_decoded_together() -> None:
    arrays = decode_inputs(
        [
            tensor("ids", [2, 2], "INT64", [[1, 2], [3, 4]]),
            tensor("pixels", [2, 4], "FP32", [0.0] * 8),
        ],
        [PIXELS, IDS],
    )

    assert arrays["ids"].dtype == np.int64
    assert arrays["ids"].tolist() == [[1, 2], [3, 4]]
    assert arrays["pixels"].shape == (2, 4)


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        pytest.param([2, 3], [0.0] * 6, id="narrower fixed dimension"),
        pytest.param([2, 5], [0.0] * 10, id="wider fixed dimension"),
        pytest.param([8], [0.0] * 8, id="too few dimensions"),
        pytest.param([2, 4, 1], [0.0] * 8, id="too many dimensions"),
    ],
)
def test_a_shape_that_does_not_fit_the_spec_is_rejected(shape: list[int], data: Any) -> None:
    with pytest.raises(InvalidInput, match="does not fit"):
        decode_inputs([tensor("pixels", shape, "FP32", data)], [PIXELS])


def test_a_datatype_other_than_the_specs_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="datatype FP64, expected FP32"):
        decode_inputs([tensor("pixels", [1, 4], "FP64", [0.0] * 4)], [PIXELS])


def test_an_unknown_input_is_rejected_and_named() -> None:
    inputs = [
        tensor("pixels", [1, 4], "FP32", [0.0] * 4),
        tensor("colour", [1], "FP32", [0.0]),
    ]

    with pytest.raises(InvalidInput, match="colour"):
        decode_inputs(inputs, [PIXELS])


def test_a_missing_input_is_rejected_and_named() -> None:
    with pytest.raises(InvalidInput, match=r"missing input\(s\) \['ids'\]"):
        decode_inputs([tensor("pixels", [1, 4], "FP32", [0.0] * 4)], [PIXELS, IDS])


def test_an_input_given_twice_is_rejected() -> None:
    twice = [tensor("pixels", [1, 4], "FP32", [0.0] * 4)] * 2

    with pytest.raises(InvalidInput, match="more than once"):
        decode_inputs(twice, [PIXELS])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_nan_and_infinite_values_are_rejected(bad: Any) -> None:
    with pytest.raises(InvalidInput, match=r"NaN|regular"):
        decode_inputs([tensor("pixels", [1, 4], "FP32", [0.0, 1.0, bad, 2.0])], [PIXELS])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([0.0] * 7, id="too few values"),
        pytest.param([0.0] * 9, id="too many values"),
    ],
)
def test_a_value_count_that_does_not_fill_the_shape_is_rejected(data: list[float]) -> None:
    with pytest.raises(InvalidInput, match="do not fill shape"):
        decode_inputs([tensor("pixels", [2, 4], "FP32", data)], [PIXELS])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]], id="ragged"),
        pytest.param(["a", "b", "c", "d"], id="words"),
        pytest.param([{"x": 1}] * 4, id="objects"),
    ],
)
def test_data_that_is_not_a_regular_numeric_tensor_is_rejected(data: Any) -> None:
    with pytest.raises(InvalidInput, match="not a regular FP32 tensor"):
        decode_inputs([tensor("pixels", [1, 4], "FP32", data)], [PIXELS])


def test_an_out_of_range_integer_is_rejected() -> None:
    small = TensorSpec(name="small", datatype="INT32", shape=[-1])

    with pytest.raises(InvalidInput, match="out of range for int32"):
        decode_inputs([tensor("small", [1], "INT32", [2**40])], [small])


def test_a_fractional_value_for_an_integer_input_is_rejected() -> None:
    # Silently truncating 1.5 to 1 would feed the model a value the client never sent.
    with pytest.raises(InvalidInput):
        decode_inputs([tensor("ids", [1, 2], "INT64", [1.5, 2])], [IDS])


def test_inputs_must_agree_on_the_batch_size() -> None:
    inputs = [
        tensor("pixels", [2, 4], "FP32", [0.0] * 8),
        tensor("ids", [3, 2], "INT64", [0] * 6),
    ]

    with pytest.raises(InvalidInput, match="disagree on the batch size"):
        decode_inputs(inputs, [PIXELS, IDS])


def test_an_empty_batch_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_inputs([tensor("pixels", [0, 4], "FP32", [])], [PIXELS])


def test_bytes_strings_are_decoded_as_objects() -> None:
    arrays = decode_inputs([tensor("text", [3], "BYTES", ["a", "bb", ""])], [TEXT])

    assert arrays["text"].dtype == object
    assert arrays["text"].tolist() == ["a", "bb", ""]


def test_nested_bytes_strings_are_flattened_in_order() -> None:
    grid = TensorSpec(name="grid", datatype="BYTES", shape=[-1, 2])

    arrays = decode_inputs(
        [tensor("grid", [3, 2], "BYTES", [["a", "b"], ["c", ["d"]], [["e", "f"]]])], [grid]
    )

    assert arrays["grid"].shape == (3, 2)
    assert arrays["grid"].tolist() == [["a", "b"], ["c", "d"], ["e", "f"]]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(["a", 1], id="number"),
        pytest.param(["a", None], id="null"),
        pytest.param([["a"], [True]], id="nested bool"),
    ],
)
def test_bytes_data_that_is_not_strings_is_rejected(data: Any) -> None:
    with pytest.raises(InvalidInput, match="not a regular BYTES tensor"):
        decode_inputs([tensor("text", [2], "BYTES", data)], [TEXT])


def test_a_bytes_count_that_does_not_fill_the_shape_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="do not fill shape"):
        decode_inputs([tensor("text", [3], "BYTES", ["a", "b"])], [TEXT])


def test_a_bf16_input_never_escapes_as_an_unexpected_error() -> None:
    # BF16 is a manifest datatype, so a request may carry it: it must decode, or be refused as
    # invalid input (a 4xx), never crash the handler (a 500).
    spec = TensorSpec(name="x", datatype="BF16", shape=[-1, 2])

    try:
        arrays = decode_inputs([tensor("x", [1, 2], "BF16", [0.5, 1.5])], [spec])
    except InvalidInput:
        return
    assert arrays["x"].tolist() == [[0.5, 1.5]]


def test_select_outputs_gives_all_outputs_when_none_are_requested() -> None:
    specs = [PIXELS, IDS, TEXT]

    assert select_outputs(specs, None) == specs


def test_select_outputs_keeps_the_manifest_order() -> None:
    assert select_outputs([PIXELS, IDS, TEXT], ["text", "pixels"]) == [PIXELS, TEXT]


def test_an_unknown_requested_output_is_rejected_and_named() -> None:
    with pytest.raises(InvalidInput, match="logits"):
        select_outputs([PIXELS, IDS], ["ids", "logits"])


def test_encode_outputs_maps_numpy_dtypes_to_datatypes() -> None:
    probabilities = TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 3])
    label = TensorSpec(name="label", datatype="INT64", shape=[-1])
    arrays = {
        "probabilities": np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], dtype=np.float32),
        "label": np.array([2, 2], dtype=np.int64),
    }

    encoded = encode_outputs(arrays, [probabilities, label])

    assert [(o["name"], o["datatype"], o["shape"]) for o in encoded] == [
        ("probabilities", "FP32", [2, 3]),
        ("label", "INT64", [2]),
    ]
    np.testing.assert_array_equal(encoded[0]["data"], arrays["probabilities"].reshape(-1))
    assert encoded[0]["data"].dtype == np.float32
    assert encoded[1]["data"].tolist() == [2, 2]


def test_encode_outputs_reports_the_arrays_real_dtype() -> None:
    # The datatype follows the data: an FP32 output computed in fp64 is labelled FP64.
    spec = TensorSpec(name="score", datatype="FP32", shape=[-1])

    (encoded,) = encode_outputs({"score": np.array([0.5], dtype=np.float64)}, [spec])

    assert encoded["datatype"] == "FP64"


def test_encode_outputs_keeps_bytes_and_only_the_selected_outputs() -> None:
    arrays = {
        "text": np.array(["yes", "no"], dtype=object),
        "pixels": np.zeros((2, 4), dtype=np.float32),
    }

    encoded = encode_outputs(arrays, [TEXT])

    assert len(encoded) == 1
    assert encoded[0]["datatype"] == "BYTES"
    assert encoded[0]["shape"] == [2]
    assert encoded[0]["data"].tolist() == ["yes", "no"]
