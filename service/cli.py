"""The `torchdock` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from service.config import ConfigError, Settings, load_settings
from service.keys import cli as keys_cli
from service.packaging import cli as package_cli
from service.rollouts import cli as rollout_cli
from service.rollouts.shadow_cpus import split_cpus

# Read by oneDNN, and by ideep (torch's wrapper of it), when torch loads: set before any worker
# starts. Each keeps an entry per input shape, 1,024 of them by default, and variable batch sizes
# and sentence lengths make thousands of shapes: minilm's RSS grew ~3.5 MB per new shape in bf16
# through oneDNN's cache and ~1.6 MB through ideep's. 32 of each hold it flat. In bf16 a shape
# that has left oneDNN's cache is slower to run again (docs/performance.md, Memory): a larger
# cache would serve bf16 faster, and bigger.
NATIVE_CACHE_CAPACITIES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": "32"}


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as e:
        print(f"torchdock: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit(host=args.host, port=args.port, workers=args.workers)
    try:
        # Each worker moves itself onto its serving CPUs; refused here, before any starts.
        split_cpus(frozenset(os.sched_getaffinity(0)), settings.shadow_cpus)
    except ValueError as e:
        print(f"torchdock: {e}", file=sys.stderr)
        return 2
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
    for name, capacity in NATIVE_CACHE_CAPACITIES.items():
        os.environ.setdefault(name, capacity)
    # Must be set before prometheus_client is first imported, here and in every worker.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
        prefix="torchdock-metrics-"
    )
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from service.server.gunicorn_app import TorchdockApplication, prepare_multiprocess_dir

    prepare_multiprocess_dir(Path(metrics_dir))
    if settings.model_control == "explicit" and settings.model_control_dir is None:
        # Shared by this server's workers only: what an operator loaded, for each to apply.
        control_dir = Path(tempfile.mkdtemp(prefix="torchdock-control-"))
        settings = settings.model_copy(update={"model_control_dir": control_dir})
    if settings.runtime_choice_dir is None:
        choices_dir = Path(tempfile.mkdtemp(prefix="torchdock-runtime-"))
        settings = settings.model_copy(update={"runtime_choice_dir": choices_dir})
    TorchdockApplication(settings).run()
    return 0


def _build_models(args: argparse.Namespace) -> int:
    from service.observability.logging import configure_logging
    from service.packaging.build import BUNDLED, build_models

    configure_logging(level="INFO", fmt="text")
    output = args.output or _settings_or_exit().model_repository
    names = tuple(args.model) if args.model else BUNDLED
    for manifest in build_models(
        output, names=names, version=args.version, compile=tuple(args.compile), onnx=args.onnx
    ):
        print(f"built {manifest.name}/{manifest.version} -> {output}  metrics={manifest.metrics}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def _require(value: str | None, name: str) -> str:
    if value is None:
        print(f"torchdock: {name} is not set", file=sys.stderr)
        raise SystemExit(2)
    return value


def _database_conninfo() -> str:
    return _require(_settings_or_exit().database_conninfo(), "DATABASE_URL")


def _cache_purge(args: argparse.Namespace) -> int:
    from service.storage.cache import purge

    url = _require(_settings_or_exit().redis_connection_url(), "REDIS_URL")
    removed = asyncio.run(purge(url, model=args.model, version=args.version))
    print(f"removed {removed} cached predictions")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from service.storage import migrate

    conninfo = _database_conninfo()
    applied = asyncio.run(migrate.upgrade(conninfo, target=args.to))
    version = asyncio.run(migrate.current_version(conninfo))
    print(f"applied {applied or 'nothing'}; schema at version {version}")
    return 0


def _db_prune(args: argparse.Namespace) -> int:
    from service.storage.maintenance import parse_duration, prune

    conninfo = _database_conninfo()
    removed = asyncio.run(prune(conninfo, older_than=parse_duration(args.older_than)))
    print(f"deleted {removed} rows older than {args.older_than}")
    return 0


def _db_stats(args: argparse.Namespace) -> int:
    from service.storage.maintenance import parse_duration, stats

    conninfo = _database_conninfo()
    rows = asyncio.run(stats(conninfo, since=parse_duration(args.since)))
    print(f"{'model':<12} {'version':>7} {'status':>6} {'requests':>9} {'mean ms':>8} {'hits':>6}")
    for r in rows:
        print(
            f"{r['model_name']:<12} {r['model_version']:>7} {r['status_code']:>6}"
            f" {r['requests']:>9} {r['mean_total_ms']:>8} {r['cache_hits']:>6}"
        )
    return 0


def _trust_keygen(args: argparse.Namespace) -> int:
    from service.runtime.trust import generate_key_pair

    try:
        generate_key_pair(args.private_key, args.public_key)
    except FileExistsError:
        print(f"torchdock: {args.private_key} exists; not overwriting a key", file=sys.stderr)
        return 2
    print(f"private key {args.private_key} (keep it out of the repository and the image)")
    print(f"public key {args.public_key} (MODEL_TRUST_KEY_FILE)")
    return 0


def _trust_sign(args: argparse.Namespace) -> int:
    from service.runtime.trust import sign_version

    for directory in args.versions:
        print(f"signed {sign_version(directory, args.key)}")
    return 0


def _trust_digests(args: argparse.Namespace) -> int:
    from service.runtime.trust import digest_lines

    for line in digest_lines(args.repository):
        print(line)
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
    build.add_argument(
        "--compile",
        action="append",
        choices=("fp32", "bf16"),
        default=[],
        metavar="PRECISION",
        help="also compile a CPU variant in this precision (AOTInductor; repeatable)",
    )
    build.add_argument(
        "--onnx", action="store_true", help="also export an fp32 ONNX variant (ONNX Runtime)"
    )
    build.set_defaults(func=_build_models)

    package_cli.add_parser(commands)

    trust = commands.add_parser(
        "trust", help="keys, signatures and digests for MODEL_TRUST"
    ).add_subparsers(dest="trust_command", required=True)
    keygen = trust.add_parser("keygen", help="a new Ed25519 key pair (base64 files)")
    keygen.add_argument("--private-key", type=Path, required=True)
    keygen.add_argument("--public-key", type=Path, required=True)
    keygen.set_defaults(func=_trust_keygen)
    sign = trust.add_parser("sign", help="write manifest.json.sig for model versions")
    sign.add_argument("--key", type=Path, required=True, help="the Ed25519 private key file")
    sign.add_argument("versions", type=Path, nargs="+", metavar="REPO/NAME/VERSION")
    sign.set_defaults(func=_trust_sign)
    digests = trust.add_parser(
        "digests", help="print MODEL_DIGESTS_FILE lines for every version of a repository"
    )
    digests.add_argument("repository", type=Path)
    digests.set_defaults(func=_trust_digests)

    check = commands.add_parser("check-config", help="print the effective settings, secrets masked")
    check.set_defaults(func=_check_config)

    cache = commands.add_parser("cache", help="the Redis prediction cache").add_subparsers(
        dest="cache_command", required=True
    )
    purge = cache.add_parser("purge", help="delete cached predictions")
    purge.add_argument("--model")
    purge.add_argument("--version", type=int)
    purge.set_defaults(func=_cache_purge)

    db = commands.add_parser("db", help="the Postgres prediction log").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="apply pending schema migrations")
    upgrade.add_argument("--to", type=int, help="stop at this version")
    upgrade.set_defaults(func=_db_upgrade)
    prune_cmd = db.add_parser("prune", help="delete old rows (retention)")
    prune_cmd.add_argument("--older-than", required=True, help="e.g. 30d, 12h")
    prune_cmd.set_defaults(func=_db_prune)
    stats_cmd = db.add_parser("stats", help="counts per model, version and status")
    stats_cmd.add_argument("--since", default="24h", help="window, e.g. 24h, 7d")
    stats_cmd.set_defaults(func=_db_stats)

    keys_cli.add_parser(commands, _database_conninfo)
    rollout_cli.add_parser(commands, _database_conninfo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
