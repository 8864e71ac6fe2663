"""
A release through two tiers: cachetier (2 shields, 4 edges with
C{--shield} twice) beside nginx (2 mid-tier C{proxy_cache}s chosen by
C{hash $uri consistent} from 4 edge C{proxy_cache}s, C{proxy_cache_lock}
on both tiers), in one run, each intact and with one shield (one mid)
killed halfway::

    python -m benchmarks.tiers                          # the issue's numbers
    python -m benchmarks.tiers --listeners 200 --size 20M --only nginx,nginx-kill

Listeners (400) arrive over 5 s, spread over the edges in turn, each
asking for one of 20 cold 50 MiB files drawn with Zipf popularity
(exponent 1: the first file is asked twice as often as the second).  Each
downloads its file whole over HTTP/1.0 as fast as it can; a listener is
served when it got a 200 with every byte, by length and CRC-32.  The
origin is nginx with C{limit_rate} (2 MiB/s a connection by default, so a
fill lasts about 25 s and the kill lands in the middle of the fills);
origin bytes are summed from its access log ($body_bytes_sent, beside
each request's path and Range, kept with the other logs) and shown as a
multiple of the unique bytes asked for.  "Killed halfway": when the
fills are half done, the same moment for both (half the arrivals' ramp
plus half a file's time at the origin's rate: 15 s by default), the first
shield (the first mid nginx, master and worker) gets SIGKILL.

Every cachetier node runs with C{--max-concurrent-syncs} at least the
number of files (C{--syncs}), so no fill waits for an origin slot (nginx
has no such cap); nginx keeps its own defaults but C{proxy_cache_lock on} and 2 s
to connect to its upstream, as cachetier's C{--shield-timeout}.  Its lock
holds a request back at most C{proxy_cache_lock_timeout} (5 s), after
which the request goes upstream itself, uncached, and a fill that has
run C{proxy_cache_lock_age} (5 s) lets one more request through: with
fills that last longer, C{--nginx-lock 60s} sets both.

Before them, the same load against one cachetier node alone
(C{single}): the first byte through two tiers is compared with it.

Everything listens on 127.0.0.1; each run's caches are removed after it,
its logs kept in the printed temp directory; every process is stopped by
PID, on an error or Ctrl-C too.  Installs Debian's nginx when missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial
from typing import Any

from attrs import frozen

from cachetier.config import parse_size

from . import _load, _procs
from .__main__ import ensure_tools, nginx

MiB = 1 << 20
EDGES, SHIELDS = 4, 2
RUNS = ("single", "cachetier", "nginx", "cachetier-kill", "nginx-kill")

ORIGIN = """
  log_format sent '$status $body_bytes_sent $uri "$http_range" $request_time';
  access_log {log} sent;
  server {{ listen 127.0.0.1:{port}; root {www}; limit_rate {rate}; }}
