"""Load config.yaml, its .env and routes/ at start, and again on SIGHUP to swap them in for new requests.

An invalid new config changes nothing: each problem is logged on its own line and the old config keeps serving.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from dotenv import dotenv_values

from .app import StartupError, build_table, swap
from .config import Config, load_config
from .mask.scrub import Scrubber
from .observe.logs import use_scrubber
from .routing import RouteTable
from .secrets import redact
from .yamlsource import ConfigError

log = logging.getLogger("gateway.reload")
RESTART_ONLY = ("host", "port", "workers", "shutdown_grace", "metrics", "access_log")  # read once, at start


class LoadError(Exception):
    """The project cannot be served as it is now; one line per problem, never a secret's value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Project:
    """One config file and what it brings: the .env beside it and routes/, loaded as a whole or not at all."""

    def __init__(self, path: Path, *, dev: bool = False, lenient: bool = False) -> None:
        self.path = path
        self.dev = dev  # gateway dev: a route module that fails to import answers 500 with its error (``broken``)
        self.lenient = lenient  # gateway routes: unset variables are not needed (see load_config)
        self.broken: list[str] = []  # the import errors of the routes that stand in for modules under dev
        self.config: Config | None = None  # what is being served
        self.secrets: frozenset[str] = frozenset()  # every secret value loaded so far: kept out of the log lines
        self._from_dotenv: dict[str, str] = {}  # what this process put into os.environ from .env

    def load(self) -> tuple[Config, RouteTable]:
        """Load everything again; raises LoadError, leaving os.environ as it was, when anything is wrong."""
        # the real environment: without what an older .env put there, so that a changed .env is seen
        real = {k: v for k, v in os.environ.items() if self._from_dotenv.get(k) != v}
        try:
            config = load_config(self.path, real, lenient=self.lenient)
        except ConfigError as exc:
            raise LoadError([str(p) for p in exc.problems]) from None
        if self.config is not None and (changed := needs_restart(self.config, config)):
            raise LoadError([f"{config.file.name}: {key}: {what}, which needs a restart of the gateway{why}"
                             for key, what, why in changed])
        before = self._use_dotenv(config, real)
        broken: list[str] | None = [] if self.dev else None
        try:
            table = build_table(config, broken=broken)
        except StartupError as exc:
            self._use_dotenv_values(before)
            # a route module's import error may quote os.environ: never print a secret's value
            raise LoadError([redact(problem, config.secret_values) for problem in exc.problems]) from None
        self.config = config
        self.secrets |= config.secret_values
        self.broken = [redact(problem, config.secret_values) for problem in broken or ()]
        return config, table

    def _use_dotenv(self, config: Config, real: dict[str, str]) -> dict[str, str]:
        """Route modules read os.environ: give them the .env beside the config too, never overriding the real env."""
        dotenv = config.file.parent / ".env"
        values = dotenv_values(dotenv) if dotenv.is_file() else {}
        before = self._from_dotenv
        self._use_dotenv_values({k: v for k, v in values.items() if v is not None and k not in real})
        return before

    def _use_dotenv_values(self, values: dict[str, str]) -> None:
        for key, value in self._from_dotenv.items():
            if os.environ.get(key) == value:
                del os.environ[key]
        os.environ.update(values)
        self._from_dotenv = dict(values)


def needs_restart(old: Config, new: Config) -> list[tuple[str, str, str]]:
    """What a reload cannot swap in, as (YAML path, what changed, why): refused as a whole rather than half applied (the
    prefix is indexed by aiohttp's router; a route demanding tokens with no verifier would admit everyone; a limit
    would count in a backend the config no longer names). ``server`` keys read once but harmless to keep are only
    warned about (RESTART_ONLY)."""
    changed = []
    if old.server.prefix != new.server.prefix:
        changed.append(("server.prefix", f"changed from {old.server.prefix or '/'} to {new.server.prefix or '/'}", ""))
    if old.clients.jwt != new.clients.jwt:
        changed.append(("clients.jwt", "changed", " (the identity provider's keys are fetched at start)"))
    if _state_key(old) != _state_key(new):
        changed.append(("state", "changed", " (the connection to the shared state is opened at start)"))
    return changed


def _state_key(config: Config) -> object:
    state = config.state
    if state is None:
        return None
    return replace(state, password=None), state.password.reveal() if state.password else None


def protect_logs(project: Project) -> None:
    """Every log line from now on is scrubbed of every secret this process has loaded (old ones included: requests
    still running on an old config use its keys)."""
    use_scrubber(Scrubber(project.secrets).scrub_text)


def reload(app: web.Application, project: Project) -> bool:
    """SIGHUP in a serving process: the new config and routes answer new requests; True when swapped in."""
    old = project.config
    try:
        config, table = project.load()
    except LoadError as exc:
        for problem in exc.problems:
            log.error("reload refused: %s", problem, extra={"problem": problem})
        noun = "problem" if len(exc.problems) == 1 else "problems"
        log.error("reload refused: %d %s; the old config keeps serving", len(exc.problems), noun)
        return False
    protect_logs(project)
    swap(app, config, table)
    warn_restart_only(old, config)
    log.info("reloaded %s: %d routes", config.file.name, len(table.endpoints), extra={"routes": len(table.endpoints)})
    return True


def warn_restart_only(old: Config | None, new: Config) -> None:
    for key in RESTART_ONLY:
        if old is not None and getattr(old.server, key) != getattr(new.server, key):
            log.warning("reload: server.%s changed: it takes effect when the gateway is restarted", key)


__all__ = ["LoadError", "Project", "needs_restart", "protect_logs", "reload", "warn_restart_only"]
