"""The manifest beside every model artifact: `<repository>/<model>/<version>/manifest.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Datatype = Literal["BOOL", "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"]
ModelPrecision = Literal["fp32", "fp16", "bf16"]
ArtifactFormat = Literal["torch.export", "torchscript"]

MANIFEST_FILE = "manifest.json"


def _relative_file(value: str) -> str:
    """A file inside the version directory: no absolute path, no `..`, no empty part.

    Checked again after symlinks are resolved, when the version is loaded."""
    parts = value.split("/")
    if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{value!r} is not a plain relative path inside the version directory")
    return value


RelativeFile = Annotated[str, AfterValidator(_relative_file)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


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


class CompiledVariant(BaseModel):
    """The model compiled ahead of time (AOTInductor) for one precision, beside the artifact.

    Native code: a server loads it only where the version is vouched for (MODEL_TRUST) or
    the operator allows artifacts that run code, and only on a CPU with every feature its
    kernels were built for, under the torch release that built it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: RelativeFile
    precision: ModelPrecision
    device: Literal["cpu"] = "cpu"
    cpu_features: list[str]
    torch_version: str
    # At packaging, against the artifact served eagerly in the same precision.
    max_abs_diff: float
    # The manifest's agreement metric, against the artifact in fp32.
    agreement: float


class OnnxVariant(BaseModel):
    """The model exported to ONNX (fp32, CPU), beside the artifact, for ONNX Runtime.

    A graph of standard operators, not code: it needs no trust beyond its sha256, but it is
    served only where the server has ONNX Runtime (the `onnx` extra)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: RelativeFile
    precision: Literal["fp32"] = "fp32"
    device: Literal["cpu"] = "cpu"
    opset: int
    # The torch release whose exporter wrote it: any ONNX Runtime that reads the opset serves it.
    exported_by: str
    # At packaging, against the artifact served eagerly in fp32, under ONNX Runtime.
    max_abs_diff: float
    # The manifest's agreement metric, against the artifact in fp32.
    agreement: float


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    version: Annotated[int, Field(ge=1)]
    # What the model does, as clients see it (V2 metadata's `task` parameter).
    task: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
    # The handler class: a registered name (entry point group `torchdock.handlers`) or
    # `package.module:Class`; unset means the handler registered under the task's name.
    handler: str | None = None
    artifact: RelativeFile = "model.pt2"
    format: ArtifactFormat = "torch.export"
    sha256: Sha256
    # Other files the version needs (a tokenizer, say), each with its sha256.
    files: dict[RelativeFile, Sha256] = Field(default_factory=dict)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=1000)] | None = None
    precision: PrecisionPolicy = Field(default_factory=PrecisionPolicy)
    compiled: list[CompiledVariant] = Field(default_factory=list)
    onnx: OnnxVariant | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)
    torch_version: str
    created_at: str

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        return cls.model_validate_json((directory / MANIFEST_FILE).read_bytes())

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")
