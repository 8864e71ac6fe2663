"""
Ten thousand slow listeners of one cached episode, cachetier beside nginx
in the same run::

    python -m benchmarks.listeners                      # 10,000 for 15 s
    python -m benchmarks.listeners --listeners 2000 --seconds 5
    python -m benchmarks.listeners --burst              # all at once, default listen

With C{--burst} every connection is opened at once (as a push
notification brings listeners) and both servers listen with their
default backlog (cachetier's is the kernel's C{somaxconn}, nginx's 511);
without it, 1,000 arrive every 0.2 s and both listen with C{backlog=4096}.

Each listener GETs a cached 50 MiB file and reads it at 16 KiB/s, as a
player streaming a 128 kbit/s episode does.  cachetier starts under
C{prlimit --nofile=1024:<hard>} (systemd's default soft limit, with the
machine's hard limit), as the issue that asked for this found it; nginx
gets its usual C{worker_rlimit_nofile}.  Each server is pinned to core 0,
the listeners to core 1.  A listener counts as served when it got a 200
and at least 90% of the bytes its pace allows; anything else (a refused or
reset connection, another status, a stall) is an error.  RSS is the
server's (with nginx's workers) before the listeners and at its peak.

Installs Debian's nginx when missing; stops every process it starts, by
PID; the files it makes live in a temp directory it removes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import resource
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

from . import _procs
from .__main__ import SERVER_CPU, ensure_tools, nginx, tree_memory

LOAD_CPU = 1
MiB = 1024 * 1024
RATE = 16 * 1024  # bytes a second per listener
SIZE = 50 * MiB

NGINX = """
user {user};
worker_processes 1;
worker_rlimit_nofile {hard};
daemon off;
pid {root}/nginx-static.pid;
error_log {root}/nginx-static-error.log;
events {{ worker_connections {hard}; }}
http {{
  sendfile on; tcp_nopush on; tcp_nodelay on;
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp; uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  server {{ listen 127.0.0.1:{port}{backlog}; root {www}; }}
}}
"""


async def listener(port: int, seconds: float, results: Counter[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 * 1024)
    except OSError as e:
        results[f"connect: {type(e).__name__}"] += 1
        return
    try:
        writer.write(b"GET /files/ep.mp3 HTTP/1.1\r\nHost: bench\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 30)
        if not status.startswith(b"HTTP/1.1 200"):
            results[f"status: {status[:12].decode(errors='replace').strip()}"] += 1
            return
        while (await asyncio.wait_for(reader.readline(), 30)) not in (b"\r\n", b""):
            pass
        started = time.monotonic()
        got = 0
        while (elapsed := time.monotonic() - started) < seconds:
            want = int(RATE * (elapsed + 1)) - got
            if want > 0:
                data = await asyncio.wait_for(reader.read(want), 30)
                if not data:
                    results["closed early"] += 1
                    return
                got += len(data)
            await asyncio.sleep(1.0)
        results["served" if got >= 0.9 * RATE * seconds else "too slow"] += 1
    except (TimeoutError, OSError) as e:
        results[f"error: {type(e).__name__}"] += 1
    finally:
        writer.close()


async def listeners(port: int, count: int, seconds: float, burst: bool) -> Counter[str]:
    """
    C{count} listeners, started all at once (C{burst}) or 1,000 every
    0.2 s, each for C{seconds}.
    """
    results: Counter[str] = Counter()
    tasks = []
    for n in range(count):
        tasks.append(asyncio.ensure_future(listener(port, seconds, results)))
        if n % 1000 == 999 and not burst:
            await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    return results


def run_load(port: int, count: int, seconds: float, burst: bool) -> Counter[str]:
    """
    The listeners in a process of their own on the load core (this one,
    pinned there), with as many descriptors as the machine allows.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(listeners(port, count, seconds, burst))


def measure(pid: int, port: int, count: int, seconds: float, burst: bool) -> dict[str, Any]:
    before, _ = tree_memory(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], tree_memory(pid)[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = run_load(port, count, seconds, burst)
    finally:
        done.set()
        sampler.join()
    return {"results": results, "rss_before": before, "rss_peak": peak[0]}


def report(name: str, m: dict[str, Any], count: int) -> None:
    results: Counter[str] = m["results"]
    served = results.pop("served", 0)
    errors = sum(results.values())
    print(
        f"{name:<34} {served:>6}/{count} served ({100 * served / count:5.1f}%)"
        f"  {errors:>5} errors  RSS {m['rss_before'] / MiB:6.1f} -> {m['rss_peak'] / MiB:6.1f} MiB"
        f" (+{(m['rss_peak'] - m['rss_before']) / MiB:.1f})"
    )
    for kind, n in results.most_common():
        print(f"{'':<34}   {n:>6} {kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--burst", action="store_true", help="open every connection at once")
    args = parser.parse_args()
    backlog = "" if args.burst else ":backlog=4096"
    ensure_tools()
    os.sched_setaffinity(0, {LOAD_CPU})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    root = tempfile.mkdtemp(prefix="cachetier-listeners-")
    try:
        www = os.path.join(root, "www", "files")
        os.makedirs(www)
        with open(os.path.join(www, "ep.mp3"), "wb") as f:
            block = os.urandom(MiB)
            for _ in range(SIZE // MiB):
                f.write(block)
        print(
            f"{args.listeners} listeners at {RATE // 1024} KiB/s for {args.seconds:g}s,"
            f" a cached {SIZE // MiB} MiB file; open-files hard limit {hard}"
            + ("; all at once, default backlogs" if args.burst else "")
        )
        origin_port, port = _procs.free_port(), _procs.free_port()
        origin_body = f"access_log off; server {{ listen 127.0.0.1:{origin_port}; root {www}; }}"
        with nginx(root, "origin", origin_body, SERVER_CPU, origin_port):
            limited = ["prlimit", f"--nofile=1024:{hard}"] + _procs.TWISTD
            log_path = os.path.join(root, "cachetier.log")
            args_ct = limited + [
                "-n",
                "--pidfile=",
                f"--logfile={log_path}",
                "cachetier",
                f"--origin=http://127.0.0.1:{origin_port}/",
                f"--cache-dir={os.path.join(root, 'cache')}",
                f"--listen=tcp:{port}:interface=127.0.0.1{backlog}",
            ]
            with _procs.process(args_ct, port, log_path + ".out", SERVER_CPU) as proc:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/files/ep.mp3").read()
                time.sleep(1)  # the publish
                m = measure(proc.pid, port, args.listeners, args.seconds, args.burst)
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    limit_lines = [line.strip() for line in f if "open-files limit" in line]
            report("cachetier (prlimit 1024:hard)", m, args.listeners)
            for line in limit_lines:
                print(f"{'':<34}   log: {line.split('] ', 1)[-1]}")
        nginx_port = _procs.free_port()
        conf = os.path.join(root, "nginx-static.conf")
        os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
        with open(conf, "w") as f:
            f.write(
                NGINX.format(
                    user=pwd.getpwuid(os.getuid()).pw_name,
                    hard=hard,
                    root=root,
                    port=nginx_port,
                    backlog=backlog.replace(":", " "),
                    www=os.path.dirname(www),
                )
            )
        nginx_args = ["nginx", "-c", conf, "-p", root]
        out = os.path.join(root, "nginx-static.out")
        with _procs.process(nginx_args, nginx_port, out, SERVER_CPU) as proc:
            m = measure(proc.pid, nginx_port, args.listeners, args.seconds, args.burst)
        report(f"nginx (worker_rlimit_nofile {hard})", m, args.listeners)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
