"""
Cold miss: N listeners ask at once for a file the cache does not have,
from an origin throttled to a given rate.  Reports origin requests, whether
every body is byte-identical to the origin's, and time to first byte::

    python -m benchmarks.cold_miss --size 100M --rate 50M --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time

from cachetier.config import parse_size
from tests.helpers import body_of

from . import _procs


async def fetch(port: int, path: str) -> tuple[float, float, int, str]:
    """
    GET C{path}; return (time to first body byte, total time, status, sha256).
    """
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    digest = hashlib.sha256()
    first = await reader.read(1)
    ttfb = time.monotonic() - started
    digest.update(first)
    while chunk := await reader.read(1 << 20):
        digest.update(chunk)
    writer.close()
    return ttfb, time.monotonic() - started, status, digest.hexdigest()


async def load(port: int, path: str, clients: int) -> list[tuple[float, float, int, str]]:
    return await asyncio.gather(*(fetch(port, path) for _ in range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100M")
    parser.add_argument("--rate", default="50M", help="origin bytes/s")
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    name = "cold.mp3"
    expected = hashlib.sha256(body_of(parse_size(args.size), name)).hexdigest()
    work = tempfile.mkdtemp(prefix="cachetier-bench-")
    origin_port, cache_port = _procs.free_port(), _procs.free_port()
    origin_log = os.path.join(work, "origin.log")
    with _procs.origin(origin_port, [f"{name}={args.size}"], args.rate, origin_log):
        with _procs.cachetier(
            cache_port,
            origin_port,
            os.path.join(work, "cache"),
            os.path.join(work, "cachetier.log"),
        ):
            started = time.monotonic()
            results = asyncio.run(load(cache_port, "/files/" + name, args.clients))
            wall = time.monotonic() - started
        requests = _procs.origin_requests(origin_log, name)
    ttfbs = sorted(r[0] for r in results)
    print(f"cold miss: {args.clients} clients, {args.size} file, origin at {args.rate}/s")
    print(f"  origin requests           {requests}")
    print(f"  statuses                  {sorted(set(r[2] for r in results))}")
    print(f"  bodies identical (sha256) {sum(r[3] == expected for r in results)}/{len(results)}")
    print(f"  first byte median         {statistics.median(ttfbs) * 1000:.1f} ms")
    print(f"  first byte max            {ttfbs[-1] * 1000:.1f} ms")
    print(f"  slowest body              {max(r[1] for r in results):.2f} s")
    print(f"  wall                      {wall:.2f} s")
    print(f"  logs in {work}")


if __name__ == "__main__":
    main()
