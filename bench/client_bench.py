"""The upstream client alone: CPU time per call of `gateway.upstream.client.Pool` against nginx, in-process, and of
another source tree's client in the same run (e.g. the client before its hardening), processes alternating.

Each measurement is a fresh process on CPU 0 (nginx on CPU 1, when `taskset` exists) making 64 concurrent callers
do GET + read of a 1 KB JSON answer on kept-alive connections, warmed up first; it reports the process's CPU time
per call (getrusage), which other work on a shared machine disturbs far less than wall time.

    .venv/bin/python bench/client_bench.py --baseline /tmp/before --module gateway.forward.client --reps 8
      (before: `git archive 8044ad0 | tar -x -C /tmp/before`, whose client lived in gateway/forward/client.py)

Needs nginx (apt-get install nginx-light). Only 127.0.0.1 is used; every process started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proxy_bench import pinned, upstream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CALLERS = 64


def measure_here(tree: str, module: str, url: str, calls: int) -> float:
    """In this process: CPU µs per call of ``module``'s Pool from ``tree``."""
    sys.path.insert(0, tree)
    client = importlib.import_module(module)
    import uvloop

    async def main() -> float:
        pool = client.Pool(url.rsplit("/", 1)[0])
        headers = {"Authorization": "Bearer x", "X-Request-Id": "abc"}

        async def caller(n: int) -> None:
            for _ in range(n):
                response = await pool.request("GET", url, dict(headers), None, 10.0)
                await response.read()

        await asyncio.gather(*(caller(50) for _ in range(CALLERS)))  # warm-up: connections open, code paths hot
        each = calls // CALLERS
        before = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(caller(each) for _ in range(CALLERS)))
        after = resource.getrusage(resource.RUSAGE_SELF)
        spent = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return spent / (each * CALLERS) * 1e6

    return uvloop.run(main())


def measure(tree: str, module: str, url: str, calls: int) -> float:
    argv = pinned(0, [sys.executable, __file__, "--one", tree, module, url, str(calls)])
    return float(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another source tree of the gateway")
    parser.add_argument("--module", default="gateway.upstream.client", help="its client module")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        tree, module, url, calls = args.one
        print(measure_here(tree, module, url, int(calls)))
        return 0
    targets = [("this", str(ROOT), "gateway.upstream.client")]
    if args.baseline:
        targets.append(("baseline", args.baseline, args.module))
    results: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    with tempfile.TemporaryDirectory() as tmp, upstream(Path(tmp)) as (base, kind):
        print(f"upstream: {kind}", flush=True)
        for rep in range(args.reps):
            for name, tree, module in targets if rep % 2 == 0 else targets[::-1]:
                results[name].append(measure(tree, module, f"{base}/bench", args.calls))
            print(f"rep {rep + 1}: " + ", ".join(f"{n} {v[-1]:.1f} µs" for n, v in results.items()), flush=True)
    summary: dict[str, object] = {f"{n}_cpu_us_per_call_median": round(statistics.median(v), 1)
                                  for n, v in results.items()}
    if args.baseline:
        summary["this_to_baseline_cpu_median"] = round(statistics.median(results["this"]) /
                                                       statistics.median(results["baseline"]), 3)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
