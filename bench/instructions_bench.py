"""CPU instructions per request through `gateway serve`, counted by valgrind (callgrind): the same figure on every
run, where req/s and CPU time on this shared 2-core VM move by 20-30 % between runs.

A gateway process runs under callgrind with counting off; after a warm-up of 300 requests counting is switched on
(callgrind_control) for a fixed number of GETs of /api/bench, each with features_bench.py's allowed ``Origin``
header (which only the ``protected`` variant acts on), then off. Only the gateway's user-space instructions are counted,
not the kernel's share of a request (the same system calls in every variant), and not how fast they run: use it to
compare trees and configs, the benches for req/s. PYTHONHASHSEED=0 makes the count repeat to ~0.5k.

    .venv/bin/python bench/instructions_bench.py                         # the quiet forward (bench/gateway-quiet.yaml)
    .venv/bin/python bench/instructions_bench.py --baseline /tmp/before  # and another source tree, same config
    .venv/bin/python bench/instructions_bench.py --features              # features_bench.py's variants
    .venv/bin/python bench/instructions_bench.py --features --bare       # and the floor: bare aiohttp, 1 KB
    .venv/bin/python bench/instructions_bench.py --features --only plain,protected --keep /tmp/cg  # profiles kept
    .venv/bin/python bench/instructions_bench.py --features --tls        # the upstream over HTTPS

It needs valgrind (`apt-get install valgrind`); the upstream is nginx when installed, as in proxy_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from features_bench import BARE_AIOHTTP, BASE, ORIGIN, VARIANTS  # noqa: E402
from proxy_bench import SECRET, free_port, upstream  # noqa: E402
from routes_bench import wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "bench/gateway-quiet.yaml"
WARM_UP = 300


async def load(url: str, requests: int, connections: int = 8) -> None:
    """Exactly ``requests`` GETs over ``connections`` keep-alive connections; every answer must be a 200."""
    left = requests
    name, _, value = ORIGIN.partition(": ")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url, headers={name: value}) as response:
                    if response.status != 200:
                        raise SystemExit(f"{url} answered {response.status}")
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(connections)))


def count(tree: Path, config: Path | None, upstream_url: str, requests: int, tmp: Path, name: str = "") -> float:
    """Thousands of instructions per request of the gateway in ``tree`` serving ``config`` (None: BARE_AIOHTTP);
    its callgrind profile is left in ``tmp`` as ``callgrind.<name>``."""
    port = free_port()
    out = tmp / f"callgrind.{name or port}"
    served = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1",
              "--port", str(port)] if config is not None else [sys.executable, "-c", BARE_AIOHTTP, str(port)]
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *served]
    env = {**os.environ, "UPSTREAM": upstream_url, "SECRET": SECRET, "PYTHONPATH": str(tree),
           "PYTHONHASHSEED": "0"}  # the same dict layouts on every run: ±2k instructions less noise
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/bench"
    try:
        wait_ready(url, time.monotonic() + 120)
        asyncio.run(load(url, WARM_UP))
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(load(url, requests))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(120)
    total = 0
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    return total / requests / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--config", type=Path, default=DEFAULT)
    parser.add_argument("--baseline", type=Path, help="another source tree of the gateway (e.g. from git archive)")
    parser.add_argument("--features", action="store_true", help="features_bench.py's variants instead of --config")
    parser.add_argument("--bare", action="store_true", help="also a bare aiohttp app answering 1 KB (no gateway)")
    parser.add_argument("--tls", action="store_true", help="the upstream over HTTPS, as a third-party API is reached")
    parser.add_argument("--only", help="with --features, these variants only (comma-separated: plain,protected)")
    parser.add_argument("--keep", type=Path, help="a folder for the callgrind profiles (callgrind.<variant>.<tree>), "
                        "to read with callgrind_annotate")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(VARIANTS) if args.only else set()
    if unknown or (args.only and not args.features):
        parser.error(f"--only takes --features's variants ({', '.join(VARIANTS)}), with --features")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("instructions_bench: valgrind is not installed (sudo apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name, upstream(Path(tmp_name), tls=args.tls) as (upstream_url, kind):
        tmp = Path(tmp_name)
        keep = args.keep.resolve() if args.keep else tmp
        keep.mkdir(parents=True, exist_ok=True)
        print(f"upstream: {kind}; {args.requests} requests over 8 connections after {WARM_UP} to warm up")
        configs = {"config": args.config}
        if args.features:
            configs = {}
            for name, parts in VARIANTS.items():
                if args.only and name not in args.only.split(","):
                    continue
                configs[name] = tmp / f"{name}.yaml"
                configs[name].write_text(BASE.format(upstream="${UPSTREAM}", server=parts.get("server", ""),
                                                     clients=parts.get("clients", ""),
                                                     forward=parts.get("forward", "")))
        trees = {"gateway": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
        results = {}
        for name, config in configs.items():
            for tree_name, tree in trees.items():
                served = config
                if tree != ROOT and config == DEFAULT:  # an older tree serves its own bench config (older ones
                    # refuse keys that came later, access_log among them)
                    served = next(c for c in (tree / "bench" / DEFAULT.name, tree / "bench/gateway.yaml") if c.exists())
                results[name, tree_name] = figure = count(tree, served, upstream_url, args.requests, keep,
                                                          f"{name}.{tree_name}")
                print(f"{name:10} {tree_name:9} {figure:7.1f} k instructions per request", flush=True)
        if args.bare:
            results["bare", "aiohttp"] = figure = count(ROOT, None, upstream_url, args.requests, keep, "bare")
            print(f"{'bare':10} {'aiohttp':9} {figure:7.1f} k instructions per request (no gateway)", flush=True)
        if args.baseline:
            for name in configs:
                print(f"{name}: baseline / gateway {results[name, 'baseline'] / results[name, 'gateway']:.3f}")
        if args.features:
            plain = results.get(("plain", "gateway"))
            for name in configs if plain else ():
                print(f"plain / {name}: {plain / results[name, 'gateway']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
