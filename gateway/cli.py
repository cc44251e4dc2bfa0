"""The command line: ``gateway serve | dev | check | routes | init``. Config problems print one line each, exit 1."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import metadata
from pathlib import Path

from .config import Config
from .observe.logs import setup_logging
from .reload import LoadError, Project, protect_logs
from .routing import RouteTable
from .server import CANNOT_LISTEN
from .starter import StarterError, next_steps, write_starter
from .state import state_report


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="An API gateway that keeps API keys off the client.")
    parser.add_argument("--version", action="version", version=f"gateway {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, run, text in (
        ("serve", _serve, "run the server"),
        ("dev", _dev, "serve, restarting when the config, its .env, a file under routes/ or a *_FILE secret changes; "
                      "tracebacks and route import errors in 500 bodies"),
        ("check", _check, "validate the config, the environment and every route module, then print the routes"),
        ("routes", _routes, "print the route table (needs no secrets)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", help="config file (default: $GATEWAY_CONFIG or ./config.yaml)")
        if name in ("serve", "dev"):
            cmd.add_argument("--host", help="address to listen on (default: server.host, 0.0.0.0)")
            cmd.add_argument("--port", type=_port, help="port (default: $PORT, else server.port, else 8080)")
            cmd.add_argument("--workers", type=_workers, help="processes sharing the port (default: server.workers)")
        cmd.set_defaults(run=run)
    init = sub.add_parser("init", help="write a starter project: config.yaml, .env.example, routes/hello.py, README.md",
                          description="write a starter project into DIR (default: the current folder); existing "
                                      "files are never overwritten")
    init.add_argument("dir", nargs="?", default=".", metavar="DIR")
    init.set_defaults(run=_init)
    return parser


def _version() -> str:
    try:
        return metadata.version("gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


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


def _open(args: argparse.Namespace, *, dev: bool = False,
          lenient: bool = False) -> tuple[Project, Config, RouteTable] | None:
    project = Project(_config_path(args), dev=dev, lenient=lenient)
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
    opened = _open(args, lenient=True)  # the table names no secret: it is printed without them
    if opened is None:
        return 1
    _, config, table = opened
    print_table(table)
    if config.unset:
        names = ", ".join(config.unset)
        print(f"note: not set: {names} (gateway check and serve need them)", file=sys.stderr)
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
    opened = _open(args, dev=debug)
    if opened is None:
        return 1
    project, config, table = opened
    for problem in project.broken:  # only under dev: each once, here; the route answers 500 with it
        print(f"error: {problem}", file=sys.stderr)
    if project.broken:
        count = len(project.broken)
        print(f"gateway dev: {count} route{'s' if count > 1 else ''} answer{'' if count > 1 else 's'} 500 with "
              f"{'their' if count > 1 else 'its'} error until fixed; the other routes are served", file=sys.stderr)
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
    code = run(project, config, table, host=host, port=port, workers=workers, debug=debug)
    # the dev loop stops on CANNOT_LISTEN (a file change would not help); to everyone else it is a start-up error
    return code if debug or code != CANNOT_LISTEN else 1


def _dev(args: argparse.Namespace) -> int:
    """Serve in a child process, and start a new one whenever a file of the project changes (devloop.py)."""
    from .devloop import run_dev

    path = _config_path(args).resolve()
    argv = ["--config", str(path)]
    for flag in ("host", "port", "workers"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    return run_dev(path, _dev_child, (argv,))


def _dev_child(argv: list[str]) -> None:
    args = _parser().parse_args(["serve", *argv])
    try:
        code = _serve(args, debug=True)
    except KeyboardInterrupt:  # Ctrl-C before the server took over SIGINT
        code = 0
    raise SystemExit(code)


def _init(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        written = write_starter(folder)
    except StarterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(next_steps(folder, written))
    return 0
