"""``--workers N``: N forked worker processes on one port (SO_REUSEPORT), kept alive by this supervisor.

    supervisor ──fork──> worker × N       each: its own listener, event loop and app (server.serve)
      a worker dies        -> it is forked again (after a backoff when workers die right after starting;
                              after MAX_QUICK_DEATHS of those in a row the supervisor gives up: exit 1)
      SIGTERM / SIGINT     -> passed to every worker, which drains (server.py); exit 0 once all are done
      SIGHUP               -> the project is loaded here first: if valid, every worker reloads; if not, the
                              problems are logged once and nothing changes. New workers start from it.
Metrics: every worker writes to one private directory (prometheus-client multiprocess mode), made here at
start and removed at exit, so /metrics answers for the whole gateway whichever worker serves the scrape.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from .config import Config
from .observe.metrics import enable_multiprocess, forget_process
from .reload import LoadError, Project, protect_logs, warn_restart_only
from .routing import RouteTable
from .server import CANNOT_LISTEN, serve

log = logging.getLogger("gateway.supervisor")
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
QUICK = 2.0  # seconds: a worker dying sooner than this after its start died starting
MAX_QUICK_DEATHS = 5
BACKOFF, MAX_BACKOFF = 0.1, 5.0
KILL_MARGIN = 5.0  # seconds past twice the grace before workers that ignore SIGTERM are killed


def supervise(project: Project, config: Config, table: RouteTable, *, host: str, port: int, workers: int,
              debug: bool) -> int:
    problem = _probe(host, port)
    if problem is not None:
        print(f"error: cannot listen on {host}:{port}: {problem}", file=sys.stderr)
        return CANNOT_LISTEN
    directory = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        return Supervisor(project, config, table, host, port, workers, debug, directory).run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Supervisor:
    def __init__(self, project: Project, config: Config, table: RouteTable, host: str, port: int, workers: int,
                 debug: bool, directory: str) -> None:
        self.project, self.config, self.table = project, config, table
        self.host, self.port, self.workers, self.debug = host, port, workers, debug
        self.directory = directory
        self.children: dict[int, float] = {}  # pid -> when it was started
        self.restarts: list[float] = []  # when each missing worker is due to be forked again
        self.quick_deaths = 0
        self.stopping: float | None = None  # the deadline for workers to be gone, once SIGTERM came
        self.failed = False

    def run(self) -> int:
        for signum in (signal.SIGCHLD, signal.SIGHUP):  # a handler, so that a pending one is never discarded
            signal.signal(signum, _ignore)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # taken with sigtimedwait, one at a time
        try:
            for _ in range(self.workers):
                self._fork(mask)
            log.info("supervising %d workers", self.workers, extra={"workers": self.workers})
            while self.children or (self.stopping is None and not self.failed):
                info = signal.sigtimedwait(SIGNALS, self._wait())
                if info is None:
                    self._on_timer(mask)
                elif info.si_signo == signal.SIGCHLD:
                    self._reap()
                elif info.si_signo == signal.SIGHUP:
                    self._reload()
                else:
                    self._stop(info.si_signo)
                self._on_timer(mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return 1 if self.failed else 0

    def _fork(self, mask: set[signal.Signals]) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until its event loop drains on it
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its event loop reloads on it
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                enable_multiprocess(self.directory)
                code = serve(self.project, self.config, self.table, host=self.host, port=self.port,
                             debug=self.debug, reuse_port=True)
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            if started is None:
                continue
            forget_process(pid, self.directory)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping is not None:
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    log.error("worker %d exited with %d while stopping", pid, code, extra={"worker": pid, "code": code})
                    self.failed = True
                continue
            quick = time.monotonic() - started < QUICK
            self.quick_deaths = self.quick_deaths + 1 if quick else 0
            if self.quick_deaths >= MAX_QUICK_DEATHS:
                log.error("workers keep dying right after they start (%d in a row): stopping", self.quick_deaths)
                self.failed = True
                self._stop(signal.SIGTERM)
                continue
            delay = min(BACKOFF * 2 ** (self.quick_deaths - 1), MAX_BACKOFF) if quick else 0.0
            log.warning("worker %d exited with %d; starting another in %gs", pid, code, delay,
                        extra={"worker": pid, "code": code})
            self.restarts.append(time.monotonic() + delay)

    def _on_timer(self, mask: set[signal.Signals]) -> None:
        now = time.monotonic()
        if self.stopping is None:
            due = [t for t in self.restarts if t <= now]
            self.restarts = [t for t in self.restarts if t > now]
            for _ in due:
                self._fork(mask)
        elif now >= self.stopping and self.children:
            log.error("workers still running %gs after SIGTERM: killing them", KILL_MARGIN)
            self._send(signal.SIGKILL)
            self.failed = True
            self.stopping = float("inf")

    def _wait(self) -> float:
        """Seconds until the next timer: a restart that is due, or the deadline for a stopping worker."""
        timers = [*self.restarts] if self.stopping is None else [self.stopping]
        if not timers:
            return 3600.0
        return max(0.0, min(timers) - time.monotonic())

    def _stop(self, signum: int) -> None:
        if self.stopping is None:
            self.stopping = time.monotonic() + 2 * self.config.server.shutdown_grace + KILL_MARGIN
            self.restarts.clear()
        self._send(signum)

    def _reload(self) -> None:
        old = self.config
        try:
            self.config, self.table = self.project.load()
        except LoadError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem, extra={"problem": problem})
            noun = "problem" if len(exc.problems) == 1 else "problems"
            log.error("reload refused: %d %s; the old config keeps serving", len(exc.problems), noun)
            return
        protect_logs(self.project)
        warn_restart_only(old, self.config)
        self._send(signal.SIGHUP)  # each worker loads it too, and swaps it in for its new requests

    def _send(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _probe(host: str, port: int) -> str | None:
    """Why the port cannot be listened on (in use, no such address), found once here rather than by N workers."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(address)
    except (OSError, OverflowError) as exc:
        return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return None


def _ignore(signum: int, frame: object) -> None:
    return None


__all__ = ["supervise"]
