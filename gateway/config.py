"""Load config.yaml into a frozen dataclass tree, validating everything first and naming every problem's YAML path."""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jmespath
import jmespath.exceptions

from .config_guard import GuardConfig, read_guard
from .config_jwt import JwtConfig, auth_mode, auth_problem, check_forward_claims, read_jwt
from .config_reader import ValueReader, show_value
from .errors import STYLES
from .origins import ANY, parse_origin
from .paths import PLACEHOLDER, PLACEHOLDER_ENV, PathSyntaxError, Segment, params_of, parse_forward_path
from .secrets import Environment, Secret, redact
from .state.url import ON_ERROR, StateConfig, parse_state
from .units import Rate, parse_duration, parse_rate, parse_size
from .upstream.proxy import ProxyError, parse_proxy
from .yamlsource import ConfigError, YamlPath, load_yaml

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
UPSTREAM_KEYS = ("url", "timeout", "retries", "inject", "forward_headers", "expose_headers", "errors",
                 "max_connections", "proxy")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    prefix: str = "/api"
    routes: Path | None = Path("routes")  # None: no file routes (routes: null)
    routes_required: bool = False  # routes: was written, so the folder must exist
    workers: int = 1
    max_body: int = 1024**2
    max_response: int = 16 * 1024**2  # the most of an upstream answer read into memory (shaping, forward().read())
    shutdown_grace: float = 10.0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # whose X-Forwarded-For counts
    cache_size: int = 64 * 1024**2  # bytes of cached answers kept, least recently used first out
    metrics: str | None = "/metrics"  # where GET serves Prometheus text; None: off
    access_log: bool = True  # one JSON line per request on stdout (off when an ingress already logs them)


@dataclass(frozen=True)
class CorsConfig:
    origins: tuple[str, ...] = ()  # as browsers send them ("https://app.example.com"), or "https://*.x.com", or "*"
    credentials: bool = False
    max_age: float = 600.0  # how long a browser may reuse a preflight's answer


@dataclass(frozen=True)
class ClientsConfig:
    api_keys: tuple[Secret, ...] = ()
    cors: CorsConfig | None = None
    rate_limit: Rate | None = None
    jwt: JwtConfig | None = None  # end users' tokens (SPEC §8)


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
    errors: str = "gateway"  # the shape of the gateway's own error bodies on its forwards: gateway or openai
    # connections to the upstream (gateway/upstream/client.py): a cap, and an outbound proxy
    max_connections: int = 100
    proxy: Secret | None = None  # an explicit proxy URL; it may hold credentials
    proxy_from_env: bool = True  # without one: HTTP(S)_PROXY / NO_PROXY decide; ``proxy: none`` turns that off


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
    websocket: bool = False  # a WebSocket forward (SPEC §10): the upgrade is relayed to the upstream
    max_message: int = 1024**2  # websocket: the largest message either way -> closed with 1009
    idle_timeout: float = 300.0  # websocket: no message either way for this long -> both sides closed
    auth: str | None = None  # "jwt", "api_key" or "public": the one kind of client this forward admits
    guard: GuardConfig | None = None  # spend guards for a model API (SPEC §11)


@dataclass(frozen=True)
class Config:
    file: Path
    server: ServerConfig = ServerConfig()
    clients: ClientsConfig = ClientsConfig()
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    forwards: tuple[ForwardConfig, ...] = ()
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)  # raw values: never in repr(config)
    state: StateConfig | None = None  # Redis (SPEC §9); None: rate limits and the cache in each process's memory
    unset: tuple[str, ...] = ()  # variables a lenient load found unset (their values were not checked)

    @property
    def routes_dir(self) -> Path | None:
        return (self.file.parent / self.server.routes).resolve() if self.server.routes is not None else None


def load_config(path: Path | str, environ: Mapping[str, str] | None = None, *, lenient: bool = False) -> Config:
    """Read and validate ``path``; raises ConfigError listing every problem found.

    ``lenient``: an unset environment variable reads as "" and the value that reads it is not checked (``gateway
    routes`` prints the table without needing the secrets); ``Config.unset`` names those variables.
    """
    path = Path(path)
    display = os.path.relpath(path) if not Path(os.path.relpath(path)).parts[:1] == ("..",) else str(path)
    doc = load_yaml(path, display)
    env = Environment.load(path.resolve().parent, os.environ if environ is None else environ, lenient=lenient)
    reader = _Reader(doc, env)
    config = reader.config(path.resolve())
    if reader.problems:
        # a secret may also be used where a value is quoted (a url, a header name): never print it
        raise ConfigError([replace(p, message=redact(p.message, reader.secrets)) for p in reader.problems])
    return replace(config, unset=tuple(sorted(set(env.unset)))) if env.unset else config


