"""Shared state on Redis, measured (SPEC §9, issue 11): one rate-limit check, and the whole gateway, vs memory.

1. One check, in-process against a real redis-server on 127.0.0.1: checks/s and the mean latency of
     memory      MemoryState.acquire
     lua         RedisState.acquire: one EVALSHA for all of a request's limits, all or nothing
     limits-hit  limits' RedisStorage (redis-py) + FixedWindowRateLimiter.hit per limit: one round trip per limit,
                 not all or nothing (a refused request is counted; a second limit is counted although the first
                 refused), and no remaining/reset for the RateLimit fields
     limits-full the same plus get_window_stats per limit (GET + TTL: what the RateLimit fields need)
   each with 1 and 2 limits, one at a time (latency) and 32 at once (throughput).
2. `gateway serve` with a rate-limited route, state in memory vs on Redis, interleaved in the same run: req/s with
   wrk -t1 -c64, and the gateway's CPU time per request (which other load on the machine disturbs least). The
   gateway and redis-server are pinned to CPU 0, wrk to CPU 1 (with wrk, redis-server is starved: --redis-cpu 1).

    .venv/bin/python bench/redis_bench.py [--seconds 5] [--reps 3]
Only 127.0.0.1 is used; every run is bounded in time. Needs Debian's redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from routes_bench import free_port, pinned, wait_ready

from gateway.state import Limit, limit_item
from gateway.state.memory import MemoryState
from gateway.state.shared import RedisState
from gateway.state.url import parse_state
from gateway.units import Rate

ROUTE = "async def GET(req):\n    return {'ok': True}\n"


def start_redis(root: Path, cpu: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(pinned(cpu, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(root)]), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != \
            "PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return proc, port


# -- 1. one check ---------------------------------------------------------------------------------------------------


ITEM = limit_item(Rate(10**9, 3600.0))
CLIENTS = {n: [[Limit(ITEM, (f"p{i}", "/api/x", f"ip:10.0.{c // 250}.{c % 250}")) for i in range(n)]
               for c in range(5000)] for n in (1, 2)}  # built once: the loop measures the check, not its arguments


async def check_rate(check, n_limits: int, concurrency: int, seconds: float) -> tuple[float, float]:
    """(checks/s, mean latency in microseconds) over ``seconds``, ``concurrency`` checks in flight."""
    done, spent = 0, 0.0
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done, spent
        i = 0
        while time.monotonic() < stop:
            limits = CLIENTS[n_limits][(w * 1000 + i) % 5000]
            t = time.perf_counter()
            await check(limits)
            spent += time.perf_counter() - t
            done += 1
            i += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done / (time.monotonic() - start), spent / done * 1e6


async def bench_checks(port: int, seconds: float) -> dict[str, dict[str, float]]:
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import FixedWindowRateLimiter

    memory = MemoryState()
    redis = RedisState(parse_state(f"redis://127.0.0.1:{port}/0"))
    storage = RedisStorage(f"async+redis://127.0.0.1:{port}/0", implementation="redispy")
    limiter = FixedWindowRateLimiter(storage)

    async def limits_hit(limits: list[Limit]) -> None:
        for limit in limits:
            await limiter.hit(limit.item, *limit.scope)

    async def limits_full(limits: list[Limit]) -> None:
        for limit in limits:
            await limiter.hit(limit.item, *limit.scope)
            await limiter.get_window_stats(limit.item, *limit.scope)

    checks = {
        "memory": lambda limits: memory.acquire(limits, lock="c"),
        "lua": lambda limits: redis.acquire(limits, lock="c"),
        "limits-hit": limits_hit,
        "limits-full": limits_full,
    }
    out: dict[str, dict[str, float]] = {}
    try:
        for n_limits in (1, 2):
            for concurrency in (1, 32):
                row = f"{n_limits} limit(s), {concurrency} at once"
                out[row] = {}
                for name, check in checks.items():
                    await check_rate(check, n_limits, concurrency, 0.3)  # warm-up: connections, scripts loaded
                    rate, latency = await check_rate(check, n_limits, concurrency, seconds)
                    out[row][name] = round(rate)
                    out[row][f"{name} us"] = round(latency, 1)
                print(row, json.dumps(out[row]), flush=True)
        assert redis.health.up, "Redis was marked down during the run: the numbers above are not Redis's"
    finally:
        await redis.close()
        await storage.bridge.storage.aclose()
    return out


# -- 2. the whole gateway -------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wrk(url: str, seconds: float) -> tuple[float, int]:
    """(req/s, requests) from wrk -t1 -c64 on CPU 1."""
    out = subprocess.run(pinned(1, ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", url]),
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rate, count = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return float(rate[1]), int(count[1])


def serve_and_measure(root: Path, state: str, seconds: float) -> tuple[float, float]:
    """(req/s, the gateway's CPU microseconds per request): the second is what a busy machine disturbs least."""
    (root / "routes").mkdir(parents=True, exist_ok=True)
    (root / "routes" / "ping.py").write_text(ROUTE)
    (root / "config.yaml").write_text(f"server:\n  prefix: /api\n{state}clients:\n  rate_limit: 1000000000/hour\n")
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(root / "config.yaml"), "--host", "127.0.0.1",
            "--port", str(port)]
    proc = subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/ping"
        wait_ready(url, time.monotonic() + 60)
        wrk(url, 1)  # warm-up
        before = cpu_seconds(proc.pid)
        rate, count = wrk(url, seconds)
        return rate, (cpu_seconds(proc.pid) - before) / count * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--redis-cpu", type=int, default=0, help="the CPU redis-server is pinned to: 0 (default)"
                        " shares the gateway's; on 1, wrk's busy loop starves it and every reply waits")
    parser.add_argument("--skip-checks", action="store_true", help="measure the whole gateway only")
    args = parser.parse_args()
    if not shutil.which("redis-server") or not shutil.which("wrk"):
        print("needs redis-server and wrk: apt-get install -y redis-server wrk", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        redis, port = start_redis(Path(tmp), args.redis_cpu)
        try:
            checks = {} if args.skip_checks else asyncio.run(bench_checks(port, args.seconds / 2))
            runs: dict[str, list[tuple[float, float]]] = {"memory": [], "redis": []}
            for rep in range(args.reps):  # interleaved: both see the same machine noise
                runs["memory"].append(serve_and_measure(Path(tmp) / "m", "", args.seconds))
                runs["redis"].append(serve_and_measure(Path(tmp) / "r", f"state: redis://127.0.0.1:{port}/0\n",
                                                       args.seconds))
                (m, m_cpu), (r, r_cpu) = runs["memory"][-1], runs["redis"][-1]
                print(f"rep {rep + 1}: memory {m:,.0f} req/s ({m_cpu:.0f} us CPU/request), redis {r:,.0f} req/s "
                      f"({r_cpu:.0f} us), ratio {r / m:.2f} (by CPU {m_cpu / r_cpu:.2f})", flush=True)
        finally:
            redis.terminate()
            redis.wait(timeout=10)
    ratios = [r[0] / m[0] for m, r in zip(runs["memory"], runs["redis"], strict=True)]
    cpu_ratios = [m[1] / r[1] for m, r in zip(runs["memory"], runs["redis"], strict=True)]
    print(json.dumps({
        "checks_per_s": checks,
        "load": f"wrk -t1 -c64 on CPU 1, gateway on CPU 0, redis-server on CPU {args.redis_cpu}",
        "gateway_req_per_s_memory": statistics.median(r[0] for r in runs["memory"]),
        "gateway_req_per_s_redis": statistics.median(r[0] for r in runs["redis"]),
        "ratio_redis_to_memory_median": round(statistics.median(ratios), 3),
        "gateway_cpu_us_per_request_memory": round(statistics.median(r[1] for r in runs["memory"]), 1),
        "gateway_cpu_us_per_request_redis": round(statistics.median(r[1] for r in runs["redis"]), 1),
        "ratio_by_cpu_median": round(statistics.median(cpu_ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
