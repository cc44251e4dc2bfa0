"""Load config.yaml into a frozen dataclass tree, validating everything first and naming every problem's YAML path."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jmespath
import jmespath.exceptions

from .config_reader import ValueReader, show_value
from .paths import PLACEHOLDER, PathSyntaxError, Segment, params_of, parse_forward_path
from .secrets import Environment, Secret, redact
from .units import Rate, parse_duration, parse_rate, parse_size
from .yamlsource import ConfigError, YamlPath, load_yaml

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    prefix: str = "/api"
    routes: Path = Path("routes")
    workers: int = 1
    max_body: int = 1024**2
    shutdown_grace: float = 10.0
    metrics: str | None = "/metrics"  # where GET serves Prometheus text; None: off


@dataclass(frozen=True)
class CorsConfig:
    origins: tuple[str, ...] = ()
    credentials: bool = False


@dataclass(frozen=True)
class ClientsConfig:
    api_keys: tuple[Secret, ...] = ()
    cors: CorsConfig | None = None
    rate_limit: Rate | None = None


@dataclass(frozen=True)
class InjectConfig:
    query: tuple[tuple[str, Secret], ...] = ()
    headers: tuple[tuple[str, Secret], ...] = ()


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    timeout: float = 30.0
    retries: int = 0
    inject: InjectConfig = InjectConfig()
    forward_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResponseShape:
    drop: tuple[str, ...] = ()
    select: str | None = None


@dataclass(frozen=True)
class ForwardConfig:
    key: str  # as written in config.yaml: "weather/[city]"
    segments: tuple[Segment, ...]
    upstream: str
    path: str
    methods: tuple[str, ...] = ("GET",)
    cache: float | None = None
    rate_limit: Rate | None = None
    response: ResponseShape | None = None
    rewrite_urls: bool = False
    max_body: int | None = None
    public: bool = False
    line: int | None = None


@dataclass(frozen=True)
class Config:
    file: Path
    server: ServerConfig = ServerConfig()
    clients: ClientsConfig = ClientsConfig()
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    forwards: tuple[ForwardConfig, ...] = ()
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)  # raw values: never in repr(config)

    @property
    def routes_dir(self) -> Path:
        return (self.file.parent / self.server.routes).resolve()


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raises ConfigError listing every problem found."""
    path = Path(path)
    display = os.path.relpath(path) if not Path(os.path.relpath(path)).parts[:1] == ("..",) else str(path)
    doc = load_yaml(path, display)
    env = Environment.load(path.resolve().parent, os.environ if environ is None else environ)
    reader = _Reader(doc, env)
    config = reader.config(path.resolve())
    if reader.problems:
        # a secret may also be used where a value is quoted (a url, a header name): never print it
        raise ConfigError([replace(p, message=redact(p.message, reader.secrets)) for p in reader.problems])
    return config


