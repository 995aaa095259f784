"""Request bodies of the V1 (friendly) and V2 (Open Inference Protocol) APIs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

NonNegative = Annotated[int, Field(ge=0)]


class PredictRequest(BaseModel):
    """`instances` (row form), or `inputs` (column form: each input name with a list of values,
    one per instance), as in TensorFlow Serving's and KServe's V1 protocol."""

    model_config = ConfigDict(extra="forbid")

    instances: Annotated[list[Any], Field(min_length=1)] | None = None
    inputs: (
        Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)] | None
    ) = None
    parameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.instances is None) == (self.inputs is None):
            raise ValueError("send exactly one of 'instances' and 'inputs'")
        if self.inputs is not None and len({len(v) for v in self.inputs.values()}) != 1:
            raise ValueError("every input in 'inputs' needs the same number of values")
        return self

    def rows(self, input_names: list[str]) -> list[Any]:
        """The instances in row form; a single input's column is its rows as they are."""
        if self.instances is not None:
            return self.instances
        columns = self.inputs or {}
        if list(columns) == input_names[:1] and len(input_names) == 1:
            return columns[input_names[0]]
        count = len(next(iter(columns.values())))
        return [{name: values[i] for name, values in columns.items()} for i in range(count)]


class RequestInput(BaseModel):
    name: str
    shape: list[NonNegative]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None
