"""
Capacity under a quota: six 100 MB files through a cache limited to
300 MB, requested in turn with two at the same time, while a sampler
measures the cache directory's disk usage every 10 ms::

    python -m benchmarks.capacity --max-size 300M --size 100M
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
import urllib.request

from cachetier.config import parse_size

from . import _procs
from .cold_miss import fetch


def disk_usage(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-size", default="300M")
    parser.add_argument("--size", default="100000000", help="bytes per file (100 MB)")
    args = parser.parse_args()
    names = [f"f{n}.mp3" for n in range(1, 7)]
    work = tempfile.mkdtemp(prefix="cachetier-capacity-")
    cache_dir = os.path.join(work, "cache")
    origin_port, port = _procs.free_port(), _procs.free_port()
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(disk_usage(cache_dir))
            time.sleep(0.01)

    files = [f"{n}={args.size}" for n in names]
    with _procs.origin(origin_port, files, None, os.path.join(work, "origin.log")):
        log_path = os.path.join(work, "cachetier.log")
        with _procs.cachetier(
            port, origin_port, cache_dir, log_path, f"--max-size={args.max_size}"
        ):
            sampler = threading.Thread(target=sample)
            sampler.start()
            steps = [
                ["f1.mp3"],
                ["f2.mp3"],
                ["f3.mp3"],
                ["f1.mp3"],
                ["f4.mp3", "f5.mp3"],
                ["f6.mp3"],
            ]
            for step in steps:

                async def run(step: list[str] = step) -> list[tuple[float, float, int, str]]:
                    return await asyncio.gather(*(fetch(port, "/files/" + n) for n in step))

                results = asyncio.run(run())
                print(f"GET {' + '.join(step):<17} -> {[r[2] for r in results]}")
            time.sleep(0.5)
            stop.set()
            sampler.join()
            cached = []
            for name in names:
                url = f"http://127.0.0.1:{port}/api/v1/files/{name}?sync=0"
                with urllib.request.urlopen(url) as r:
                    if json.load(r)["state"] == "cached":
                        cached.append(name)
    with open(log_path) as f:
        evicted = [line.split("evicted ")[1].split()[0] for line in f if "evicted " in line]
    limit = parse_size(args.max_size)
    print(f"quota                      {limit} bytes")
    print(f"disk usage samples         {len(samples)}")
    print(f"disk usage max             {max(samples)} bytes ({max(samples) / limit:.3f} of quota)")
    print(f"evicted, in order          {evicted}")
    print(f"cached at the end          {cached}")
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
