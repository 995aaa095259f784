"""The manifest beside every model artifact: `<repository>/<model>/<version>/manifest.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal["BOOL", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"]
Task = Literal["image-classification", "text-embedding"]
ModelPrecision = Literal["fp32", "fp16", "bf16"]

MANIFEST_FILE = "manifest.json"


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks the batch (or another variable) dimension")


class PrecisionPolicy(BaseModel):
    """Which precisions a model may run in, and how close each must stay to fp32."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ModelPrecision = "fp32"
    # Measured at build time: the worst agreement of each precision with fp32 on held-out inputs.
    measured_agreement: dict[ModelPrecision, float] = Field(default_factory=dict)
    # The bound a reduced precision must meet to be picked automatically.
    min_agreement: float = 0.999
    agreement_metric: str = "accuracy"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    version: Annotated[int, Field(ge=1)]
    task: Task
    artifact: str = "model.pt2"
    format: Literal["torch.export"] = "torch.export"
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    # Other files the version needs (a tokenizer, say), each with its sha256.
    files: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=dict)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=1000)] | None = None
    precision: PrecisionPolicy = Field(default_factory=PrecisionPolicy)
    metrics: dict[str, float] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)
    torch_version: str
    created_at: str

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        return cls.model_validate_json((directory / MANIFEST_FILE).read_bytes())

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")
