"""
The blocking client when its cache tier stops: timings of verify_file()
with request_timeout=1.0 against a live twistd cachetier that is then
frozen (SIGSTOP: connections hang) and killed (connections refused)::

    python -m benchmarks.client_failopen
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

from cachetier.client import BlockingCacheTierClient

from . import _procs


def timed(client: BlockingCacheTierClient, name: str) -> str:
    started = time.monotonic()
    answer = client.verify_file(name)
    return f"{answer!s:<5} in {(time.monotonic() - started) * 1000:8.3f} ms"


def main() -> None:
    work = tempfile.mkdtemp(prefix="cachetier-client-")
    origin_port, port = _procs.free_port(), _procs.free_port()
    url = f"http://127.0.0.1:{port}/"
    with _procs.origin(origin_port, ["ep.mp3=1M"], None, os.path.join(work, "origin.log")):
        with _procs.cachetier(
            port, origin_port, os.path.join(work, "cache"), os.path.join(work, "cachetier.log")
        ) as twistd:
            client = BlockingCacheTierClient(url, request_timeout=1.0, negative_cache_time=0.1)
            print(
                f"server up:       verify_file   {timed(client, 'ep.mp3')}  (asking starts a sync)"
            )
            time.sleep(0.5)
            print(f"server up:       verify_file   {timed(client, 'ep.mp3')}  (cached now)")
            twistd.send_signal(signal.SIGSTOP)
            try:
                client = BlockingCacheTierClient(url, request_timeout=1.0)
                for n in range(1, 5):
                    print(f"server frozen:   call {n}        {timed(client, f'other{n}.mp3')}")
            finally:
                twistd.send_signal(signal.SIGCONT)
        client = BlockingCacheTierClient(url, request_timeout=1.0)
        for n in range(1, 5):
            print(f"server stopped:  call {n}        {timed(client, f'other{n}.mp3')}")


if __name__ == "__main__":
    main()