class _Reader(ValueReader):
    """Walks the YAML data once, collecting every problem instead of stopping at the first."""

    # -- sections ------------------------------------------------------------------------------------------

    def config(self, file: Path) -> Config:
        top = self.mapping(self.doc.data, (), ("server", "clients", "upstreams", "forwards", "state"))
        if "state" in top:
            state = self.string(top["state"], ("state",))
            if state not in (None, "memory"):
                self.fail(("state",), f"{state!r}: only in-memory state (state: memory) is supported in this version")
        server = self.server(top.get("server"))
        clients = self.clients(top.get("clients"))
        upstreams = self.upstreams(top.get("upstreams"))
        # check forwards against every declared upstream, even one with its own problems (reported there)
        declared = top["upstreams"] if isinstance(top.get("upstreams"), dict) else {}
        forwards = self.forwards(top.get("forwards"), {str(name): None for name in declared})
        return Config(file, server, clients, upstreams, forwards, frozenset(self.secrets))

    def server(self, value: Any) -> ServerConfig:
        path: YamlPath = ("server",)
        known = ("host", "port", "prefix", "routes", "workers", "max_body", "shutdown_grace", "metrics")
        raw = self.mapping(value, path, known)
        out: dict[str, Any] = {}
        if "host" in raw:
            out["host"] = self.string(raw["host"], (*path, "host"))
        if "port" in raw:
            out["port"] = self.integer(raw["port"], (*path, "port"), 0, 65535)
        if "prefix" in raw:
            prefix = self.string(raw["prefix"], (*path, "prefix"))
            if prefix is not None:
                if prefix and not prefix.startswith("/") or "//" in prefix or any(c in prefix for c in "?#[]{} "):
                    self.fail((*path, "prefix"), f"{prefix!r}: the prefix must be a path such as /api (or / for none)")
                out["prefix"] = prefix.rstrip("/")
        if "routes" in raw:
            routes = self.string(raw["routes"], (*path, "routes"))
            out["routes"] = Path(routes) if routes else None
        if "workers" in raw:
            out["workers"] = self.integer(raw["workers"], (*path, "workers"), 1, 64)
        if "max_body" in raw:
            out["max_body"] = self.converted(raw["max_body"], (*path, "max_body"), parse_size)
        if "shutdown_grace" in raw:
            out["shutdown_grace"] = self.converted(raw["shutdown_grace"], (*path, "shutdown_grace"), parse_duration)
        config = ServerConfig(**{k: v for k, v in out.items() if v is not None})
        if "metrics" in raw:
            config = replace(config, metrics=self.metrics_path(raw["metrics"], (*path, "metrics"), config.prefix))
        return config

    def metrics_path(self, value: Any, path: YamlPath, prefix: str) -> str | None:
        """``/metrics`` (the default), another path outside the prefix, or ``false`` for no metrics endpoint."""
        if value is False or value is True:
            return "/metrics" if value else None
        text = self.string(value, path)
        if text is None:
            return "/metrics"
        fix = "give a path such as /metrics, or false to turn metrics off"
        if not text.startswith("/") or "//" in text or any(c in text for c in "?#[]{}% \\"):
            self.fail(path, f"{text!r} is not a path: {fix}")
        elif text.rstrip("/") in ("", "/healthz", "/readyz"):
            self.fail(path, f"{text!r} is taken by the gateway itself: {fix}")
        elif prefix and (text == prefix or text.startswith(prefix + "/")):
            self.fail(path, f"{text!r} is under the prefix {prefix}, where routes are served: choose a path outside "
                            "it, such as /metrics")
        else:
            return text.rstrip("/")
        return "/metrics"

    def clients(self, value: Any) -> ClientsConfig:
        path: YamlPath = ("clients",)
        raw = self.mapping(value, path, ("api_keys", "cors", "rate_limit"))
        keys = self.string_list(raw.get("api_keys"), (*path, "api_keys"), secret=True)
        for i, key in enumerate(keys):
            if not key:
                self.fail((*path, "api_keys", i), "an API key cannot be empty")
        cors = None
        if "cors" in raw:
            cors_raw = self.mapping(raw["cors"], (*path, "cors"), ("origins", "credentials"))
            origins = self.string_list(cors_raw.get("origins"), (*path, "cors", "origins"))
            credentials = cors_raw.get("credentials", False)
            if self.boolean(credentials, (*path, "cors", "credentials")) and "*" in origins:
                self.fail((*path, "cors"), "credentials: true cannot be combined with the origin '*': list the origins")
            cors = CorsConfig(tuple(origins), credentials is True)
        rate = self.converted(raw["rate_limit"], (*path, "rate_limit"), parse_rate) if "rate_limit" in raw else None
        return ClientsConfig(tuple(Secret(k) for k in keys if k), cors, rate)

    def upstreams(self, value: Any) -> dict[str, UpstreamConfig]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(("upstreams",), f"expected a mapping of upstream names, got {show_value(value)}")
            return {}
        out = {}
        for name, item in value.items():
            if (upstream := self.upstream(str(name), item)) is not None:
                out[str(name)] = upstream
        return out

    def upstream(self, name: str, value: Any) -> UpstreamConfig | None:
        path: YamlPath = ("upstreams", name)
        known = ("url", "timeout", "retries", "inject", "forward_headers", "expose_headers")
        raw = self.mapping(value, path, known)
        if value is not None and not isinstance(value, dict):
            return None
        url = None
        if "url" not in raw:
            self.fail(path, "missing 'url': give the upstream's base URL, e.g. url: https://api.example.com/v1")
        elif (url := self.string(raw["url"], (*path, "url"))) is not None:
            if not _is_base_url(url):
                self.fail((*path, "url"), f"{url!r} is not an http(s) base URL like https://api.example.com/v1")
                url = None
        timeout = self.converted(raw.get("timeout", 30), (*path, "timeout"), parse_duration)
        retries = self.integer(raw.get("retries", 0), (*path, "retries"), 0, 10)
        inject_raw = self.mapping(raw.get("inject"), (*path, "inject"), ("query", "headers"))
        inject = InjectConfig(
            query=self.secret_map(inject_raw.get("query"), (*path, "inject", "query"), header=False),
            headers=self.secret_map(inject_raw.get("headers"), (*path, "inject", "headers"), header=True),
        )
        forward_headers = self.header_names(raw.get("forward_headers"), (*path, "forward_headers"))
        expose_headers = self.header_names(raw.get("expose_headers"), (*path, "expose_headers"))
        if url is None or timeout is None or retries is None:
            return None
        return UpstreamConfig(name, url.rstrip("/"), timeout, retries, inject, forward_headers, expose_headers)

    def forwards(self, value: Any, upstreams: Mapping[str, object]) -> tuple[ForwardConfig, ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(("forwards",), f"expected a mapping of route paths to forwards, got {show_value(value)}")
            return ()
        forwards = (self.forward(str(key), item, upstreams) for key, item in value.items())
        return tuple(f for f in forwards if f is not None)

    def forward(self, key: str, value: Any, upstreams: Mapping[str, object]) -> ForwardConfig | None:
        path: YamlPath = ("forwards", key)
        known = ("upstream", "path", "methods", "cache", "rate_limit", "response", "rewrite_urls", "max_body", "public")
        raw = self.mapping(value, path, known)
        if value is not None and not isinstance(value, dict):
            return None
        ok = True
        try:
            segments = parse_forward_path(key)
        except PathSyntaxError as exc:
            self.fail(path, f"{key!r}: {exc}")
            segments, ok = (), False
        upstream = self.string(raw["upstream"], (*path, "upstream")) if "upstream" in raw else None
        if "upstream" not in raw:
            self.fail(path, "missing 'upstream': name one of the entries under upstreams:")
            ok = False
        elif upstream is not None and upstream not in upstreams:
            known_up = ", ".join(upstreams) or "none are defined"
            hint = difflib.get_close_matches(upstream, list(upstreams), n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"defined upstreams: {known_up}"
            self.fail((*path, "upstream"), f"unknown upstream {upstream!r}: {fix}")
            ok = False
        default_path = "/" + "/".join(f"{{{s.value}}}" if s.kind else s.value for s in segments)
        target = self.string(raw.get("path", default_path), (*path, "path"))
        if target is not None and not self.target_path(target, key, segments, (*path, "path")):
            ok = False
        methods = self.methods(raw.get("methods", ["GET"]), (*path, "methods"))
        cache = self.converted(raw["cache"], (*path, "cache"), parse_duration) if "cache" in raw else None
        rate = self.converted(raw["rate_limit"], (*path, "rate_limit"), parse_rate) if "rate_limit" in raw else None
        response = self.response(raw["response"], (*path, "response")) if "response" in raw else None
        rewrite = self.boolean(raw["rewrite_urls"], (*path, "rewrite_urls")) if "rewrite_urls" in raw else False
        max_body = self.converted(raw["max_body"], (*path, "max_body"), parse_size) if "max_body" in raw else None
        public = self.boolean(raw["public"], (*path, "public")) if "public" in raw else False
        if not ok or upstream is None or target is None or methods is None:
            return None
        return ForwardConfig(key, segments, upstream, target, methods, cache, rate, response, bool(rewrite),
                             max_body, bool(public), self.doc.line(path))

    def target_path(self, target: str, key: str, segments: tuple[Segment, ...], path: YamlPath) -> bool:
        if not target.startswith("/"):
            self.fail(path, f"{target!r} must start with / (it is appended to the upstream's url)")
            return False
        if target.count("{") != target.count("}"):
            self.fail(path, f"{target!r} has an unbalanced {{ or }}")
            return False
        params = params_of(segments)
        for name in PLACEHOLDER.findall(target):
            if name not in params:
                have = f"its parameters are {', '.join(params)}" if params else "it has no parameters"
                self.fail(path, f"{{{name}}} is not a parameter of {key} ({have})")
                return False
        return True

    def methods(self, value: Any, path: YamlPath) -> tuple[str, ...] | None:
        names = self.string_list(value, path)
        if not names and isinstance(value, list):
            self.fail(path, "list at least one method, e.g. [GET]")
            return None
        out = []
        for i, name in enumerate(names):
            if name.upper() not in METHODS:
                self.fail((*path, i), f"{name!r} is not an HTTP method: use {', '.join(METHODS)}")
                return None
            out.append(name.upper())
        return tuple(dict.fromkeys(out))

    def response(self, value: Any, path: YamlPath) -> ResponseShape | None:
        raw = self.mapping(value, path, ("drop", "select"))
        drop = self.string_list(raw.get("drop"), (*path, "drop"))
        select = self.string(raw["select"], (*path, "select")) if "select" in raw else None
        if select is not None:
            try:
                jmespath.compile(select)
            except jmespath.exceptions.JMESPathError as exc:
                # jmespath's own text spans three lines (expression, caret): keep one line per problem
                reason = str(exc).splitlines()[0].rstrip(":").removesuffix(", for expression")
                self.fail((*path, "select"), f"{select!r} is not a valid JMESPath expression: {reason}")
                return None
        return ResponseShape(tuple(drop), select)


def _is_base_url(url: str) -> bool:
    """``https://api.example.com/v1`` -> True; another scheme, no host, a query, a fragment or a bad port -> False."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:  # also "https://[::1" (an unclosed IPv6 bracket)
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
