"""`smartflow serve | check-config`: the command line.

Only argparse and the config module load before the supervisor
(`smartflow.process.arbiter`) takes over; the worker code (HTTP server,
uvloop, redis, prometheus) is imported by the supervisor itself, once, right
before it forks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smartflow import __version__
from smartflow.config import ConfigError, Settings, default_config_path, load_settings, worker_count
from smartflow.process.exit_codes import EXIT_CONFIG_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartflow", description="Smartflow AI gateway (OpenAI-compatible LLM proxy)."
    )
    parser.add_argument("--version", action="version", version=f"smartflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", metavar="FILE",
                       help="config file (default: ./config.toml if present, else built-in "
                            "defaults)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080; 0 = pick a free one)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="gateway worker processes (default: one per core)")
    serve.add_argument("--data-dir", metavar="DIR",
                       help="embedded redis, metrics and access log (default ./.smartflow)")

    compliance = commands.add_parser(
        "compliance", help="serve the compliance API (/api/compliance/*) as its own process")
    compliance.add_argument("--config", metavar="FILE",
                            help="config file (default: ./config.toml if present)")
    compliance.add_argument("--host", default="127.0.0.1", help="listen address")
    compliance.add_argument("--port", type=int, required=True, help="listen port")

    check = commands.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("file", nargs="?", metavar="FILE",
                       help="config file (default: ./config.toml if present, else built-in "
                            "defaults)")
    return parser


def _server_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    server: dict[str, object] = {}
    for flag, key in (("host", "host"), ("port", "port"), ("workers", "workers"),
                      ("data_dir", "data_dir")):
        value = getattr(args, flag)
        if value is not None:
            server[key] = value
    return {"server": server} if server else {}


def _config_error(message: str) -> int:
    print(f"smartflow: config error: {message}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def summarise(settings: Settings) -> str:
    server = settings.server
    names = sorted({m.name for m in settings.models})
    lines = [
        f"config: {settings.source or '(built-in defaults)'}",
        f"listen: {server.host}:{server.port}"
        + (" (TLS)" if server.tls_cert_file else ""),
        f"workers: {worker_count(settings)}"
        + (" (one per core)" if server.workers == 0 else ""),
        f"data dir: {server.data_dir}",
        f"redis: {settings.state.redis_url and 'external' or 'embedded'}",
        f"models: {len(settings.models)} deployment(s) of {len(names)} model(s): "
        + ", ".join(names),
    ]
    return "\n".join(lines)


def _check_config(args: argparse.Namespace) -> int:
    path = args.file if args.file is not None else default_config_path()
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return _config_error(str(exc))
    print("ok")
    print(summarise(settings))
    return 0


def _serve(args: argparse.Namespace) -> int:
    path = args.config if args.config is not None else default_config_path()
    overrides = _server_overrides(args)
    try:
        settings = load_settings(path, overrides=overrides)
    except ConfigError as exc:
        return _config_error(str(exc))
    from smartflow.process.arbiter import serve

    return serve(settings, config_path=path, overrides=overrides)


def _compliance(args: argparse.Namespace) -> int:
    """The compliance API alone: for a highly available reporting endpoint
    that stays up while gateway nodes restart (it reads PostgreSQL and the
    users in Redis, nothing of a gateway's)."""
    path = args.config if args.config is not None else default_config_path()
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return _config_error(str(exc))
    import asyncio

    import uvloop

    from smartflow.compliance.server import serve_compliance

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_compliance(settings, args.host, args.port))
    except ConfigError as exc:
        return _config_error(str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "compliance":
        return _compliance(args)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
