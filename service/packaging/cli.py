"""The `torchdock package` command line: the sources, their options, and a one-line refusal."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.packaging.errors import PackagingError

if TYPE_CHECKING:  # torch is imported only when a package command runs
    from service.packaging.package import PackageRequest
    from service.runtime.manifest import Manifest


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    package = commands.add_parser(
        "package",
        help="package a model into a model repository (verified, with its manifest)",
        description="Write <output>/<name>/<version>/ with the artifact, its files and a"
        " manifest, after loading it back the way the server does and checking its outputs.",
    )
    source = package.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--module", metavar="FILE.py:FACTORY", help="a function returning an nn.Module"
    )
    source.add_argument("--exported", type=Path, metavar="MODEL.pt2", help="a torch.export archive")
    source.add_argument(
        "--hf", type=Path, metavar="DIR", help="a local Hugging Face BERT directory (with --task)"
    )
    source.add_argument(
        "--torchvision", metavar="ARCH", help="a torchvision architecture (with --weights)"
    )
    source.add_argument("--torchscript", type=Path, metavar="MODEL.pt", help="a TorchScript file")
    package.add_argument("--output", type=Path, required=True, help="the model repository")
    package.add_argument("--name", required=True)
    package.add_argument("--version", type=int, help="default: one above the highest present")
    package.add_argument(
        "--example-input",
        action="append",
        default=[],
        metavar="FILE|DTYPE:SHAPE",
        help="a .pt/.npy/.npz file, or e.g. float32:1x3x224x224 (normal floats; integers in"
        " [0, 100)); once per model input",
    )
    package.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export with a dynamic first dimension (default: on)",
    )
    package.add_argument(
        "--task",
        default="tensor",
        help="tensor (default), or for --hf: text-embedding or text-classification",
    )
    package.add_argument("--handler", help="a registered handler name or package.module:Class")
    vision = package.add_argument_group("photo classifiers (--torchvision)")
    vision.add_argument("--weights", type=Path, help="a .safetensors or weights-only .pth file")
    vision.add_argument("--labels", type=Path, help="class names, one a line")
    vision.add_argument("--resize", type=int, default=256, help="shorter side (default 256)")
    vision.add_argument("--crop", type=int, default=224, help="centre crop (default 224)")
    vision.add_argument("--mean", type=_floats, help="per channel, e.g. 0.485,0.456,0.406")
    vision.add_argument("--std", type=_floats, help="per channel, e.g. 0.229,0.224,0.225")
    package.add_argument("--input-name", action="append", dest="input_names")
    package.add_argument("--output-name", action="append", dest="output_names")
    package.add_argument(
        "--preprocessing",
        type=Path,
        metavar="FILE.json",
        help="the manifest's preprocessing object, for the handler to read",
    )
    package.add_argument("--max-batch-size", type=int, default=32)
    package.add_argument(
        "--calibration",
        action="append",
        metavar="FILE",
        help="inputs to measure reduced precisions on (default: the example input)",
    )
    package.add_argument(
        "--min-agreement",
        type=float,
        default=0.999,
        help="the bound PRECISION=auto needs a reduced precision to meet",
    )
    package.add_argument(
        "--compile",
        action="append",
        choices=("fp32", "bf16", "fp16"),
        default=[],
        metavar="PRECISION",
        help="also compile a CPU variant in this precision with AOTInductor (repeatable;"
        " needs a C++ compiler here, none where it is served; RUNTIME picks it)",
    )
    package.add_argument(
        "--onnx",
        action="store_true",
        help="also export an fp32 ONNX variant for ONNX Runtime (RUNTIME picks it)",
    )
    package.add_argument("--force", action="store_true", help="replace an existing version")
    package.add_argument(
        "--sign-key",
        type=Path,
        metavar="PRIVATE_KEY",
        help="sign the manifest (manifest.json.sig) for MODEL_TRUST=signed",
    )
    package.add_argument("--verbose", action="store_true", help="show torch's own diagnostics")
    package.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from service.observability.logging import configure_logging

    configure_logging(level="WARNING", fmt="text")
    if not args.verbose:
        torch._logging.set_logs(all=logging.CRITICAL)  # type: ignore[attr-defined]
    try:
        if args.verbose:
            manifest = _package(args)
        else:
            # torch.export prints the graph it gave up on; the refusal says why in one line.
            with contextlib.redirect_stderr(io.StringIO()):
                manifest = _package(args)
    except PackagingError as e:
        hint = "" if args.verbose else " (--verbose shows torch's own report)"
        print(f"torchdock package: {e}{hint}", file=sys.stderr)
        return 2
    print(json.dumps(manifest.model_dump(mode="json", exclude_none=True), indent=2))
    print(f"packaged {manifest.name}/{manifest.version} -> {args.output}", file=sys.stderr)
    return 0


def _package(args: argparse.Namespace) -> Manifest:
    from service.packaging.example_inputs import parse_example_inputs
    from service.packaging.package import (
        PackageRequest,
        package_exported,
        package_module,
        package_torchscript,
    )
    from service.packaging.sources import module_from_factory

    request = PackageRequest(
        output=args.output,
        name=args.name,
        version=args.version,
        task=args.task,
        handler=args.handler,
        force=args.force,
        max_batch_size=args.max_batch_size,
        input_names=args.input_names,
        output_names=args.output_names,
        min_agreement=args.min_agreement,
        calibration=parse_example_inputs(args.calibration) if args.calibration else None,
        preprocessing=_json_object(args.preprocessing) if args.preprocessing else {},
        signing_key=args.sign_key,
        compile=tuple(args.compile),
        onnx=args.onnx,
    )
    if args.torchvision is not None:
        return _package_torchvision(args, request)
    if args.hf is not None:
        from service.packaging.hf import package_hf

        return package_hf(args.hf, args.task, request)
    example = parse_example_inputs(args.example_input) if args.example_input else None
    if args.exported is not None:
        request.source = {"exported": args.exported.name}
        return package_exported(args.exported, request, example)
    if example is None:
        raise PackagingError("--example-input is needed for --module and --torchscript")
    if args.torchscript is not None:
        request.source = {"torchscript": args.torchscript.name}
        return package_torchscript(args.torchscript, request, example)
    request.source = {"module": args.module}
    return package_module(
        module_from_factory(args.module), example, request, dynamic_batch=args.dynamic_batch
    )


def _package_torchvision(args: argparse.Namespace, request: PackageRequest) -> Manifest:
    from service.packaging import vision

    if args.task not in ("tensor", "image-classification"):
        raise PackagingError("--torchvision packages an image-classification model")
    if args.weights is None:
        raise PackagingError("--torchvision needs --weights FILE (nothing is downloaded)")
    labels = _labels(args.labels) if args.labels else None
    classes = len(labels) if labels else vision.IMAGENET_CLASSES
    module = vision.torchvision_module(args.torchvision, args.weights, classes)
    preprocessing = vision.PhotoPreprocessing(
        resize=args.resize,
        crop=args.crop,
        mean=args.mean or vision.IMAGENET_MEAN,
        std=args.std or vision.IMAGENET_STD,
    )
    request.source = {"torchvision": args.torchvision, "weights": args.weights.name}
    return vision.package_photo_classifier(module, request, preprocessing, labels)


def _labels(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise PackagingError(f"--labels {path}: {e}") from e


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError("three comma-separated values, one per channel")
    return values


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PackagingError(f"--preprocessing {path}: {e}") from e
    if not isinstance(value, dict):
        raise PackagingError(f"--preprocessing {path}: expected a JSON object")
    return value
