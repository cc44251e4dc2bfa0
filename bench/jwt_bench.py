"""JWT verification cost: requests/s through `gateway serve` to one file route, without and with clients.jwt.

Three gateways answer the same route: without auth, and with a signed-in user's token (RS256 2048-bit, then
ES256) verified on every request. The JWKS is served from a thread on 127.0.0.1; the load is wrk when installed,
else a bounded aiohttp client loop (routes_bench.py's). Runs interleave, so all three see the same machine noise.

    .venv/bin/python bench/jwt_bench.py --reps 3 --seconds 5
Prints req/s per mode and the ratio on/off per repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from routes_bench import free_port, pinned, wait_ready

ROUTE = "async def GET(req):\n    return {'sub': (req.get('claims') or {}).get('sub')}\n"
CONFIG = """\
server: {{ prefix: /api, routes: routes }}
clients:
  jwt:
    jwks_url: {url}
    issuer: https://idp.bench/
    audience: bench
"""


def keys() -> tuple[dict, dict[str, str]]:
    """A JWKS with one RSA and one EC key, and a token signed by each."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": "https://idp.bench/", "aud": "bench", "sub": "bench-user", "exp": int(time.time()) + 3600}
    jwks = {"keys": [{**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "r", "alg": "RS256"},
                     {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e", "alg": "ES256"}]}
    tokens = {"RS256": jwt.encode(claims, rsa_key, "RS256", headers={"kid": "r"}),
              "ES256": jwt.encode(claims, ec_key, "ES256", headers={"kid": "e"})}
    return jwks, tokens


def serve_jwks(jwks: dict) -> tuple[http.server.ThreadingHTTPServer, str]:
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/jwks.json"


async def client_load(url: str, headers: dict[str, str], seconds: float, connections: int = 32) -> float:
    import aiohttp

    done = 0
    stop = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with session.get(url, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}")
            done += 1

    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        return done / (time.monotonic() - start)


def measure(url: str, headers: dict[str, str], seconds: float) -> float:
    if shutil.which("wrk"):
        flags = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        out = subprocess.run(pinned(1, ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", *flags, url]),
                             capture_output=True, text=True, timeout=seconds + 30).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not match or "Non-2xx" in out:
            raise RuntimeError(f"wrk output not understood, or errors:\n{out}")
        return float(match[1])
    return asyncio.run(client_load(url, headers, seconds))


def run_once(root: Path, headers: dict[str, str], seconds: float) -> float:
    port = free_port()
    gateway = [sys.executable, "-m", "gateway", "serve", "--config", str(root / "config.yaml"),
               "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(pinned(0, gateway), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 60)
        url = f"http://127.0.0.1:{port}/api/me"
        measure(url, headers, 1)  # warm-up
        return measure(url, headers, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    jwks, tokens = keys()
    server, url = serve_jwks(jwks)
    modes = {"off": {}, **{alg: {"Authorization": f"Bearer {token}"} for alg, token in tokens.items()}}
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            off, on = Path(tmp, "off"), Path(tmp, "on")
            for root, config in ((off, "server: { prefix: /api, routes: routes }\n"), (on, CONFIG.format(url=url))):
                (root / "routes").mkdir(parents=True)
                (root / "routes" / "me.py").write_text(ROUTE)
                (root / "config.yaml").write_text(config)
            for rep in range(args.reps):
                for mode, headers in modes.items():
                    results[mode].append(run_once(off if mode == "off" else on, headers, args.seconds))
                line = ", ".join(f"{mode} {results[mode][-1]:,.0f} req/s" for mode in modes)
                print(f"rep {rep + 1}: jwt {line}", flush=True)
    finally:
        server.shutdown()
    summary = {
        "load": "wrk -t1 -c64" if shutil.which("wrk") else "aiohttp client, 32 connections",
        **{f"req_per_s_{mode}": statistics.median(values) for mode, values in results.items()},
        **{f"ratio_{alg}_to_off": statistics.median(a / b for a, b in zip(results[alg], results["off"], strict=True))
           for alg in tokens},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
