"""Forwarding cost: `gateway serve` against a naive aiohttp + uvloop proxy, measured in the same run.

One upstream (nginx when installed, else a small aiohttp server) answers `/bench` (1 KB of JSON), `/large` (1 MiB)
and `/headers` (the Authorization it received). Two proxies forward `/api/<path>` to it with
`Authorization: Bearer $SECRET` added:

* **gateway** — `gateway serve --config bench/gateway.yaml` as shipped: header allowlists both ways, secret
  scrubbing of headers and bodies, `Server` replaced, `X-Request-Id`, the JSON access log (to /dev/null) and metrics;
* **naive** — the reverse proxy a competent Python developer would write in 40 lines (one shared ClientSession,
  hop-by-hop headers dropped, `await up.read()`, on uvloop), as in `../shared/bench/peers/aiohttp/proxy.py`: it
  masks nothing (the `/headers` check shows the secret coming back through it).

Each repetition starts each proxy afresh, pinned to CPU 0 (wrk and the upstream on CPU 1, when `taskset` exists),
warms it up, then loads it with wrk: `-t1 -c64` on `/api/bench` (req/s, p99, and the CPU time the proxy process
spent per request, from /proc) and `-t1 -c16` on `/api/large` (MB/s). The two proxies alternate which goes first, so
both see the same machine noise; compare the ratios per repetition. On a shared machine the ratio by CPU time is the
steadier one: other work slows a proxy down without making it spend more CPU on each request.

    make bench                         # this, then bench/routes_bench.py
    .venv/bin/python bench/proxy_bench.py --reps 5 --seconds 5 --large-seconds 3    # the defaults: about 2 minutes
Only 127.0.0.1 is used; every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef"
BODY = json.dumps({"items": [{"id": i, "name": f"item-{i:04d}", "tags": ["a", "b"], "price": i * 1.5}
                             for i in range(17)]}, separators=(",", ":"))  # 1,000 bytes of JSON
NGINX = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/t1; proxy_temp_path {tmp}/t2; fastcgi_temp_path {tmp}/t3;
  uwsgi_temp_path {tmp}/t4; scgi_temp_path {tmp}/t5;
  keepalive_requests 10000000;
  server {{
    listen 127.0.0.1:{port}{ssl} backlog=4096;{certs}
    location = /bench {{ default_type application/json; return 200 '{body}'; }}
    location = /large {{ default_type application/json; alias {tmp}/large.json; }}
    location = /headers {{ default_type application/json; return 200 '{{"authorization": "$http_authorization"}}'; }}
  }}
}}
"""


# -- the naive proxy and the fallback upstream (run as subprocesses of this file) --------------------------------

