"""The `torchdock` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from service.config import ConfigError, Settings, load_settings


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as e:
        print(f"torchdock: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(host=args.host, port=args.port, workers=args.workers)
    if args.dev:
        import uvicorn

        os.environ.update({"HOST": settings.host, "PORT": str(settings.port), "WORKERS": "1"})
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            reload=True,
            reload_dirs=[str(Path(__file__).parent)],
            log_config=None,
        )
        return 0
    # Must be set before prometheus_client is first imported, here and in every worker.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="torchdock-metrics-"
    )
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from service.server.gunicorn_app import TorchdockApplication, prepare_multiprocess_dir

    prepare_multiprocess_dir(Path(metrics_dir))
    TorchdockApplication(settings).run()
    return 0


def _build_models(args: argparse.Namespace) -> int:
    from service.models.build import BUNDLED, build_models
    from service.observability.logging import configure_logging

    configure_logging(level="INFO", fmt="text")
    output = args.output or _settings_or_exit().model_repository
    names = tuple(args.model) if args.model else BUNDLED
    for manifest in build_models(output, names=names, version=args.version):
        print(f"built {manifest.name}/{manifest.version} -> {output}  metrics={manifest.metrics}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchdock", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server (gunicorn + uvicorn workers)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--dev", action="store_true", help="plain uvicorn with auto-reload")
    serve.set_defaults(func=_serve)

    build = commands.add_parser("build-models", help="build the bundled model artifacts")
    build.add_argument("--output", type=Path, help="model repository (default: MODEL_REPOSITORY)")
    build.add_argument("--model", action="append", help="build only this model (repeatable)")
    build.add_argument("--version", type=int, default=1)
    build.set_defaults(func=_build_models)

    check = commands.add_parser("check-config", help="print the effective settings, secrets masked")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
