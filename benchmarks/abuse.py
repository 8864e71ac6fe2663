"""
Abusive clients against a real C{twistd -n cachetier}, on loopback::

    python -m benchmarks.abuse

Stages, each printing what it saw:

1. 50 slowloris connections (headers one byte a second) and 20 readers
   that never read a cached 30 MiB file: how long until the server closed
   each, and the server's open descriptors before, during and after.
2. A Range header of 1,000 overlapping ranges on a cached 10 KiB file, and
   request bodies declared on public URLs (1 GB Content-Length, chunked):
   status, bytes, time, and the files under the server's temp directory.
3. 100 random names from 127.0.0.2 while 127.0.0.1 asks for a new file.

The server runs with C{--idle-timeout=5s --send-timeout=5s}.  Stops every
process it starts, by PID; its files live in a temp directory it removes.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time

from . import _procs

MiB = 1024 * 1024


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


def exchange(port: int, request: bytes, source: str = "127.0.0.1") -> tuple[bytes, float]:
    """
    Send C{request}, read until the server closes; the answer and seconds.
    """
    started = time.monotonic()
    with connect(port, source) as s:
        s.settimeout(30)
        try:
            s.sendall(request)
        except OSError:
            pass  # the server answered and closed before taking it all
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks), time.monotonic() - started


def status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


def loris_closed_at(s: socket.socket, started: float, out: list[float]) -> None:
    """
    Drip a header byte a second into C{s} until the server closes it;
    record when.
    """
    s.settimeout(1.0)
    try:
        while True:
            s.send(b"X")
            try:
                if not s.recv(1):
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    out.append(time.monotonic() - started)


def reader_closed_at(s: socket.socket, started: float, out: list[float]) -> None:
    """
    Read nothing from C{s}; record when the server has closed or reset it
    (the socket's TCP state, seen without reading).
    """
    while time.monotonic() - started < 60:
        state = s.getsockopt(socket.SOL_TCP, socket.TCP_INFO, 1)[0]
        if state in (7, 8):  # TCP_CLOSE (reset), TCP_CLOSE_WAIT (closed)
            break
        time.sleep(0.1)
    out.append(time.monotonic() - started)


def stage_slow(pid: int, port: int) -> None:
    baseline = descriptors(pid)
    started = time.monotonic()
    loris, readers = [], []
    for _ in range(50):
        s = connect(port)
        s.send(b"GET /files/big.mp3 HTTP/1.1\r\n")
        loris.append(s)
    for _ in range(20):
        s = connect(port, rcvbuf=4096)
        s.send(b"GET /files/big.mp3 HTTP/1.1\r\nHost: x\r\n\r\n")
        readers.append(s)
    time.sleep(1)
    during = descriptors(pid)
    closed: dict[str, list[float]] = {"slowloris": [], "never-reading": []}
    threads = [
        threading.Thread(target=loris_closed_at, args=(s, started, closed["slowloris"]))
        for s in loris
    ] + [
        threading.Thread(target=reader_closed_at, args=(s, started, closed["never-reading"]))
        for s in readers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in loris + readers:
        s.close()
    time.sleep(0.5)
    after = descriptors(pid)
    for kind, times in closed.items():
        print(
            f"  {len(times):>2} {kind:<14} closed by the server after"
            f" {min(times):.1f}-{max(times):.1f}s"
        )
    print(f"  server descriptors: {baseline} before, {during} during, {after} after")


def stage_bombs(port: int, temp_dir: str) -> None:
    bomb = b"bytes=" + b",".join([b"0-"] * 1000)
    answer, secs = exchange(
        port,
        b"GET /files/small.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: "
        + bomb
        + b"\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    print(
        f"  1,000-range bomb on a 10 KiB file: {status_line(head)},"
        f" {len(answer)} bytes in all, body {len(body)} bytes, {secs * 1000:.0f} ms"
    )
    big = b"x" * MiB
    for label, request in (
        (
            "GET with Content-Length 1 GB",
            b"GET /files/x.mp3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + big,
        ),
        (
            "PUT with Content-Length 1 GB",
            b"PUT /files/x.mp3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + big,
        ),
        (
            "POST chunked to the status API",
            b"POST /api/v1/files/x.mp3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"100000\r\n"
            + big,
        ),
    ):
        answer, secs = exchange(port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        print(f"  {label:<30}: {status_line(head)} {body.decode()} in {secs * 1000:.0f} ms")
    print(f"  files under the server's temp dir afterwards: {len(os.listdir(temp_dir))}")


def stage_flood(port: int) -> None:
    started = time.monotonic()
    refused = 0
    for n in range(100):
        answer, _ = exchange(
            port,
            b"GET /api/v1/files/random-%d.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n,
            source="127.0.0.2",
        )
        refused += b'"state":"missing"' in answer
    answer, secs = exchange(
        port, b"GET /files/new.mp3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    print(
        f"  100 random names from 127.0.0.2 in {time.monotonic() - started:.1f}s:"
        f" {refused} refused (state missing)"
    )
    print(
        f"  then 127.0.0.1 GET new.mp3: {status_line(head)},"
        f" {len(body)} bytes in {secs * 1000:.0f} ms"
    )


def main() -> None:
    root = tempfile.mkdtemp(prefix="cachetier-abuse-")
    try:
        origin_port, port = _procs.free_port(), _procs.free_port()
        files = ["big.mp3=30M", "small.mp3=10K", "new.mp3=1M"]
        origin_log = os.path.join(root, "origin.log")
        tmp = os.path.join(root, "tmp")
        os.makedirs(tmp)
        os.environ["TMPDIR"] = tmp  # where Twisted would spool request bodies
        with _procs.origin(origin_port, files, None, origin_log):
            with _procs.cachetier(
                port,
                origin_port,
                os.path.join(root, "cache"),
                os.path.join(root, "cachetier.log"),
                "--idle-timeout=5s",
                "--send-timeout=5s",
            ) as proc:
                for name in ("big.mp3", "small.mp3"):
                    exchange(
                        port,
                        b"GET /files/%s HTTP/1.1\r\nHost: x\r\n" % name.encode()
                        + b"Connection: close\r\n\r\n",
                    )
                time.sleep(1)
                print("1. slowloris and never-reading readers (timeouts 5s)")
                stage_slow(proc.pid, port)
                print("2. range bomb and request bodies")
                stage_bombs(port, tmp)
                print("3. a flood of random names from another address")
                stage_flood(port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
