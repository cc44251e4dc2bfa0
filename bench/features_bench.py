"""What the protections cost: req/s of one forward through `gateway serve` with each feature on, against the same
forward with everything off, in one run. Each repetition starts a gateway per variant, then loads them in turn (each
repetition in the other order from the last, so `protected` always runs next to `plain`), and each ratio compares
the loads of one repetition, seconds apart, so slow drift of a shared machine cancels out of it. The processes are
new every repetition because one process can run a few percent faster or slower than another of the same code for
its whole life (where its memory landed); kept for a whole run, that would bias every ratio the same way.

    plain      a forward that injects a key (every masking feature on: allowlists, scrubbing)
    protected  the same with CORS and a generous rate limit on (every request carries an allowed Origin)
    protected2 the same with a second generous limit, the forward's own: each request passes two limits
    cached     the same with `cache: 5m`: every request after the first is a HIT
    observed   the same with the JSON access log and /metrics on (the others have both off)

The upstream (nginx when installed, as in proxy_bench.py, else a small aiohttp server: a 1 KB JSON answer) and
the load (wrk -t1 -c64 when installed, else a bounded aiohttp client loop) share CPU 1; the gateway runs on CPU 0
when `taskset` exists. Only 127.0.0.1 is used.
Besides req/s it reads the CPU time the gateway process spent per request (/proc), which other work on a shared
machine disturbs far less than req/s: the ratios are given both ways.

    .venv/bin/python bench/features_bench.py --reps 10 --seconds 3
    .venv/bin/python bench/features_bench.py --only cached --bare   # and a bare aiohttp app (no gateway)
    .venv/bin/python bench/features_bench.py --tls                  # the upstream over HTTPS (needs nginx)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proxy_bench import cpu_seconds, upstream  # noqa: E402
from routes_bench import free_port, pinned, wait_ready  # noqa: E402

BASE = """
server: {{ host: 127.0.0.1, routes: null{server} }}
{clients}
upstreams:
  up:
    url: {upstream}
    inject: {{ headers: {{ Authorization: "Bearer bench-secret-0123456789abcdef" }} }}
forwards:
  bench: {{ upstream: up, path: /bench{forward} }}
"""
QUIET = ", access_log: false, metrics: false"  # the other variants leave logs and metrics off: one change each
CORS = "clients:\n  cors: { origins: ['https://app.example.com'] }\n"
VARIANTS = {
    "plain": {"server": QUIET},
    "protected": {"server": QUIET, "clients": CORS + "  rate_limit: 100000000/minute"},
    "protected2": {"server": QUIET, "clients": CORS + "  rate_limit: 100000000/minute",
                   "forward": ", rate_limit: 100000000/minute"},
    "cached": {"server": QUIET, "forward": ", cache: 5m"},
    "observed": {"server": ", access_log: true, metrics: /metrics"},
}
ORIGIN = "Origin: https://app.example.com"

# the floor under any answer served through aiohttp: a bare aiohttp + uvloop app answering 1 KB of JSON
BARE_AIOHTTP = """
import sys, uvloop
from aiohttp import web
BODY = b'{"x": "' + b'a' * 1000 + b'"}'
async def answer(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_get("/api/bench", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
"""


def measure(url: str, seconds: float) -> tuple[float, int]:
    """req/s and the number of requests answered."""
    if shutil.which("wrk"):
        out = subprocess.run(pinned(1, ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", "-H", ORIGIN, url]),
                             capture_output=True, text=True, timeout=seconds + 30).stdout
        rps = requests = None
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                rps = float(line.split()[1])
            elif "requests in" in line:
                requests = int(line.split()[0])
        if rps is None or requests is None:
            raise RuntimeError(f"wrk output not understood:\n{out}")
        return rps, requests
    import asyncio

    from routes_bench import client_load

    rps = asyncio.run(client_load(url, seconds))
    return rps, round(rps * seconds)


def supported(variant: dict[str, str], root: Path) -> bool:
    """Whether this gateway accepts the variant's settings (`observed` needs the operations features)."""
    config = root / "probe.yaml"
    config.write_text(BASE.format(upstream="http://127.0.0.1:1", server=variant.get("server", ""),
                                  clients=variant.get("clients", ""), forward=variant.get("forward", "")))
    probe = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(config)], capture_output=True)
    return probe.returncode == 0


