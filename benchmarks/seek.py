"""
Seek anywhere on a cold file: cachetier beside nginx (proxy_cache with
its slice module, 4 MiB slices) and the origin itself, in one run::

    python -m benchmarks.seek [--only seek,playing,parallel]

  seek      a cold 100 MiB file, the origin limited to 10 MiB/s a
            connection: a listener reads from byte 0, and 1 s later
            another asks for the last MiB.  Time to its first and last
            byte; origin bytes for the whole fill.
  playing   a 9.3 MiB M4A (AAC, 128 kbit/s, 10 minutes) whose moov atom
            is at the end (ffmpeg's default), the origin at 1 MiB/s a
            connection, played cold in
            headless Chromium (Debian's, driven by Playwright): time from
            setting the <audio> source to its "playing" event.
  parallel  a cold 1 GiB sync, the origin at 25 MiB/s a connection:
            cachetier --fill-connections=1 against 4, and nginx reading
            it through its slices.

The origin is nginx (``limit_rate`` per connection); origin bytes are
summed from its access log.  Installs nginx, ffmpeg and chromium from
Debian; Playwright comes with the ``dev`` extra (no browser download:
the system chromium is used).  Loopback only; every process it starts is
stopped by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from . import _procs
from .__main__ import nginx

MiB = 1 << 20

ORIGIN = """
  log_format bytes "$uri $status $body_bytes_sent";
  access_log {root}/origin-access.log bytes;
  server {{
    listen 127.0.0.1:{origin};
    root {www};
    location /fast/ {{ alias {www}/; limit_rate 10m; }}
    location /slow/ {{ alias {www}/; limit_rate 1m; }}
    location /bulk/ {{ alias {www}/; limit_rate 25m; }}
  }}
"""

SLICED = """
  access_log off;
  proxy_cache_path {root}/slice-cache levels=1:2 keys_zone=slice:10m max_size=8g
                   inactive=1d use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      slice 4m;
      proxy_cache slice;
      proxy_cache_key $uri$slice_range;
      proxy_set_header Range $slice_range;
      proxy_cache_valid 200 206 1d;
      proxy_cache_lock on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://127.0.0.1:{origin};
    }}
  }}