def serve_naive(port: int, upstream: str) -> None:
    import uvloop
    from aiohttp import ClientSession, web

    drop = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
            "transfer-encoding", "upgrade", "host", "content-length", "content-encoding", "server", "date"}

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        headers["Authorization"] = f"Bearer {SECRET}"
        body = await request.read() if request.body_exists else None
        async with request.app["session"].request(request.method, f"{upstream}/{request.match_info['tail']}",
                                                  params=request.query, headers=headers, data=body) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in drop}
            return web.Response(status=up.status, headers=out, body=await up.read())

    async def session(app: web.Application):
        app["session"] = ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    async def no_server(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.popall("Server", None)

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.on_response_prepare.append(no_server)
    app.router.add_route("*", "/api/{tail:.*}", proxy)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


def serve_upstream(port: int) -> None:
    import uvloop
    from aiohttp import web

    large = b"[" + b",".join([BODY.encode()] * (1024 * 1024 // (len(BODY) + 1))) + b"]"

    async def bench(request: web.Request) -> web.Response:
        return web.Response(body=BODY.encode(), content_type="application/json")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=large, content_type="application/json")

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({"authorization": request.headers.get("Authorization", "")})

    app = web.Application()
    app.router.add_get("/bench", bench)
    app.router.add_get("/large", big)
    app.router.add_get("/headers", headers)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop())


# -- running things ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


@contextmanager
def started(argv: list[str], ready: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """A process in its own session, ready once ``ready`` answers 200; stopped (its whole group) on the way out."""
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, cwd=cwd)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(argv)} did not answer {ready} in 60 s") from None
                time.sleep(0.1)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def upstream(tmp: Path, tls: bool = False):
    """The upstream every bench forwards to: its URL and what it is. ``tls``: nginx over HTTPS on loopback, with a
    throwaway CA that the gateways started meanwhile trust (SSL_CERT_FILE), as a third-party API is reached."""
    port = free_port()
    if tls and not shutil.which("nginx"):
        raise SystemExit("an HTTPS upstream needs nginx: apt-get install nginx")
    ssl = certs = ""
    scheme = "https" if tls else "http"
    if tls:
        ssl, certs = " ssl", f" ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;"
    if shutil.which("nginx"):
        tmp.chmod(0o755)  # a root master runs its worker as nobody, which must read large.json
        large = tmp / "large.json"
        large.write_text("[" + ",".join([BODY] * (1024 * 1024 // (len(BODY) + 1))) + "]")
        large.chmod(0o644)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX.format(tmp=tmp, port=port, body=BODY, ssl=ssl, certs=certs))
        argv = pinned(1, ["nginx", "-e", "stderr", "-p", str(tmp), "-c", str(conf)])
        kind = "nginx"
    else:
        argv = pinned(1, [sys.executable, __file__, "--serve-upstream", str(port)])
        kind = "aiohttp (install nginx for an upstream that is never the bottleneck)"
    trusted = os.environ.get("SSL_CERT_FILE")
    if tls:
        os.environ["SSL_CERT_FILE"] = str(self_signed(tmp))  # read by this process's probe and the gateways' pools
        kind += " over HTTPS"
    try:
        with started(argv, f"{scheme}://127.0.0.1:{port}/bench"):
            yield f"{scheme}://127.0.0.1:{port}", kind
    finally:
        if tls:
            os.environ.pop("SSL_CERT_FILE")
            if trusted is not None:
                os.environ["SSL_CERT_FILE"] = trusted


def self_signed(tmp: Path) -> Path:
    """A throwaway CA (ca.pem) and a certificate for 127.0.0.1 signed by it (cert.pem, key.pem) in ``tmp``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    (tmp / "key.pem").chmod(0o600)  # nginx's master reads it before it starts its workers
    return tmp / "ca.pem"


def target_argv(name: str, port: int, upstream_url: str, baseline: Path | None) -> tuple[list[str], dict[str, str]]:
    if name == "naive":
        return pinned(0, [sys.executable, __file__, "--serve-naive", str(port), upstream_url]), {}
    env = {"UPSTREAM": upstream_url, "SECRET": SECRET}
    source = ROOT
    if name == "baseline" and baseline is not None:  # another source tree of the gateway, run on this venv
        env["PYTHONPATH"], source = str(baseline), baseline
    config = source / "bench" / ("gateway-quiet.yaml" if name == "quiet" else "gateway.yaml")
    return pinned(0, [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1",
                      "--port", str(port)]), env


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    if not shutil.which("wrk"):
        return asyncio.run(client_load(url, connections, seconds))
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                                    url]), capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if not (rate and count and transfer and p99):
        raise RuntimeError(f"wrk output not understood:\n{out}")
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[transfer[2]]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors[1]} answers were not 2xx")
    return {"rps": float(rate[1]), "requests": int(count[1]), "mbps": float(transfer[1]) * scale / 1e6,
            "p99_ms": float(p99[1]) * {"us": 0.001, "ms": 1, "s": 1000}[p99[2]]}


async def client_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    """Without wrk: a bounded aiohttp loop (it shares the machine's cores, so its figures are only indicative)."""
    import aiohttp

    done, size, stop = 0, 0, time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, size
        while time.monotonic() < stop:
            async with session.get(url) as r:
                size += len(await r.read())
            done += 1

    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        elapsed = time.monotonic() - start
    return {"rps": done / elapsed, "requests": done, "mbps": size / elapsed / 1e6, "p99_ms": float("nan")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat): what it spent, whatever else ran meanwhile."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(port: int) -> str:
    """What the upstream's echo of Authorization looks like through the proxy (the gateway scrubs it)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/headers", timeout=5) as r:
        seen = json.loads(r.read())["authorization"]
    return "secret shown" if SECRET in seen else "masked" if "[REDACTED]" in seen else f"unexpected: {seen!r}"


def measure(name: str, upstream_url: str, args: argparse.Namespace) -> dict[str, float | str]:
    port = free_port()
    argv, env = target_argv(name, port, upstream_url, args.baseline)
    # python -m puts the working directory first on sys.path: a baseline runs from its own tree
    cwd = args.baseline if name == "baseline" else ROOT
    with started(argv, f"http://127.0.0.1:{port}/api/bench", env, cwd) as proc:
        seen = check(port)
        wrk(f"http://127.0.0.1:{port}/api/bench", 64, 1)  # warm-up, not recorded
        before = cpu_seconds(proc.pid)  # taskset execs the proxy: the same pid
        small = wrk(f"http://127.0.0.1:{port}/api/bench", 64, args.seconds)
        cpu_us = (cpu_seconds(proc.pid) - before) / small["requests"] * 1e6
        large = wrk(f"http://127.0.0.1:{port}/api/large", 16, args.large_seconds) if args.large_seconds else {}
    return {"rps": small["rps"], "p99_ms": small["p99_ms"], "cpu_us": cpu_us, "mbps": large.get("mbps", float("nan")),
            "check": seen}


def shown(run: dict) -> str:
    return (f"{run['rps']:,.0f} req/s, {run['cpu_us']:.0f} µs CPU/req (p99 {run['p99_ms']:.1f} ms, "
            f"1 MiB {run['mbps']:,.0f} MB/s)")


def extra_ratios(name: str, runs: dict[str, list[dict]]) -> dict[str, object]:
    """Another gateway's ratios to the naive proxy, per repetition and median (both measured in each repetition)."""
    pairs = list(zip(runs[name], runs["naive"], strict=True))
    by_cpu = [n["cpu_us"] / b["cpu_us"] for b, n in pairs]
    rps = [b["rps"] / n["rps"] for b, n in pairs]
    return {f"{name}_to_naive_by_cpu_median": round(statistics.median(by_cpu), 2),
            f"{name}_to_naive_by_cpu_per_rep": [round(r, 2) for r in by_cpu],
            f"{name}_to_naive_rps_median": round(statistics.median(rps), 2),
            f"{name}_to_naive_rps_per_rep": [round(r, 2) for r in rps]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5, help="load per proxy on 1 KB JSON (wrk -c64)")
    parser.add_argument("--large-seconds", type=float, default=3, help="load on 1 MiB (wrk -c16); 0 to skip")
    parser.add_argument("--baseline", type=Path, help="also measure the gateway of another source tree (e.g. "
                        "`git archive COMMIT | tar -x -C /tmp/old`; run with this venv's packages)")
    parser.add_argument("--quiet", action="store_true", help="also measure this gateway with bench/gateway-quiet.yaml "
                        "(access log and metrics off: the proxy path alone)")
    parser.add_argument("--serve-naive", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-upstream", metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        serve_naive(int(args.serve_naive[0]), args.serve_naive[1])
        return 0
    if args.serve_upstream:
        serve_upstream(int(args.serve_upstream))
        return 0
    load = "wrk -t1 -c64 (1 KB) / -c16 (1 MiB)" if shutil.which("wrk") else \
        "a Python client (wrk not installed: apt-get install wrk); these figures are not comparable with the README's"
    names = ("gateway", "naive", *(("quiet",) if args.quiet else ()), *(("baseline",) if args.baseline else ()))
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp, upstream(Path(tmp)) as (upstream_url, kind):
        print(f"upstream: {kind}; load: {load}; {args.reps} reps", flush=True)
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else names[::-1]:  # alternate who goes first
                runs[name].append(measure(name, upstream_url, args))
            g, n = runs["gateway"][-1], runs["naive"][-1]
            print(f"rep {rep + 1}: gateway {shown(g)} | naive {shown(n)} | gateway / naive: req/s "
                  f"{g['rps'] / n['rps']:.2f}, by CPU {n['cpu_us'] / g['cpu_us']:.2f}", flush=True)
            for extra in names[2:]:
                b = runs[extra][-1]
                print(f"       {extra} {shown(b)} | {extra} / naive: req/s {b['rps'] / n['rps']:.2f}, "
                      f"by CPU {n['cpu_us'] / b['cpu_us']:.2f}", flush=True)
    ratios = [g["rps"] / n["rps"] for g, n in zip(runs["gateway"], runs["naive"], strict=True)]
    # requests per CPU-second, gateway over naive: steadier than req/s when other work shares the machine
    cpu_ratios = [n["cpu_us"] / g["cpu_us"] for g, n in zip(runs["gateway"], runs["naive"], strict=True)]
    mb_ratios = [g["mbps"] / n["mbps"] for g, n in zip(runs["gateway"], runs["naive"], strict=True)]
    summary = {
        "upstream": kind.split(" ")[0],
        "load": load,
        "check": {name: sorted({r["check"] for r in runs[name]}) for name in names},
        **{f"{name}_rps_median": round(statistics.median(r["rps"] for r in runs[name])) for name in names},
        **{f"{name}_p99_ms_median": round(statistics.median(r["p99_ms"] for r in runs[name]), 1) for name in names},
        **{f"{name}_1mib_mbps_median": round(statistics.median(r["mbps"] for r in runs[name])) for name in names
           if args.large_seconds},
        **{f"{name}_cpu_us_per_request_median": round(statistics.median(r["cpu_us"] for r in runs[name]))
           for name in names},
        "gateway_to_naive_rps_median": round(statistics.median(ratios), 2),
        "gateway_to_naive_rps_per_rep": [round(r, 2) for r in ratios],
        "gateway_to_naive_by_cpu_median": round(statistics.median(cpu_ratios), 2),
        "gateway_to_naive_by_cpu_per_rep": [round(r, 2) for r in cpu_ratios],
        **{key: value for extra in names[2:] for key, value in extra_ratios(extra, runs).items()},
        **({"gateway_to_naive_1mib_median": round(statistics.median(mb_ratios), 2)} if args.large_seconds else {}),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
