"""The command line: ``gateway serve | dev | check | routes``. Config problems print one line each, exit 1."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .config import Config, load_config
from .observe.logs import setup_logging
from .reload import LoadError, Project, protect_logs
from .routing import RouteTable
from .state import state_report
from .yamlsource import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="An API gateway that keeps API keys off the client.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, run, text in (
        ("serve", _serve, "run the server"),
        ("dev", _dev, "serve, reloading when routes/ or the config change; tracebacks in 500 bodies"),
        ("check", _check, "validate the config, the environment and every route module, then print the routes"),
        ("routes", _routes, "print the route table"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", help="config file (default: $GATEWAY_CONFIG or ./config.yaml)")
        if name in ("serve", "dev"):
            cmd.add_argument("--host", help="address to listen on (default: server.host, 0.0.0.0)")
            cmd.add_argument("--port", type=_port, help="port (default: $PORT, else server.port, else 8080)")
            cmd.add_argument("--workers", type=_workers, help="processes sharing the port (default: server.workers)")
        cmd.set_defaults(run=run)
    return parser


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _workers(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1-64)")
    return int(text)


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("GATEWAY_CONFIG") or "config.yaml")


def load(args: argparse.Namespace) -> tuple[Config, RouteTable] | None:
    """Config and route table, or None after printing every problem."""
    opened = _open(args)
    return None if opened is None else opened[1:]


def _open(args: argparse.Namespace) -> tuple[Project, Config, RouteTable] | None:
    project = Project(_config_path(args))
    try:
        config, table = project.load()
    except LoadError as exc:
        _print_problems(exc.problems)
        return None
    return project, config, table


def _print_problems(problems: list[str]) -> None:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"gateway: {len(problems)} {noun}; nothing was started", file=sys.stderr)


def _routes(args: argparse.Namespace) -> int:
    loaded = load(args)
    if loaded is None:
        return 1
    print_table(loaded[1])
    return 0


def print_table(table: RouteTable) -> None:
    rows = [("PATH", "METHODS", "KIND", "TARGET")]
    rows += [(e.pattern, ",".join(e.methods), e.kind, e.target) for e in table.sorted()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])


def _check(args: argparse.Namespace) -> int:
    loaded = load(args)
    if loaded is None:
        return 1
    config, table = loaded
    print_table(table)
    line, warning = state_report(config.state)  # which backend, and whether it answers (a warning if not)
    print(line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if config.server.workers > 1 and config.state is None:
        print(
            f"warning: server.workers is {config.server.workers}: cache and rate-limit state is per process, "
            "so limits are per worker",
            file=sys.stderr,
        )
    print(f"ok: {_config_path(args)} and {len(table.endpoints)} routes are valid")
    return 0


def _serve(args: argparse.Namespace, *, debug: bool = False) -> int:
    # SIGHUP's default action ends the process: until the server handles it (a reload), it is ignored
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    opened = _open(args)
    if opened is None:
        return 1
    project, config, table = opened
    host = args.host or config.server.host
    port = args.port
    if port is None and os.environ.get("PORT"):
        try:
            port = _port(os.environ["PORT"])
        except argparse.ArgumentTypeError as exc:
            _print_problems([f"$PORT: {exc}"])
            return 1
    port = config.server.port if port is None else port
    workers = args.workers or config.server.workers
    from .server import run

    # from here on every line is JSON (readable lines under `gateway dev`), scrubbed
    setup_logging(dev=debug, access=config.server.access_log)
    protect_logs(project)
    return run(project, config, table, host=host, port=port, workers=workers, debug=debug)


def _dev(args: argparse.Namespace) -> int:
    """Serve in a child process and restart it whenever routes/ or the config changes."""
    import watchfiles

    path = _config_path(args).resolve()
    try:
        config = load_config(path)
        watched = [str(path)] + ([str(config.routes_dir)] if config.routes_dir is not None else [])
    except ConfigError:
        watched = [str(path.parent)]  # fix the config and the watcher picks it up
    watched = [w for w in watched if Path(w).exists()]
    print(f"gateway dev: watching {', '.join(watched)}", file=sys.stderr)
    argv = ["--config", str(path)]
    for flag in ("host", "port", "workers"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    watchfiles.run_process(*watched, target=_dev_child, args=(argv,), watch_filter=_source_filter)
    return 0


def _source_filter(change: watchfiles.Change, path: str) -> bool:  # noqa: F821 - imported lazily above
    return path.endswith((".py", ".yaml", ".yml", ".env")) and "__pycache__" not in path


def _dev_child(argv: list[str]) -> None:
    args = _parser().parse_args(["serve", *argv])
    raise SystemExit(_serve(args, debug=True))