"""

PROXY = """
  access_log off;
  proxy_cache_path {dir}/cache-{name} levels=1:2 keys_zone={name}:10m max_size=64g
                   inactive=1d use_temp_path=off;
  {upstream}
  server {{
    listen 127.0.0.1:{port};
    location /files/ {{
      proxy_pass {to};
      proxy_cache {name}; proxy_cache_valid 200 1d;
      proxy_cache_lock on; proxy_cache_lock_timeout {lock}; proxy_cache_lock_age {lock};
      proxy_connect_timeout 2s;
      proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
"""


@frozen
class Tier:
    """
    Two running tiers: the edges' addresses, and the PIDs of the upper
    tier (shields, or mid nginx masters).
    """

    edges: list[tuple[str, int]]
    upper: list[int]


@frozen
class Row:
    """
    One run's figures.

    @ivar kill: when the first upper node was killed (seconds in) and the
        share of the bytes the listeners had by then (L{None}: no kill).
    """

    label: str
    results: list[_load.Result]
    kill: tuple[float, float] | None
    origin_bytes: int
    wall: float


def make_files(www: str, count: int, size: int) -> list[_load.File]:
    """
    C{count} files of C{size} bytes in C{www}/files/, each MiB of each
    file different (its file and offset lead it), so a misplaced block
    fails the checksum.
    """
    os.makedirs(os.path.join(www, "files"))
    block = os.urandom(MiB)
    files = []
    for n in range(count):
        name = f"ep{n + 1:02d}.mp3"
        crc = 0
        with open(os.path.join(www, "files", name), "wb") as f:
            for offset in range(0, size, MiB):
                chunk = (n.to_bytes(4, "big") + offset.to_bytes(8, "big") + block)[
                    : min(MiB, size - offset)
                ]
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
        files.append(_load.File(name, size, crc))
    return files


@contextmanager
def nginx_tiers(root: str, origin_port: int, lock: str) -> Iterator[Tier]:
    """
    2 mid nginx in front of the origin, 4 edge nginx in front of them.
    """
    with ExitStack() as stack:
        mids, upper = [], []
        for n in range(1, SHIELDS + 1):
            port = _procs.free_port()
            body = PROXY.format(
                dir=root,
                name=f"mid{n}",
                upstream="",
                port=port,
                to=f"http://127.0.0.1:{origin_port}",
                lock=lock,
            )
            upper.append(stack.enter_context(nginx(root, f"mid{n}", body, None, port)))
            mids.append(f"server 127.0.0.1:{port};")
        upstream = f"upstream mids {{ hash $uri consistent; {' '.join(mids)} keepalive 16; }}"
        edges = []
        for n in range(1, EDGES + 1):
            port = _procs.free_port()
            body = PROXY.format(
                dir=root, name=f"edge{n}", upstream=upstream, port=port, to="http://mids", lock=lock
            )
            stack.enter_context(nginx(root, f"edge{n}", body, None, port))
            edges.append(("127.0.0.1", port))
        yield Tier(edges, upper)


@contextmanager
def cachetier_tiers(root: str, origin_url: str, syncs: int) -> Iterator[Tier]:
    """
    2 cachetier shields in front of the origin, 4 cachetier edges with
    C{--shield} for each.
    """
    common = [f"--max-concurrent-syncs={syncs}"]
    with ExitStack() as stack:
        shields, upper = [], []
        for name in [f"shield{n}" for n in range(1, SHIELDS + 1)]:
            port = _procs.free_port()
            proc = stack.enter_context(_node(root, name, port, origin_url, *common))
            upper.append(proc.pid)
            shields.append(f"--shield=http://127.0.0.1:{port}/")
        edges = []
        for name in [f"edge{n}" for n in range(1, EDGES + 1)]:
            port = _procs.free_port()
            stack.enter_context(_node(root, name, port, origin_url, *common, *shields))
            edges.append(("127.0.0.1", port))
        yield Tier(edges, upper)


@contextmanager
def single_node(root: str, origin_url: str, syncs: int) -> Iterator[Tier]:
    """
    One cachetier node in front of the origin, every listener's: the
    first byte a tier is measured against.
    """
    port = _procs.free_port()
    with _node(root, "single", port, origin_url, f"--max-concurrent-syncs={syncs}"):
        yield Tier([("127.0.0.1", port)] * EDGES, [])


def _node(root: str, name: str, port: int, origin_url: str, *extra: str) -> Any:
    return _procs.cachetier(
        port,
        0,
        os.path.join(root, f"cache-{name}"),
        os.path.join(root, f"{name}.log"),
        f"--node-name={name}",
        *extra,
        origin_url=origin_url,
    )


def origin_sent(log: str, offset: int) -> int:
    """
    The body bytes the origin logged after C{offset} of its log.
    """
    with open(log, "rb") as f:
        f.seek(offset)
        return sum(int(line.split()[1]) for line in f.read().decode().splitlines())


def measure(
    label: str,
    tiers: Callable[[], AbstractContextManager[Tier]],
    kill_at: float | None,
    asks: Sequence[_load.Ask],
    files: Sequence[_load.File],
    stall: float,
    origin_log: str,
) -> Row:
    """
    One run against fresh, cold tiers; the origin's bytes are counted once
    every tier process is gone (nginx logs a request when it ends).
    """
    offset = os.path.getsize(origin_log)
    with tiers() as tier:
        kill = None if kill_at is None else (kill_at, partial(_procs.kill_now, tier.upper[0]))
        started = time.monotonic()
        results, share = _load.run(asks, tier.edges, files, stall, kill)
        wall = time.monotonic() - started
    time.sleep(0.5)
    killed = None if kill_at is None or share is None else (kill_at, share)
    return Row(label, results, killed, origin_sent(origin_log, offset), wall)


def drop_caches(run_dir: str) -> None:
    for name in os.listdir(run_dir):
        if name.startswith("cache-"):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def report(row: Row, unique: int) -> None:
    ok = [r for r in row.results if r.error is None]
    ttfb = [r.ttfb for r in row.results if r.ttfb is not None]
    took = [r.took for r in ok]
    print(
        f"{row.label:<16}{len(ok):>5}/{len(row.results):<5}"
        f"{row.origin_bytes / MiB:>10,.0f} MiB {row.origin_bytes / unique:>6.2f}x"
        f"{_ms(_load.percentile(ttfb, 50)):>11}{_ms(_load.percentile(ttfb, 99)):>11}"
        f"{_load.percentile(took, 50):>8.1f} s{_load.percentile(took, 99):>7.1f} s"
        f"{row.wall:>7.1f} s"
    )
    if row.kill is not None:
        at, share = row.kill
        print(f"{'':<16}first upper node killed {at:g} s in, {share:.0%} of the bytes delivered")
    for kind, n in _load.errors(row.results).most_common():
        print(f"{'':<16}{n:>5} {kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=400)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--size", default="50M", help="bytes a file (default 50M)")
    parser.add_argument("--rate", default="2M", help="origin bytes/s a connection (default 2M)")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent (default 1)")
    parser.add_argument("--ramp", type=float, default=5.0, help="arrivals over this many s")
    parser.add_argument(
        "--stall", type=float, default=60.0, help="a silent server for this long fails a listener"
    )
    parser.add_argument(
        "--nginx-lock",
        default="5s",
        help="nginx proxy_cache_lock_timeout and proxy_cache_lock_age (default 5s, nginx's)",
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        help="seconds into a -kill run (default: halfway through the fills, (ramp + size/rate)/2)",
    )
    parser.add_argument(
        "--syncs",
        type=int,
        help="cachetier's --max-concurrent-syncs (default: the number of files, 8 at least)",
    )
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--only", default=",".join(RUNS), help=f"some of {','.join(RUNS)}")
    args = parser.parse_args()
    only = args.only.split(",")
    unknown = set(only) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {','.join(RUNS)}")
    size = parse_size(args.size)
    ensure_tools()
    root = tempfile.mkdtemp(prefix="cachetier-tiers-")
    try:
        run_all(args, only, size, root)
    finally:
        shutil.rmtree(os.path.join(root, "www"), ignore_errors=True)
        for name in os.listdir(root):
            if name.startswith("run-"):
                drop_caches(os.path.join(root, name))
        print(f"logs in {root}")


def run_all(args: argparse.Namespace, only: list[str], size: int, root: str) -> None:
    www = os.path.join(root, "www")
    files = make_files(www, args.files, size)
    asks = _load.plan(args.listeners, args.files, EDGES, args.zipf, args.ramp, args.seed)
    unique = sum(files[i].size for i in {a.file for a in asks})
    origin_port = _procs.free_port()
    origin_log = os.path.join(root, "origin-access.log")
    origin = ORIGIN.format(log=origin_log, port=origin_port, www=www, rate=args.rate)
    print(
        f"{args.listeners} listeners over {EDGES} edges ({SHIELDS} shields / mid nginx),"
        f" {args.files} cold files of {size / MiB:g} MiB, Zipf {args.zipf:g}"
        f" ({len({a.file for a in asks})} asked, {unique / MiB:,.0f} MiB unique),"
        f" arrivals over {args.ramp:g} s, origin {args.rate}/s a connection"
    )
    print(
        f"{'run':<16}{'served':>11}{'origin bytes':>15}{'÷unique':>8}"
        f"{'TTFB p50':>11}{'p99':>11}{'whole p50':>10}{'p99':>9}{'wall':>9}"
    )
    syncs = args.syncs or max(8, args.files)
    kill_time = args.kill_at
    if kill_time is None:
        kill_time = round((args.ramp + size / parse_size(args.rate)) / 2, 1)
    origin_url = f"http://127.0.0.1:{origin_port}/files/"
    with nginx(root, "origin", origin, None, origin_port):
        for label in only:
            run_dir = os.path.join(root, f"run-{label}")
            os.makedirs(run_dir)
            tiers: Callable[[], AbstractContextManager[Tier]]
            if label.startswith("nginx"):
                tiers = partial(nginx_tiers, run_dir, origin_port, args.nginx_lock)
            elif label == "single":
                tiers = partial(single_node, run_dir, origin_url, syncs)
            else:
                tiers = partial(cachetier_tiers, run_dir, origin_url, syncs)
            kill_at = kill_time if label.endswith("-kill") else None
            report(measure(label, tiers, kill_at, asks, files, args.stall, origin_log), unique)
            drop_caches(run_dir)


if __name__ == "__main__":
    sys.exit(main())