class _Reader(ValueReader):
    """Walks the YAML data once, collecting every problem instead of stopping at the first."""

    # -- sections ------------------------------------------------------------------------------------------

    def config(self, file: Path) -> Config:
        top = self.mapping(self.doc.data, (), ("server", "clients", "upstreams", "forwards", "state", "state_on_error"))
        state = self.state(top)
        server = self.server(top.get("server"))
        self.prefix = server.prefix  # forward keys are relative to it
        clients = self.clients(top.get("clients"))
        upstreams = self.upstreams(top.get("upstreams"))
        # check forwards against every declared upstream, even one with its own problems (reported there)
        declared = top["upstreams"] if isinstance(top.get("upstreams"), dict) else {}
        forwards = self.forwards(top.get("forwards"), {str(name): None for name in declared})
        if clients.jwt is not None:
            check_forward_claims(self, clients.jwt, upstreams)
        for forward in forwards:
            if problem := auth_problem(forward.auth, bool(clients.api_keys), clients.jwt is not None):
                self.fail(("forwards", forward.key, "auth"), problem)
        return Config(file, server, clients, upstreams, forwards, frozenset(self.secrets), state=state)

    def state(self, top: dict[str, Any]) -> StateConfig | None:
        """``state`` and ``state_on_error``; the URL's password is a secret, wherever it came from."""
        on_error = self.string(top.get("state_on_error", "local"), ("state_on_error",))
        if on_error is not None and on_error not in ON_ERROR:
            self.fail(("state_on_error",), f"{on_error!r}: use local (while Redis cannot be reached, each process "
                                           "counts on its own) or closed (answer 503)")
        if "state" in top and self.bare_variable(top["state"], ("state",)):  # "redis://:$REDIS_PASSWORD@cache"
            return None  # would send that text as the password
        text = self.string(top["state"], ("state",)) if "state" in top else None
        if text is None:
            return None
        try:
            state = parse_state(text, on_error if on_error in ON_ERROR else "local")
        except ValueError as exc:
            self.fail(("state",), str(exc))
            return None
        if state is not None and state.password is not None:
            self.secrets.add(state.password.reveal())
        return state

    def server(self, value: Any) -> ServerConfig:
        path: YamlPath = ("server",)
        known = ("host", "port", "prefix", "routes", "workers", "max_body", "max_response", "shutdown_grace",
                 "trusted_proxies", "cache_size", "metrics", "access_log")
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
        if "routes" in raw and raw["routes"] in (None, False, ""):
            out["routes"] = None  # routes: null -> no file routes
        elif "routes" in raw:
            routes = self.string(raw["routes"], (*path, "routes"))
            if routes:
                out["routes"], out["routes_required"] = Path(routes), True
        if "workers" in raw:
            out["workers"] = self.integer(raw["workers"], (*path, "workers"), 1, 64)
        if "max_body" in raw:
            out["max_body"] = self.converted(raw["max_body"], (*path, "max_body"), parse_size)
        if "max_response" in raw:
            out["max_response"] = self.converted(raw["max_response"], (*path, "max_response"), parse_size)
        if "shutdown_grace" in raw:
            out["shutdown_grace"] = self.converted(raw["shutdown_grace"], (*path, "shutdown_grace"), parse_duration)
        if "trusted_proxies" in raw:
            out["trusted_proxies"] = self.networks(raw["trusted_proxies"], (*path, "trusted_proxies"))
        if "cache_size" in raw:
            out["cache_size"] = self.converted(raw["cache_size"], (*path, "cache_size"), parse_size)
        config = ServerConfig(**{k: v for k, v in out.items() if v is not None or k == "routes"})
        if "metrics" in raw:
            config = replace(config, metrics=self.metrics_path(raw["metrics"], (*path, "metrics"), config.prefix))
        if "access_log" in raw and (on := self.boolean(raw["access_log"], (*path, "access_log"))) is not None:
            config = replace(config, access_log=on)
        return config

    def networks(self, value: Any, path: YamlPath) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``["10.0.0.0/8", "::1"]`` -> the networks; a host address is its own /32 or /128."""
        out = []
        for i, text in enumerate(self.string_list(value, path)):
            try:
                network = ipaddress.ip_network(text.strip())
            except ValueError:
                try:
                    loose = ipaddress.ip_network(text.strip(), strict=False)
                except ValueError:
                    self.fail((*path, i), f"{text!r} is not an IP address or CIDR such as 10.0.0.0/8 or 2001:db8::/32")
                else:
                    self.fail((*path, i), f"{text!r} has host bits set: write the network, {loose}")
                continue
            if network.prefixlen == 0:
                self.fail((*path, i), f"{text!r} trusts every address, so any client could choose its own identity: "
                                      "list only your proxies' addresses")
                continue
            out.append(network)
        return tuple(out)

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
        raw = self.mapping(value, path, ("api_keys", "cors", "rate_limit", "jwt"))
        keys = self.string_list(raw.get("api_keys"), (*path, "api_keys"), secret=True)
        for i, key in enumerate(keys):
            if not key:
                self.fail((*path, "api_keys", i), "an API key cannot be empty")
        cors = self.cors(raw["cors"], (*path, "cors")) if "cors" in raw else None
        rate = self.converted(raw["rate_limit"], (*path, "rate_limit"), parse_rate) if "rate_limit" in raw else None
        jwt = read_jwt(self, raw.get("jwt"), (*path, "jwt"))
        return ClientsConfig(tuple(Secret(k) for k in keys if k), cors, rate, jwt)

    def cors(self, value: Any, path: YamlPath) -> CorsConfig:
        raw = self.mapping(value, path, ("origins", "credentials", "max_age"))
        if not raw.get("origins", True) or "origins" not in raw:  # absent, empty or null: CORS that admits nobody
            where = (*path, "origins") if "origins" in raw else path
            self.fail(where, "list the origins allowed to call, e.g. origins: [https://app.example.com]")
        listed = raw.get("origins")
        origins = []
        for i, item in enumerate(listed if isinstance(listed, list) else ()):
            # YAML reads a bare null as nothing: it still means the origin "null"
            text = "null" if item is None else self.string(item, (*path, "origins", i))
            try:
                origins.append(parse_origin(text)) if text is not None else None
            except ValueError as exc:
                self.fail((*path, "origins", i), f"{text!r}: {exc}")
        if not isinstance(listed, list | None):
            self.string_list(listed, (*path, "origins"))  # says what was expected
        credentials = self.boolean(raw["credentials"], (*path, "credentials")) if "credentials" in raw else False
        if credentials and ANY in origins:
            self.fail(path, "credentials: true cannot be combined with the origin '*': list the origins")
        max_age = self.converted(raw.get("max_age", 600), (*path, "max_age"), parse_duration)
        return CorsConfig(tuple(dict.fromkeys(origins)), credentials is True, 600.0 if max_age is None else max_age)

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
        if name in UPSTREAM_KEYS + ("query", "headers") and not (isinstance(value, dict) and "url" in value):
            where = "under an upstream's inject:" if name in ("query", "headers") else "inside an upstream"
            self.fail(path, f"{name!r} is read as the name of an upstream: it belongs {where}; indent it there")
            return None
        raw = self.mapping(value, path, UPSTREAM_KEYS)
        if value is not None and not isinstance(value, dict):
            return None
        url = None
        if "url" not in raw:
            self.fail(path, "missing 'url': give the upstream's base URL, e.g. url: https://api.example.com/v1")
        elif (url := self.string(raw["url"], (*path, "url"))) is not None:
            if (*path, "url") in self.unchecked:
                url = "https://unset.invalid"  # a lenient load: the URL is not needed to list the routes
            elif not _is_base_url(url):
                self.fail((*path, "url"), f"{url!r} is not an http(s) (or ws(s)) base URL like "
                                          "https://api.example.com/v1")
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
        errors = self.string(raw.get("errors", "gateway"), (*path, "errors"))
        if errors is not None and errors not in STYLES:
            self.fail((*path, "errors"), f"{errors!r}: use gateway ({{\"error\": code, \"message\": ...}}) or openai "
                                         "(the shape OpenAI's SDKs read)")
            errors = None
        max_connections = self.integer(raw.get("max_connections", 100), (*path, "max_connections"), 1, 10_000)
        proxy = self.proxy(raw["proxy"], (*path, "proxy")) if "proxy" in raw else None
        if url is None or timeout is None or retries is None or errors is None or max_connections is None:
            return None
        return UpstreamConfig(name, url.rstrip("/"), timeout, retries, inject, forward_headers, expose_headers,
                              errors=errors, max_connections=max_connections,
                              proxy=proxy if isinstance(proxy, Secret) else None, proxy_from_env=proxy is None)
    def proxy(self, value: Any, path: YamlPath) -> Secret | bool | None:
        """``proxy: http://user:pass@host:3128`` -> Secret; ``proxy: none`` -> False (direct); a problem -> None."""
        url = self.string(value, path, secret=True)  # credentials from ${VAR} are scrubbed like any key
        if url is None:
            return None
        if url.strip().lower() == "none":
            return False
        try:
            parse_proxy(url, "the proxy")
        except ProxyError as exc:
            self.fail(path, f"{exc}; or write none to connect directly")
            return None
        return Secret(url)

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
        known = ("upstream", "path", "methods", "cache", "rate_limit", "response", "rewrite_urls", "max_body", "public",
                 "websocket", "max_message", "idle_timeout", "auth", "guard")
        if key in known and not (isinstance(value, dict) and "upstream" in value):
            self.fail(path, f"{key!r} is read as the route of a forward: it belongs inside a forward, beside its "
                            "upstream:; indent it there")
            return None
        raw = self.mapping(value, path, known)
        if value is not None and not isinstance(value, dict):
            return None
        ok = True
        try:
            segments = parse_forward_path(key)
        except PathSyntaxError as exc:
            self.fail(path, f"{key!r}: {exc}")
            segments, ok = (), False
        prefix = self.prefix.strip("/")
        if key.startswith("/") or prefix and (key.strip("/") + "/").startswith(prefix + "/"):
            # "/api/openai/[...path]" would be mounted at /api/api/openai/...: keys are relative to the prefix
            relative = key.strip("/")
            relative = relative[len(prefix):].lstrip("/") if prefix and (relative + "/").startswith(prefix + "/") \
                else relative
            self.fail(path, f"{key!r}: forward keys are relative to the prefix {self.prefix or '/'}: write "
                            f"{relative or '(the prefix itself: an empty key)'!r}")
            ok = False
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
        written = raw.get("path", default_path)
        params = set(params_of(segments))
        if isinstance(written, str) and (env_param := next((n for n in PLACEHOLDER_ENV.findall(written)
                                                            if n in params), None)):
            self.fail((*path, "path"), f"${{{env_param}}} reads the environment variable {env_param}: for the route "
                                       f"parameter write {{{env_param}}}")
            written, ok = None, False
        target = self.string(written, (*path, "path")) if written is not None else None
        if target is not None and not self.target_path(target, key, segments, (*path, "path")):
            ok = False
        methods = self.methods(raw.get("methods", ["GET"]), (*path, "methods"))
        cache = self.converted(raw["cache"], (*path, "cache"), parse_duration) if "cache" in raw else None
        rate = self.converted(raw["rate_limit"], (*path, "rate_limit"), parse_rate) if "rate_limit" in raw else None
        response = self.response(raw["response"], (*path, "response")) if "response" in raw else None
        rewrite = self.boolean(raw["rewrite_urls"], (*path, "rewrite_urls")) if "rewrite_urls" in raw else False
        max_body = self.converted(raw["max_body"], (*path, "max_body"), parse_size) if "max_body" in raw else None
        public = self.boolean(raw["public"], (*path, "public")) if "public" in raw else False
        auth = self.converted(raw["auth"], (*path, "auth"), auth_mode) if "auth" in raw else None
        if public and auth not in (None, "public"):
            self.fail((*path, "auth"), f"auth is {auth!r} but the forward is public: true; keep one of them")
            ok = False
        websocket = self.websocket(raw, path, upstream)
        guard = read_guard(self, raw["guard"], (*path, "guard"), methods) if "guard" in raw and websocket else None
        if not ok or upstream is None or target is None or methods is None or websocket is None:
            return None
        return ForwardConfig(key, segments, upstream, target, methods, cache, rate, response, bool(rewrite),
                             max_body, bool(public) or auth == "public", self.doc.line(path), auth=auth, **websocket,
                             guard=guard)

    def websocket(self, raw: dict[str, Any], path: YamlPath, upstream: str | None) -> dict[str, Any] | None:
        """The WebSocket keys of a forward; a ws:// upstream serves only WebSocket forwards, and a WebSocket
        forward takes none of the HTTP-only keys."""
        on = self.boolean(raw["websocket"], (*path, "websocket")) if "websocket" in raw else False
        out: dict[str, Any] = {"websocket": bool(on)}
        for key, parse in (("max_message", parse_size), ("idle_timeout", parse_duration)):
            if key in raw:
                if not on:
                    self.fail((*path, key), f"{key} applies to WebSocket forwards only: add websocket: true")
                    return None
                out[key] = self.converted(raw[key], (*path, key), parse)
                if out[key] is None:
                    return None
        up_url = self.doc.data.get("upstreams", {}).get(upstream, {}) if isinstance(self.doc.data, dict) else {}
        up_url = up_url.get("url", "") if isinstance(up_url, dict) else ""
        if not on and isinstance(up_url, str) and up_url.startswith(("ws:", "wss:")):
            self.fail((*path, "upstream"), f"upstream {upstream!r} has a {up_url.split(':')[0]}:// url: only a "
                                           "forward with websocket: true can use it")
            return None
        if on:
            for key in ("response", "rewrite_urls", "cache", "max_body", "guard"):
                if key in raw:
                    self.fail((*path, key), f"{key} does not apply to a WebSocket forward: remove it")
                    return None
            if "methods" in raw and [str(m).upper() for m in raw["methods"] or []] != ["GET"]:
                self.fail((*path, "methods"), "a WebSocket forward is opened with GET: remove methods or use [GET]")
                return None
        return out

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
    return parts.scheme in ("http", "https", "ws", "wss") and bool(parts.hostname) and not parts.query \
        and not parts.fragment
