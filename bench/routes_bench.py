"""Route matching cost: requests/s through `gateway serve` with 10 vs 1,000 file routes, in one run.

Each table mixes static routes (`s{i}.py`) and dynamic ones (`d{i}/[id].py`); the load hits the route
registered last, where a linear scan would hurt most. The gateway is pinned to CPU 0 and the load to CPU 1
when `taskset` exists. The load is wrk when installed (`apt-get install wrk`), else a bounded aiohttp client loop
whose figures are only indicative. Only 127.0.0.1 is used; every run is bounded in time (the defaults: about a
minute).

    make bench                     # after bench/proxy_bench.py; or: .venv/bin/python bench/routes_bench.py --reps 3
Prints req/s per table size and the ratio 1000/10 per repetition (a ratio near 1.0 means no growth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROUTE = "async def GET(req):\n    return {{\"route\": {i}, \"id\": req.match_info.get(\"id\")}}\n"


def make_tree(root: Path, n: int) -> str:
    routes = root / "routes"
    routes.mkdir(parents=True)
    for i in range(n // 2):
        (routes / f"s{i}.py").write_text(ROUTE.format(i=i))
        (routes / f"d{i}").mkdir()
        (routes / f"d{i}" / "[id].py").write_text(ROUTE.format(i=i))
    (root / "config.yaml").write_text("server:\n  prefix: /api\n  routes: routes\n")
    return f"/api/d{n // 2 - 1}/abc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") and os.cpu_count() > 1 else argv


def wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gateway did not answer {url} in time")


async def client_load(url: str, seconds: float, connections: int = 32) -> float:
    import aiohttp

    done = 0
    stop = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop:
            async with session.get(url) as r:
                await r.read()
            done += 1

    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        return done / (time.monotonic() - start)


def measure(url: str, seconds: float) -> float:
    if shutil.which("wrk"):
        out = subprocess.run(pinned(1, ["wrk", "-t1", "-c64", f"-d{max(1, round(seconds))}s", url]),
                             capture_output=True, text=True, timeout=seconds + 30).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not match:
            raise RuntimeError(f"wrk output not understood:\n{out}")
        return float(match[1])
    return asyncio.run(client_load(url, seconds))


def run_once(n: int, seconds: float, tmp: Path) -> float:
    root = tmp / f"t{n}"
    if not root.exists():
        make_tree(root, n)
    path = f"/api/d{n // 2 - 1}/abc"
    port = free_port()
    gateway = [sys.executable, "-m", "gateway", "serve", "--config", str(root / "config.yaml"),
               "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(pinned(0, gateway), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}{path}"
        wait_ready(url, time.monotonic() + 60)
        measure(url, 1)  # warm-up
        return measure(url, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    sizes = (10, 1000)
    results: dict[int, list[float]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for n in sizes:  # interleaved, so both sizes see the same machine noise
                results[n].append(run_once(n, args.seconds, Path(tmp)))
            ratio = results[1000][-1] / results[10][-1]
            print(f"rep {rep + 1}: 10 routes {results[10][-1]:,.0f} req/s, 1000 routes {results[1000][-1]:,.0f} "
                  f"req/s, ratio {ratio:.2f}", flush=True)
    ratios = [b / a for a, b in zip(results[10], results[1000], strict=True)]
    summary = {
        "load": "wrk -t1 -c64" if shutil.which("wrk") else "aiohttp client, 32 connections",
        "req_per_s_10": statistics.median(results[10]),
        "req_per_s_1000": statistics.median(results[1000]),
        "ratio_1000_to_10_median": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
