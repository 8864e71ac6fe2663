"""
Start and stop the processes a measurement needs, on loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def process(
    args: list[str], port: int, log_path: str, cpu: int | str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """
    Run C{args} (pinned to core C{cpu} if given) until the block ends; its
    output goes to C{log_path}.
    """
    if cpu is not None:
        args = ["taskset", "-c", str(cpu)] + args
    env = dict(os.environ, PYTHONPATH=ROOT)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def origin(port: int, files: list[str], rate: str | None, log_path: str, cpu: int | None = None):  # type: ignore[no-untyped-def]
    args = [sys.executable, "-m", "benchmarks.origin", "--port", str(port)]
    args += [f"--file={f}" for f in files]
    if rate:
        args += ["--rate", rate]
    return process(args, port, log_path, cpu)


def cachetier(  # type: ignore[no-untyped-def]
    port: int,
    origin_port: int,
    cache_dir: str,
    log_path: str,
    *extra: str,
    cpu: int | str | None = None,
    origin_url: str | None = None,
):
    """
    C{twistd -n cachetier} on loopback; its log goes to C{log_path}.

    @param origin_url: the origin base, if not C{http://127.0.0.1:PORT/}.
    """
    args = TWISTD + [
        "-n",
        "--pidfile=",
        f"--logfile={log_path}",
        "cachetier",
        f"--origin={origin_url or f'http://127.0.0.1:{origin_port}/'}",
        f"--cache-dir={cache_dir}",
        f"--listen=tcp:{port}:interface=127.0.0.1",
        *extra,
    ]
    return process(args, port, log_path + ".out", cpu)


def origin_requests(log_path: str, name: str) -> int:
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if f"origin GET {name} #" in line)


def kill_now(pid: int) -> None:
    """
    SIGKILL C{pid} and its children (nginx's workers, which outlive their
    master), as a machine that dies would end them.
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        children = []
    for p in (pid, *children):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