@contextmanager
def serving(name: str, variant: dict[str, str] | None, up_url: str, root: Path) -> Iterator[tuple[str, int]]:
    """A gateway serving the variant on CPU 0 (None: BARE_AIOHTTP), warmed up: its URL and pid, until the block ends."""
    port = free_port()
    argv = [sys.executable, "-c", BARE_AIOHTTP, str(port)]
    if variant is not None:
        config = root / f"{name}.yaml"
        config.write_text(BASE.format(upstream=up_url, server=variant.get("server", ""),
                                      clients=variant.get("clients", ""), forward=variant.get("forward", "")))
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/bench"
        wait_ready(url, time.monotonic() + 60)
        measure(url, 1)  # warm-up
        yield url, proc.pid  # taskset execs the gateway: the same pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def run_once(url: str, pid: int, seconds: float) -> tuple[float, float]:
    """req/s and the gateway's CPU µs per request."""
    before = cpu_seconds(pid)
    rps, requests = measure(url, seconds)
    return rps, (cpu_seconds(pid) - before) / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--only", help="these variants only, plain always among them (comma-separated: protected)")
    parser.add_argument("--bare", action="store_true", help="also a bare aiohttp app answering 1 KB (no gateway)")
    parser.add_argument("--tls", action="store_true", help="the upstream over HTTPS, as a third-party API is reached")
    args = parser.parse_args()
    if args.only and set(args.only.split(",")) - set(VARIANTS):
        parser.error(f"--only takes these variants: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wanted = {"plain", *args.only.split(",")} if args.only else set(VARIANTS)
        variants: dict[str, dict[str, str] | None] = {
            name: v for name, v in VARIANTS.items() if name in wanted and supported(v, root)}
        if args.bare:
            variants["bare"] = None
        (root / "upstream").mkdir()
        with upstream(root / "upstream", tls=args.tls) as (up_url, kind):
            print(f"upstream: {kind}", flush=True)
            results: dict[str, list[float]] = {name: [] for name in variants}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            for rep in range(args.reps):
                order = list(variants) if rep % 2 == 0 else list(reversed(variants))  # no variant always first
                with ExitStack() as gateways:  # new processes each repetition: see the docstring
                    served = {name: gateways.enter_context(serving(name, variants[name], up_url, root))
                              for name in order}
                    for name in order:
                        rps, cpu_us = run_once(*served[name], args.seconds)
                        results[name].append(rps)
                        cpu[name].append(cpu_us)
                line = ", ".join(f"{name} {results[name][-1]:,.0f} ({cpu[name][-1]:.0f} µs)" for name in variants)
                ratios = ", ".join(f"{name}/plain {results[name][-1] / results['plain'][-1]:.2f} "
                                   f"(by CPU {cpu['plain'][-1] / cpu[name][-1]:.2f})"
                                   for name in variants if name != "plain")
                print(f"rep {rep + 1}: {line} req/s (CPU per request); {ratios}", flush=True)
    summary: dict[str, dict[str, object]] = {}
    for name, values in results.items():
        ratios = [round(v / p, 3) for v, p in zip(values, results["plain"], strict=True)]
        by_cpu = [round(p / c, 3) for c, p in zip(cpu[name], cpu["plain"], strict=True)]  # > 1: cheaper than plain
        summary[name] = {"req_per_s_median": round(statistics.median(values)), "ratio_to_plain": ratios,
                         "ratio_median": round(statistics.median(ratios), 3),
                         "cpu_us_median": round(statistics.median(cpu[name]), 1), "ratio_by_cpu": by_cpu,
                         "ratio_by_cpu_median": round(statistics.median(by_cpu), 3)}
    print(json.dumps({"load": "wrk -t1 -c64" if shutil.which("wrk") else "aiohttp client", **summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
