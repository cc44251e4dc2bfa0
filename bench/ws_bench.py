"""WebSocket forwards: small-message throughput and added latency through `gateway serve` vs the upstream direct,
and the gateway's memory per idle connection, in one run.

The upstream is an aiohttp echo server (uvloop) in its own process; the gateway forwards `/api/rt` to it with a
secret injected. Each repetition runs the same load against the upstream directly and through the gateway, in
turn, so the ratio compares runs minutes apart at most. The gateway is pinned to CPU 0, the upstream and the load
to CPU 1 when `taskset` exists. Only 127.0.0.1 is used; every loop is bounded in time and count.

    .venv/bin/python bench/ws_bench.py --reps 3 --seconds 5 --conns 16 --idle 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from routes_bench import free_port, pinned, wait_ready  # noqa: E402

UPSTREAM = """
import sys, uvloop
from aiohttp import web
async def rt(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(msg.data)
    return ws
app = web.Application()
app.router.add_get("/rt", rt)
async def ok(request):
    return web.Response(text="ok")
app.router.add_get("/ok", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
"""
CONFIG = """
server: {{ host: 127.0.0.1, routes: null }}
upstreams:
  up:
    url: http://127.0.0.1:{port}
    inject: {{ headers: {{ Authorization: "Bearer bench-secret-0123456789" }} }}
forwards:
  rt: {{ upstream: up, path: /rt, websocket: true }}
"""
MESSAGE = '{"type":"input_audio_buffer.append","audio":"' + "A" * 64 + '"}'


async def load(url: str, conns: int, seconds: float) -> tuple[float, list[float]]:
    """Each connection sends a message and waits for its echo, over and over: messages/s and round-trip times."""
    rtts: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url) for _ in range(conns)]

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal count
            while (start := time.perf_counter()) < deadline:
                await ws.send_str(MESSAGE)
                await ws.receive_str()
                rtts.append(time.perf_counter() - start)
                count += 1

        began = time.perf_counter()
        await asyncio.gather(*(one(ws) for ws in sockets))
        elapsed = time.perf_counter() - began
        for ws in sockets:
            await ws.close()
    return count / elapsed, rtts


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def idle_memory(url: str, pid: int, n: int) -> float:
    """KiB of gateway RSS per open, idle WebSocket (n connections, each with one message exchanged)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        warm = [await session.ws_connect(url) for _ in range(20)]
        for ws in warm:
            await ws.close()
        before = rss_kb(pid)
        sockets = []
        for _ in range(n):
            ws = await session.ws_connect(url)
            await ws.send_str("hi")
            await ws.receive_str()
            sockets.append(ws)
        after = rss_kb(pid)
        for ws in sockets:
            await ws.close()
    return (after - before) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # 1,000 sockets each side, at least
    up_port, gw_port = free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "up.py").write_text(UPSTREAM)
        (Path(tmp) / "config.yaml").write_text(CONFIG.format(port=up_port))
        try:
            procs.append(subprocess.Popen(pinned(1, [sys.executable, str(Path(tmp) / "up.py"), str(up_port)])))
            gateway = subprocess.Popen(pinned(0, [sys.executable, "-m", "gateway", "serve", "--config",
                                                  str(Path(tmp) / "config.yaml"), "--port", str(gw_port)]),
                                       stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            procs.append(gateway)
            deadline = time.monotonic() + 30
            wait_ready(f"http://127.0.0.1:{up_port}/ok", deadline)
            wait_ready(f"http://127.0.0.1:{gw_port}/healthz", deadline)
            direct, through = f"ws://127.0.0.1:{up_port}/rt", f"ws://127.0.0.1:{gw_port}/api/rt"
            rows = []
            for rep in range(args.reps):
                d_rate, d_rtt = asyncio.run(load(direct, args.conns, args.seconds))
                g_rate, g_rtt = asyncio.run(load(through, args.conns, args.seconds))
                q = statistics.quantiles
                row = (d_rate, g_rate, q(d_rtt, n=100)[49] * 1e3, q(g_rtt, n=100)[49] * 1e3,
                       q(d_rtt, n=100)[98] * 1e3, q(g_rtt, n=100)[98] * 1e3)
                rows.append(row)
                print(f"rep {rep + 1}: direct {row[0]:,.0f} msg/s, gateway {row[1]:,.0f} msg/s "
                      f"(ratio {row[1] / row[0]:.2f}); p50 {row[2]:.2f} -> {row[3]:.2f} ms; "
                      f"p99 {row[4]:.2f} -> {row[5]:.2f} ms", flush=True)
            ratios = [r[1] / r[0] for r in rows]
            print(f"median: gateway/direct {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f});"
                  f" added p50 {statistics.median(r[3] - r[2] for r in rows):.2f} ms, "
                  f"added p99 {statistics.median(r[5] - r[4] for r in rows):.2f} ms")
            if args.idle:
                per = asyncio.run(idle_memory(through, gateway.pid, args.idle))
                print(f"idle: {per:.1f} KiB of gateway RSS per open WebSocket ({args.idle} open)")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