"""


def ensure_tools() -> None:
    needed = {"nginx": "nginx", "ffmpeg": "ffmpeg", "chromium": "chromium"}
    missing = [package for tool, package in needed.items() if not shutil.which(tool)]
    if missing:
        print(f"installing {missing} from Debian", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def make_files(www: str, only: set[str]) -> None:
    os.makedirs(www)
    sizes = {"seek": ("cold100.bin", 100 * MiB), "parallel": ("big1g.bin", 1024 * MiB)}
    for scenario, (name, size) in sizes.items():
        if scenario in only:
            with open(os.path.join(www, name), "wb") as f:
                for offset in range(0, size, MiB):
                    f.write(hashlib.sha256(offset.to_bytes(8, "big")).digest() * (MiB // 32))
    if "playing" in only:
        # The player's page: Chromium plays nothing from about:blank.
        with open(os.path.join(www, "player.html"), "w") as f:
            f.write("<!doctype html><title>player</title>")
        subprocess.run(
            [
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:duration=600",
                "-c:a",
                "aac",
                "-b:a",
                "128k",
                os.path.join(www, "ep.m4a"),
            ],
            check=True,
        )


def origin_bytes(log: str, offset: int, name: str) -> int:
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode().splitlines()
    return sum(int(line.split()[2]) for line in lines if line.split()[0].endswith("/" + name))


def log_size(log: str) -> int:
    return os.path.getsize(log) if os.path.exists(log) else 0


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[float, float, bytes]:
    """
    GET C{url}: (seconds to the first body byte, to the last, the body).
    """
    started = time.monotonic()
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=600) as response:
        first = response.read(1)
        ttfb = time.monotonic() - started
        body = first + response.read()
    return ttfb, time.monotonic() - started, body


def wait_cached(base: str, name: str, timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with urllib.request.urlopen(f"{base}api/v1/files/{name}?sync=0", timeout=10) as r:
            if json.load(r)["state"] == "cached":
                return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{name} never cached")


@contextmanager
def cachetier(root: str, label: str, origin: str, *extra: str) -> Iterator[str]:
    port = _procs.free_port()
    with _procs.cachetier(
        port,
        0,
        os.path.join(root, f"cache-{label}"),
        os.path.join(root, f"{label}.log"),
        *extra,
        origin_url=origin,
    ):
        yield f"http://127.0.0.1:{port}/"


@contextmanager
def sliced(root: str, label: str, origin_port: int) -> Iterator[str]:
    port = _procs.free_port()
    body = SLICED.format(root=f"{root}/{label}", port=port, origin=origin_port)
    os.makedirs(f"{root}/{label}", exist_ok=True)
    with nginx(root, label, body, 0, port):
        yield f"http://127.0.0.1:{port}/"


def seek(root: str, www: str, origin_port: int, log: str) -> list[tuple[Any, ...]]:
    name = "cold100.bin"
    with open(os.path.join(www, name), "rb") as f:
        data = f.read()
    tail = data[-MiB:]
    rows = []

    def run(label: str, base: str, files: str, cache_base: str | None) -> None:
        offset = log_size(log)
        whole: dict[str, Any] = {}

        def read_whole() -> None:
            whole["result"] = fetch(base + files + name)

        reader = threading.Thread(target=read_whole)
        reader.start()
        time.sleep(1.0)
        ttfb, ttlb, body = fetch(base + files + name, {"Range": f"bytes={len(data) - MiB}-"})
        reader.join()
        exact = body == tail and whole["result"][2] == data
        if cache_base is not None:
            wait_cached(cache_base, name)
        time.sleep(0.5)  # nginx logs a request when it ends
        sent = origin_bytes(log, offset, name)
        rows.append((label, ttfb, ttlb, sent, exact))

    origin_base = f"http://127.0.0.1:{origin_port}/"
    run("origin, direct", origin_base, "fast/", None)
    with cachetier(root, "seek", origin_base + "fast/") as base:
        run("cachetier", base, "files/", base)
    with sliced(root, "slice-seek", origin_port) as base:
        run("nginx slice 4m", base, "fast/", None)
    return rows


def playing(root: str, origin_port: int) -> list[tuple[str, float]]:
    from playwright.sync_api import sync_playwright

    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--autoplay-policy=no-user-gesture-required",
    ]
    script = """url => new Promise((resolve, reject) => {
        const audio = document.createElement("audio");
        const started = performance.now();
        audio.addEventListener("playing", () => resolve(performance.now() - started));
        audio.addEventListener("error", () => reject("media error " + audio.error.code));
        audio.src = url;
        audio.play().catch(e => reject(String(e)));
    })"""
    rows = []
    origin_base = f"http://127.0.0.1:{origin_port}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=flags)
        try:

            def play(label: str, url: str) -> None:
                context = browser.new_context()  # an empty HTTP cache each time
                page = context.new_page()
                page.goto(origin_base + "player.html")
                rows.append((label, page.evaluate(script, url) / 1000))
                context.close()

            play("origin, direct", origin_base + "slow/ep.m4a")
            with cachetier(root, "playing", origin_base + "slow/") as base:
                play("cachetier", base + "files/ep.m4a")
            with sliced(root, "slice-playing", origin_port) as base:
                play("nginx slice 4m", base + "slow/ep.m4a")
        finally:
            browser.close()
    return rows


def parallel(root: str, www: str, origin_port: int, log: str) -> list[tuple[Any, ...]]:
    name = "big1g.bin"
    with open(os.path.join(www, name), "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    rows = []
    origin = f"http://127.0.0.1:{origin_port}/bulk/"
    for connections in (1, 4):
        offset = log_size(log)
        with cachetier(
            root, f"parallel{connections}", origin, f"--fill-connections={connections}"
        ) as base:
            urllib.request.urlopen(f"{base}api/v1/files/{name}", timeout=10).read()
            took = wait_cached(base, name)
            _, _, body = fetch(base + "files/" + name)
        time.sleep(0.5)
        exact = hashlib.sha256(body).hexdigest() == expected
        rows.append(
            (
                f"cachetier, {connections} connection(s)",
                took,
                origin_bytes(log, offset, name),
                exact,
            )
        )
    offset = log_size(log)
    with sliced(root, "slice-parallel", origin_port) as base:
        _, took, body = fetch(base + "bulk/" + name)
    time.sleep(0.5)
    rows.append(
        (
            "nginx slice 4m, read whole",
            took,
            origin_bytes(log, offset, name),
            hashlib.sha256(body).hexdigest() == expected,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="seek,playing,parallel")
    args = parser.parse_args()
    only = set(args.only.split(","))
    ensure_tools()
    root = tempfile.mkdtemp(prefix="cachetier-seek-")
    www = os.path.join(root, "www")
    make_files(www, only)
    origin_port = _procs.free_port()
    log = os.path.join(root, "origin-access.log")
    with ExitStack() as stack:
        stack.enter_context(
            nginx(
                root,
                "origin",
                ORIGIN.format(root=root, www=www, origin=origin_port),
                1,
                origin_port,
            )
        )
        if "seek" in only:
            print("seek: cold 100 MiB, origin 10 MiB/s a connection; last MiB asked 1 s in")
            print(f"  {'server':<22}{'first byte':>12}{'last byte':>12}{'origin bytes':>16}  exact")
            for label, ttfb, ttlb, sent, exact in seek(root, www, origin_port, log):
                print(
                    f"  {label:<22}{ttfb * 1000:>10.0f}ms{ttlb * 1000:>10.0f}ms"
                    f"{sent / MiB:>12.1f} MiB  {exact}"
                )
        if "playing" in only:
            print("playing: moov-at-end M4A (9.3 MiB), origin 1 MiB/s, cold, headless Chromium")
            for label, seconds in playing(root, origin_port):
                print(f"  {label:<22}{seconds * 1000:>10.0f}ms to 'playing'")
        if "parallel" in only:
            print("parallel: cold 1 GiB sync, origin 25 MiB/s a connection")
            for label, took, sent, exact in parallel(root, www, origin_port, log):
                print(f"  {label:<32}{took:>8.1f}s{sent / MiB:>10.1f} MiB  exact {exact}")
    print(f"logs in {root}")
    shutil.rmtree(os.path.join(root, "www"), ignore_errors=True)


if __name__ == "__main__":
    main()
