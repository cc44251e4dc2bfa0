"""Secret scrubbing cost: MB/s of ``Scrubber.scrub`` and of a 64 KiB-chunked stream on 1 MiB JSON bodies.

Compares the scrubber in this tree with another version of ``scrub.py`` given by path (e.g. one saved with
``git show HEAD~1:gateway/mask/scrub.py > /tmp/scrub_before.py``), in one process, interleaved, best of N:

    .venv/bin/python bench/scrub_bench.py --before /tmp/scrub_before.py --reps 30

Bodies: ``plain`` (API-style JSON: words, numbers, URLs with upper-case %XX, literal UTF-8), ``escaped``
(the same with lower-case %xx and .NET-style \\u0022/\\u002B escapes everywhere: the scrubber's slow path).
Secrets: the two end-to-end test keys (one plain, one with ``/ + =`` that URL-encoding changes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import time

SECRETS = ["sk-proj-E2E-REALKEY-5f0e1d2c3b4a69788796a5b4", "ow/E2E+SECRET=key~7f3a9c0d"]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def body(kind: str, size: int = 1 << 20) -> bytes:
    rng = random.Random(1)
    items = []
    total = 0
    while total < size:
        item = {
            "id": rng.randrange(10**9),
            "name": " ".join(rng.choice(WORDS) for _ in range(4)),
            "url": f"https://api.example.com/v1/items/{rng.randrange(10**6)}?q=a%2Fb%20c&page={rng.randrange(99)}",
            "text": "Grüße, naïve café — " + " ".join(rng.choice(WORDS) for _ in range(12)),
            "score": rng.random(),
            "tags": [rng.choice(WORDS) for _ in range(3)],
        }
        text = json.dumps(item, ensure_ascii=False)
        if kind == "escaped":
            text = text.replace("%2F", "%2f").replace("%20", "%2a").replace('\\"', "\\u0022").replace(" ", "\\u002B")
        items.append(text)
        total += len(text) + 1
    return ("[" + ",".join(items) + "]").encode()[:size]


def load(path: str | None):
    if path is None:
        from gateway.mask import scrub

        return scrub
    spec = importlib.util.spec_from_file_location("scrub_other", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, data: bytes) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


def stream(scrubber, data: bytes) -> bytes:
    s = scrubber.stream()
    return b"".join([*(s.feed(data[i : i + 65536]) for i in range(0, len(data), 65536)), s.flush()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="path of the scrub.py to compare with")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    versions = {"after": load(None)}
    if args.before:
        versions = {"before": load(args.before), **versions}
    scrubbers = {name: module.Scrubber(SECRETS) for name, module in versions.items()}
    for kind in ("plain", "escaped"):
        data = body(kind)
        assert all(s.scrub(data) == data for s in scrubbers.values())  # no secret in it: the common case
        for mode, run in (("scrub", lambda s, d: s.scrub(d)), ("stream", stream)):
            best = {name: [] for name in scrubbers}
            for _ in range(args.reps):  # interleaved: both versions see the same machine state
                for name, s in scrubbers.items():
                    best[name].append(timed(lambda d, s=s, run=run: run(s, d), data))
            row = {name: min(times) for name, times in best.items()}
            cells = "  ".join(
                f"{name} {len(data) / t / 1e6:8.0f} MB/s (median {statistics.median(best[name]) * 1e3:.3f} ms)"
                for name, t in row.items()
            )
            ratio = f"  after/before time {row['after'] / row['before']:.3f}" if "before" in row else ""
            print(f"{kind:8} {mode:6} {cells}{ratio}")


if __name__ == "__main__":
    main()
