"""
The benchmark suite: cachetier next to nginx (static with sendfile, and
proxy_cache) and Twisted's static.File out of the box, each server pinned
to core 0, the load on core 1, all on loopback.  Prints one table with
ratios to nginx::

    python -m benchmarks                 # everything, about 5 minutes
    python -m benchmarks --seconds 5     # shorter load phases
    python -m benchmarks --only small    # one scenario: big, small, cold, slow, sync

Installs Debian's nginx and wrk when missing.  Stops every process it
starts; the files it makes live in a temp directory it removes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from . import _procs
from .cold_miss import fetch

SERVER_CPU, LOAD_CPU = 0, 1
MiB = 1024 * 1024
FILES = {
    "big": 50 * MiB,
    "small": 10 * 1024,
    "cold100": 100 * MiB,
    "cold300": 300 * MiB,
    "sync": 1024 * MiB,
}

NGINX_CONF = """
user {user};
worker_processes 1;
daemon off;
pid {root}/nginx-{name}.pid;
error_log {root}/nginx-{name}-error.log;
events {{ worker_connections 8192; }}
http {{
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {root}/tmp-{name}; proxy_temp_path {root}/tmp-{name};
  fastcgi_temp_path {root}/tmp-{name}; uwsgi_temp_path {root}/tmp-{name}; scgi_temp_path {root}/tmp-{name};
  {body}
}}
"""

TESTED = """
  access_log off;
  proxy_cache_path {root}/proxy-cache levels=1:2 keys_zone=media:10m max_size=4g inactive=1d use_temp_path=off;
  server {{ listen 127.0.0.1:{static}; root {www}; }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{
      proxy_pass http://127.0.0.1:{origin};
      proxy_cache media; proxy_cache_valid 200 1d; proxy_cache_lock on;
      proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
"""

ORIGIN = """
  log_format counts "$request_uri";
  access_log {root}/origin-access.log counts;
  server {{
    listen 127.0.0.1:{origin};
    root {www};
    location /slow/ {{ alias {www}/; limit_rate 50m; }}
  }}
"""


def ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk", "taskset", "curl") if not shutil.which(tool)]
    if missing:
        print(f"installing {missing} from Debian", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        packages = [
            {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux", "curl": "curl"}[t]
            for t in missing
        ]
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True)


def make_files(www: str) -> None:
    os.makedirs(www)
    block = os.urandom(MiB)
    for name, size in FILES.items():
        with open(os.path.join(www, name), "wb") as f:
            for offset in range(0, size, MiB):
                # Each MiB differs, so a misplaced block is caught.
                f.write((offset.to_bytes(8, "big") + block)[: min(MiB, size - offset)])


@contextmanager
def nginx(root: str, name: str, body: str, cpu: int | None, port: int) -> Iterator[int]:
    os.makedirs(f"{root}/tmp-{name}", exist_ok=True)
    conf = os.path.join(root, f"nginx-{name}.conf")
    with open(conf, "w") as f:
        user = pwd.getpwuid(os.getuid()).pw_name
        f.write(NGINX_CONF.format(root=root, name=name, body=body, user=user))
    args = ["nginx", "-c", conf, "-p", root]
    with _procs.process(args, port, os.path.join(root, f"nginx-{name}.out"), cpu) as proc:
        yield proc.pid


def tree_memory(pid: int) -> tuple[int, int]:
    """
    RSS and PSS, in bytes, of C{pid} and its children (nginx's workers).
    """
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def throughput(port: int, path: str, seconds: float) -> float:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(LOAD_CPU),
            sys.executable,
            "-m",
            "benchmarks.discard",
            "--port",
            str(port),
            "--path",
            path,
            "--connections",
            "16",
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=_procs.ROOT,
    )
    result = json.loads(out.stdout)
    return result["bytes"] / result["seconds"]


def wrk(port: int, path: str, seconds: float, cpus: str) -> tuple[float, float, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            cpus,
            "wrk",
            "-t1",
            "-c64",
            f"-d{int(seconds)}s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"wrk saw {non_2xx.group(1)} errors on {path}")

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rate, percentile("50"), percentile("99")


def cold(port: int, path: str, clients: int, expected: str) -> dict[str, Any]:
    started = time.monotonic()
    results = asyncio.run(_gather(port, path, clients))
    ttfb = [r[0] * 1000 for r in results]
    return {
        "ttfb_median": statistics.median(ttfb),
        "ttfb_max": max(ttfb),
        "total": time.monotonic() - started,
        "identical": sum(r[3] == expected for r in results),
    }


async def _gather(port: int, path: str, clients: int) -> list[Any]:
    return await asyncio.gather(*(fetch(port, path) for _ in range(clients)))


async def _slow_reader(port: int, path: str, rate: int, until: float) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        while time.monotonic() < until:
            got = 0
            tick = time.monotonic()
            while got < rate // 10:
                data = await loop.sock_recv(sock, rate // 10 - got)
                if not data:
                    return
                got += len(data)
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    finally:
        sock.close()


def slow_clients(pid: int, port: int, path: str, clients: int, seconds: float) -> dict[str, int]:
    """
    C{clients} readers at 64 KiB/s each; the server's memory before and at
    its peak.
    """
    before = tree_memory(pid)
    peak = list(before)
    until = time.monotonic() + seconds

    async def run() -> None:
        async def sample() -> None:
            while time.monotonic() < until:
                rss, pss = tree_memory(pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
                await asyncio.sleep(0.2)

        await asyncio.gather(
            sample(), *(_slow_reader(port, path, 64 * 1024, until) for _ in range(clients))
        )

    asyncio.run(run())
    return {
        "rss_before": before[0],
        "rss_peak": peak[0],
        "pss_before": before[1],
        "pss_peak": peak[1],
    }


def wait_cached(port: int, name: str, timeout: float = 120) -> float:
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/api/v1/files/{name}"
    while time.monotonic() - started < timeout:
        with urllib.request.urlopen(url) as r:
            if json.load(r)["state"] == "cached":
                return time.monotonic() - started
        time.sleep(0.01)
    raise RuntimeError(f"{name} not cached after {timeout}s")


def origin_count(root: str, path: str) -> int:
    with open(os.path.join(root, "origin-access.log")) as f:
        return sum(1 for line in f if line.strip() == path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--only", choices=["big", "small", "cold", "slow", "sync"], action="append")
    parser.add_argument(
        "--workers", type=int, default=0, help="also run cachetier --workers N (small files)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the big-file test"
    )
    args = parser.parse_args()
    only = set(args.only or ["big", "small", "cold", "slow", "sync"])
    # N workers need N cores: then cachetier is not pinned, and shares the
    # load generator's core.
    multi = f"cachetier --workers {args.workers}"
    ensure_tools()
    os.sched_setaffinity(0, {LOAD_CPU})
    root = tempfile.mkdtemp(prefix="cachetier-bench-")
    rows: list[tuple[str, str, str, str]] = []
    try:
        www = os.path.join(root, "www")
        make_files(www)
        ports = {
            k: _procs.free_port()
            for k in ("static", "proxy", "origin", "twisted", "cachetier", "twistdlog", "workers")
        }
        fmt = dict(root=root, www=www, **ports)
        with ExitStack() as stack:
            stack.enter_context(
                nginx(root, "origin", ORIGIN.format(**fmt), LOAD_CPU, ports["origin"])
            )
            nginx_pid = stack.enter_context(
                nginx(root, "tested", TESTED.format(**fmt), SERVER_CPU, ports["static"])
            )
            twisted = stack.enter_context(
                _procs.process(
                    _procs.TWISTD
                    + [
                        "-n",
                        "--pidfile=",
                        "-l",
                        f"{root}/twisted-web.log",
                        "web",
                        f"--path={www}",
                        f"--listen=tcp:{ports['twisted']}:interface=127.0.0.1",
                    ],
                    ports["twisted"],
                    f"{root}/twisted-web.out",
                    SERVER_CPU,
                )
            )
            cachetier = stack.enter_context(
                _procs.cachetier(
                    ports["cachetier"],
                    ports["origin"],
                    f"{root}/cache",
                    f"{root}/cachetier.log",
                    f"--access-log={root}/access.log",
                    cpu=SERVER_CPU,
                )
            )
            # The same, with its access events in twistd's log (the default)
            # rather than a file of their own.
            stack.enter_context(
                _procs.cachetier(
                    ports["twistdlog"],
                    ports["origin"],
                    f"{root}/cache-twistdlog",
                    f"{root}/cachetier-twistdlog.log",
                    cpu=SERVER_CPU,
                )
            )
            if args.workers > 1:
                # N workers need N cores: this one, and the load, use both.
                stack.enter_context(
                    _procs.cachetier(
                        ports["workers"],
                        ports["origin"],
                        f"{root}/cache-workers",
                        f"{root}/cachetier-workers.log",
                        f"--access-log={root}/access-workers.log",
                        f"--workers={args.workers}",
                        cpu="0,1",
                    )
                )
            cached_ok = lambda name: wait_cached(ports["cachetier"], name)  # noqa: E731
            servers = {
                "nginx static": (ports["static"], "/{}"),
                "nginx proxy_cache": (ports["proxy"], "/{}"),
                "Twisted static.File": (ports["twisted"], "/{}"),
                "cachetier": (ports["cachetier"], "/files/{}"),
            }
            for name in ("big", "small"):
                urllib.request.urlopen(f"http://127.0.0.1:{ports['proxy']}/{name}").read()
                cached_ok(name)
            wait_cached(ports["twistdlog"], "small")
            if args.workers > 1:
                wait_cached(ports["workers"], "small")
            if "big" in only:
                # Loopback throughput swings between samples; interleave the
                # servers over several rounds and compare medians.
                samples: dict[str, list[float]] = {server: [] for server in servers}
                for _ in range(args.rounds):
                    for server, (port, path) in servers.items():
                        samples[server].append(throughput(port, path.format("big"), args.seconds))
                base = statistics.median(samples["nginx static"])
                for server, rates in samples.items():
                    rate = statistics.median(rates)
                    spread = ", ".join(f"{r / 1e9:.2f}" for r in rates)
                    rows.append(
                        (
                            f"big file, 16 conns, median of {args.rounds}",
                            server,
                            f"{rate / 1e9:.2f} GB/s ({spread})",
                            f"{rate / base:.2f}x",
                        )
                    )
            if "small" in only:
                small_servers = dict(servers)
                small_servers["cachetier, log in twistd's"] = (ports["twistdlog"], "/files/{}")
                results = {
                    server: wrk(port, path.format("small"), args.seconds, str(LOAD_CPU))
                    for server, (port, path) in small_servers.items()
                }
                if args.workers > 1:
                    results[multi] = wrk(ports["workers"], "/files/small", args.seconds, "0,1")
                nginx_rate = results["nginx static"][0]
                twisted_rate = results["Twisted static.File"][0]
                if args.workers > 1:
                    ratio = results[multi][0] / results["cachetier"][0]
                    rows.append(("small file, 64 conns", multi, f"{ratio:.2f}x one worker", ""))
                for server, (rate, p50, p99) in results.items():
                    rows.append(
                        (
                            "small file, 64 conns",
                            server,
                            f"{rate:,.0f} req/s p50 {p50:.2f} ms p99 {p99:.2f} ms "
                            f"({rate / twisted_rate:.2f}x static.File)",
                            f"{rate / nginx_rate:.2f}x",
                        )
                    )
            if "cold" in only:
                for size in ("cold100", "cold300"):
                    expected = hashlib.sha256(
                        open(os.path.join(www, size), "rb").read()
                    ).hexdigest()
                    for server, port, path in (
                        ("nginx proxy_cache", ports["proxy"], f"/slow/{size}"),
                        ("cachetier", ports["cachetier"], f"/files/slow/{size}"),
                    ):
                        before = origin_count(root, f"/slow/{size}")
                        r = cold(port, path, 50, expected)
                        requests = origin_count(root, f"/slow/{size}") - before
                        rows.append(
                            (
                                f"cold {FILES[size] // MiB} MiB at 50 MB/s, 50 clients",
                                server,
                                f"{requests} origin req, first byte median {r['ttfb_median']:.0f} ms "
                                f"max {r['ttfb_max']:.0f} ms, all done {r['total']:.1f} s, "
                                f"{r['identical']}/50 identical",
                                "",
                            )
                        )
            if "slow" in only:
                for server, pid, port, path in (
                    ("nginx static", nginx_pid, ports["static"], "/big"),
                    ("Twisted static.File", twisted.pid, ports["twisted"], "/big"),
                    ("cachetier", cachetier.pid, ports["cachetier"], "/files/big"),
                ):
                    m = slow_clients(pid, port, path, 300, max(args.seconds, 10))
                    rows.append(
                        (
                            "300 clients at 64 KiB/s",
                            server,
                            f"RSS {m['rss_before'] / MiB:.0f} -> {m['rss_peak'] / MiB:.0f} MiB "
                            f"(+{(m['rss_peak'] - m['rss_before']) / MiB:.1f}), "
                            f"PSS +{(m['pss_peak'] - m['pss_before']) / MiB:.1f} MiB",
                            "",
                        )
                    )
            if "sync" in only:
                started = time.monotonic()
                subprocess.run(
                    [
                        "taskset",
                        "-c",
                        str(SERVER_CPU),
                        "curl",
                        "-s",
                        "-o",
                        f"{root}/curl.out",
                        f"http://127.0.0.1:{ports['origin']}/sync",
                    ],
                    check=True,
                )
                curl_secs = time.monotonic() - started
                os.unlink(f"{root}/curl.out")
                sync_secs = cached_ok("sync")
                size = FILES["sync"]
                rows.append(
                    (
                        "sync 1 GiB from origin",
                        "curl -o",
                        f"{size / curl_secs / 1e6:.0f} MB/s",
                        "1.00x",
                    )
                )
                rows.append(
                    (
                        "sync 1 GiB from origin",
                        "cachetier",
                        f"{size / sync_secs / 1e6:.0f} MB/s",
                        f"{curl_secs / sync_secs:.2f}x",
                    )
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"cachetier benchmarks: servers on core {SERVER_CPU}, load on core {LOAD_CPU}, loopback")
    print("cachetier runs with --access-log=FILE unless the row says otherwise")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))


if __name__ == "__main__":
    main()
