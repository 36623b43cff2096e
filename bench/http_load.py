"""A load generator for ``POST /v1/score``, run as its own process so it never shares the server's GIL.

Reproduce: python bench/scoring.py   (it starts this script; by hand:
python bench/http_load.py --url http://127.0.0.1:PORT --bodies FILE --concurrency 8 --requests 300)

``FILE`` holds one JSON request body per line. ``--concurrency`` connections (keep-alive,
one aiohttp session) send the bodies round-robin until ``--requests`` responses came back;
each line printed is one concurrency level: latency p50/p99 (send to last byte read) and
requests/s over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np


async def run(url: str, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    """Send ``requests`` bodies over ``concurrency`` connections; latencies and throughput."""
    latencies: list[float] = []
    next_request = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:

        async def worker() -> None:
            for n in next_request:
                started = time.perf_counter()
                async with session.post(f"{url}/v1/score", data=bodies[n % len(bodies)]) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
                latencies.append(time.perf_counter() - started)

        warm_up = bodies[: min(len(bodies), concurrency)]
        for body in warm_up:  # connections opened, handlers warm
            async with session.post(f"{url}/v1/score", data=body) as response:
                await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "requests_per_s": round(len(latencies) / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="one JSON request body per line")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line]
    for concurrency in args.concurrency:
        print(json.dumps(asyncio.run(run(args.url, bodies, concurrency, args.requests))), flush=True)


if __name__ == "__main__":
    main()
