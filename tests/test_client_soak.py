"""Issue 7 soak: a real ``gateway serve`` forwarding, at a modest rate, to an upstream that randomly closes, resets,
stalls, cuts bodies short and answers early. No POST reaches the upstream twice, no call outlives the configured
timeouts, the gateway's RSS stays flat, and it logs no traceback.

Not in the default run (marker ``soak``): ``make soak``, or ``pytest -m soak tests/test_client_soak.py``.
``GATEWAY_SOAK_SECONDS`` sets the duration (default 600).
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import json
import os
import random
import socket
import struct
import time
from pathlib import Path

import aiohttp
import pytest
from cli_support import PYTHON_M, Server, clean_env, free_port
from client_support import RawServer

pytestmark = pytest.mark.soak
pytest_plugins = ["client_support"]

SECONDS = float(os.environ.get("GATEWAY_SOAK_SECONDS", "600"))
TIMEOUT = 1.0  # the upstream's timeout in the config
RETRIES = 2
HANG = 10.0  # a call still running after this long is a hang
WORKERS = 4
SECRET = "sk-soak-TOPSECRET-0123456789abcdef"
BEHAVIOURS = {  # weight of each upstream behaviour
    "ok": 40, "gzip": 8, "trickle": 5, "close-before-answer": 10, "reset": 10, "stall": 5, "early": 12,
    "cut-body": 5, "stall-mid-body": 5,
}
CONFIG = """\
server: {{ host: 127.0.0.1, max_body: 1mb }}
upstreams:
  svc:
    url: http://127.0.0.1:{port}
    timeout: {timeout}s
    retries: {retries}
    max_connections: 8
    forward_headers: [X-Req-Id]
    inject: {{ headers: {{ Authorization: "Bearer ${{SVC_KEY}}" }} }}
forwards:
  svc/[...path]: {{ upstream: svc, path: "/{{path}}", methods: [GET, POST] }}
"""


class Chaos:
    """The upstream: each request gets a behaviour drawn at random; every request head that arrives is counted."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.arrivals: collections.Counter[str] = collections.Counter()  # "POST id" -> times it reached us
        self.behaviours: collections.Counter[str] = collections.Counter()

    async def handle(self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await server.read_head(reader)) is not None:
            method = head.split(b" ", 1)[0].decode()
            rid = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"x-req-id:")), "")
            self.arrivals[f"{method} {rid}"] += 1
            kind = self.rng.choices(list(BEHAVIOURS), list(BEHAVIOURS.values()))[0]
            self.behaviours[kind] += 1
            if kind == "early" and method == "POST" and b"content-length: 0\r\n" not in head.lower():
                await reader.read(1000)  # a little of the body, then the verdict; the rest is never read
                writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
                             b"too large")
                await writer.drain()
                return
            body = await server.read_body(reader, head)
            if body is None:
                return
            if kind == "close-before-answer":
                return
            if kind == "reset":
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if kind == "stall":
                await asyncio.sleep(TIMEOUT * 1.5)  # a deliberately stalled upstream
                return
            payload = json.dumps({"id": rid, "size": len(body), "echo": f"key {SECRET}"}).encode()
            if kind == "gzip":
                packed = gzip.compress(payload)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(packed), packed))
            elif kind in ("trickle", "cut-body", "stall-mid-body"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(0, len(payload), 16):
                    writer.write(b"%x\r\n%b\r\n" % (len(payload[i:i + 16]), payload[i:i + 16]))
                    await writer.drain()
                    if kind == "cut-body" and i >= 16:
                        return
                    if kind == "stall-mid-body" and i >= 16:
                        await asyncio.sleep(TIMEOUT * 1.5)
                        return
                    await asyncio.sleep(0.02)  # a slow stream, never silent for the timeout
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(payload), payload))
            await writer.drain()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_soak(raw_server, tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("RSS is read from /proc (Linux)")
    chaos = Chaos(seed=7)
    upstream = await raw_server(chaos.handle)
    port = free_port()
    (tmp_path / "config.yaml").write_text(CONFIG.format(port=upstream.port, timeout=TIMEOUT, retries=RETRIES))
    (tmp_path / "routes").mkdir()
    env = clean_env(SVC_KEY=SECRET)
    statuses: collections.Counter[str] = collections.Counter()
    durations: list[float] = []
    samples: list[tuple[float, int]] = []
    with Server(PYTHON_M, "serve", "--config", str(tmp_path / "config.yaml"), "--port", str(port), cwd=tmp_path,
                env=env, port=port) as gateway:
        await asyncio.to_thread(gateway.wait_ready)
        start = time.monotonic()
        deadline = start + SECONDS

        async def worker(n: int) -> None:
            rng = random.Random(n)
            timeout = aiohttp.ClientTimeout(total=HANG)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for i in range(1_000_000):  # bounded: the deadline ends it long before
                    if time.monotonic() > deadline:
                        return
                    rid = f"{n}-{i}"
                    post = rng.random() < 0.4
                    size = rng.choice([0, 100, 5_000, 200_000])  # 0: a POST without a body, held as bytes
                    body = rng.randbytes(size) if post and size else None
                    began = time.monotonic()
                    try:
                        async with session.request("POST" if post else "GET", f"http://127.0.0.1:{port}/api/svc/x",
                                                   data=body, headers={"X-Req-Id": rid}) as resp:
                            data = await resp.read()
                            statuses[str(resp.status)] += 1
                            assert SECRET not in data.decode("utf-8", "replace")
                    except aiohttp.ClientPayloadError:
                        statuses["cut"] += 1  # the upstream failed mid-stream: the gateway cut the body
                    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                        statuses["disconnected"] += 1
                    except TimeoutError:
                        statuses["hang"] += 1
                    durations.append(time.monotonic() - began)
                    await asyncio.sleep(rng.uniform(0.02, 0.1))  # a modest rate

        async def sample() -> None:
            while time.monotonic() < deadline:
                samples.append((time.monotonic() - start, rss_kib(gateway.proc.pid)))
                await asyncio.sleep(1)

        await asyncio.gather(sample(), *(worker(n) for n in range(WORKERS)))
        gateway.alive()
        stderr = gateway.stderr + gateway.stdout
    report = {"seconds": SECONDS, "calls": len(durations), "statuses": dict(statuses),
              "behaviours": dict(chaos.behaviours), "max_call_s": round(max(durations), 3),
              "rss_kib_first_last_max": (samples[0][1], samples[-1][1], max(s for _, s in samples))}
    print(json.dumps(report))
    duplicates = {key: n for key, n in chaos.arrivals.items() if key.startswith("POST") and n > 1}
    assert not duplicates, f"POST requests that reached the upstream more than once: {duplicates}"
    assert statuses["hang"] == 0
    assert max(durations) < TIMEOUT * (1 + RETRIES) + 1.5, report
    assert set(statuses) <= {"200", "413", "502", "503", "504", "cut", "disconnected"}, report
    assert statuses["200"] > len(durations) / 4, report
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr[-3000:]
    assert SECRET not in stderr
    warm = [rss for t, rss in samples if SECONDS * 0.1 <= t <= SECONDS * 0.25] or [samples[0][1]]
    late = [rss for t, rss in samples if t >= SECONDS * 0.9] or [samples[-1][1]]
    assert min(late) <= max(warm) * 1.2 + 16 * 1024, report  # flat: no growth with the number of calls
