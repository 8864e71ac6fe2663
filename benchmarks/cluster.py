"""
One cluster on loopback: eight nodes, one redis-server, the test origin
in this process (so that files change under the nodes).  Three
measurements::

    python -m benchmarks.cluster                  # about 5 minutes
    python -m benchmarks.cluster --purges 100 --stop-seconds 10

1. Purges: C{--purges} purges, one at a time, each sent to the next node;
   the time from the API's answer until every node has applied it (from
   each node's own record of when it did, in its heartbeat), beside the
   same purges fanned out over HTTP to eight nodes without C{--cluster},
   one node after another, as varnish-broadcaster does.
2. A node stopped (SIGSTOP) for C{--stop-seconds} while 500 of its cached
   files are re-uploaded and purged, with the log trimmed to 100 entries
   (it resyncs), then continued: how many of them it serves stale.
3. Redis stopped (SIGSTOP) for 10 s while listeners fetch cached files
   from every node: the errors they see.

Every process is stopped by its PID; the files live in a temp directory
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis
from treq.client import HTTPClient
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from tests.helpers import TestOrigin, body_of

from . import _procs

TOKEN = "benchmark-admin-token-0123456789"
NODES = 8
SIZE = 2048


@contextmanager
def redis_server(work: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """
    A redis-server without persistence on a free port, stopped by PID.
    """
    port = _procs.free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", work]
    with _procs.process(args, port, os.path.join(work, "redis.log")) as proc:
        yield proc, port


def start_nodes(
    stack: ExitStack, work: str, origin: int, extra: list[str]
) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """
    Eight C{twistd} nodes (C{n1}...C{n8}) with C{extra} flags; their URLs
    and processes.
    """
    token = os.path.join(work, "token")
    with open(token, "w") as f:
        f.write(TOKEN)
    urls, procs = [], []
    for n in range(1, NODES + 1):
        port = _procs.free_port()
        url = f"http://127.0.0.1:{port}/"
        flags = [f"--node-name=n{n}", f"--node-url={url}", f"--admin-token-file={token}"]
        # One client (this one) warms hundreds of files at once.
        flags += ["--max-syncs-per-second=100000", "--max-syncs-per-client=100000"]
        name = f"n{n}-{len(os.listdir(work))}"
        proc = stack.enter_context(
            _procs.cachetier(
                port,
                origin,
                os.path.join(work, name),
                os.path.join(work, f"{name}.log"),
                *flags,
                *extra,
            )
        )
        urls.append(url)
        procs.append(proc)
    return urls, procs


def summary(label: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{label:<46} p50 {statistics.median(ms):8.1f} ms   p99 {p99:8.1f} ms"
        f"   max {ms[-1]:8.1f} ms   ({len(ms)} purges)"
    )


class Bench:
    def __init__(self, reactor: Any, origin: TestOrigin, origin_port: int) -> None:
        self.reactor = reactor
        self.origin = origin
        self.origin_port = origin_port
        self.pool = HTTPConnectionPool(reactor)
        self.pool.maxPersistentPerHost = 16
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.admin = {"Authorization": [f"Bearer {TOKEN}"]}

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        response = await self.http.request(method, url, data=data, headers=self.admin)
        return response.code, json.loads(await response.content())

    async def get(self, url: str) -> tuple[int, bytes]:
        response = await self.http.get(url)
        return response.code, await response.content()

    async def warm(self, urls: list[str], names: list[str]) -> None:
        """
        Cache C{names} on every node of C{urls}, sixteen at a time.
        """
        jobs = [(url, name) for url in urls for name in names]

        async def worker() -> None:
            while jobs:
                url, name = jobs.pop()
                code, body = await self.get(url + "files/" + name)
                assert code == 200, (url, name, code, body[:200])

        await DeferredList([Deferred.fromCoroutine(worker()) for _ in range(16)])

    async def fan_out(self, urls: list[str], names: list[str]) -> list[float]:
        """
        Each purge sent to every node, one after another: the time until
        the last one answered.
        """
        times = []
        for name in names:
            started = time.time()
            for url in urls:
                code, _ = await self.call("DELETE", url + "api/v1/files/" + name)
                assert code == 200, code
            times.append(time.time() - started)
        return times

    async def through_log(
        self, urls: list[str], names: list[str], client: redis.Redis
    ) -> tuple[list[float], list[float], list[float]]:
        """
        Each purge sent to one node (the next each time): how long the API
        took to answer, the time from its answer until every node had
        applied it, as each node's heartbeat says, and the time from the
        request until then.
        """
        answers, everywhere, whole = [], [], []
        for i, name in enumerate(names):
            asked = time.time()
            code, body = await self.call("DELETE", urls[i % len(urls)] + "api/v1/files/" + name)
            answered = time.time()
            assert code == 200, body
            entry = body["cluster"]["id"]
            applied_at = await deferToThread(applied_everywhere, client, entry, len(urls))
            answers.append(answered - asked)
            # A node may apply it before the answer reaches us: 0 then.
            everywhere.append(max(0.0, max(applied_at) - answered))
            whole.append(max(applied_at) - asked)
        return answers, everywhere, whole


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def joined(client: redis.Redis, count: int) -> None:
    """
    Wait (up to 30 s) until C{count} nodes have written a heartbeat.
    """
    deadline = time.monotonic() + 30
    while client.exists(*[f"cachetier:node:n{n}" for n in range(1, count + 1)]) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the nodes did not join within 30 s")
        time.sleep(0.05)


def applied_everywhere(client: redis.Redis, entry: str, count: int) -> list[float]:
    """
    Wait (up to 10 s) until C{count} nodes' heartbeats say they applied
    C{entry}; when each did.
    """
    deadline = time.monotonic() + 10
    keys = [f"cachetier:node:n{n}" for n in range(1, count + 1)]
    while time.monotonic() < deadline:
        records = [json.loads(r) if r else {} for r in client.mget(keys)]
        if all(_id(r.get("applied") or "0-0") >= _id(entry) for r in records):
            return [float(r["applied_at"]) for r in records]
        time.sleep(0.002)
    raise RuntimeError(f"{entry} not applied everywhere within 10 s")


async def stopped_node(
    bench: Bench, urls: list[str], proc: subprocess.Popen[bytes], seconds: float
) -> None:
    """
    Measurement 2: the last node is frozen while 500 of its files change
    and are purged elsewhere (the log kept to about 100 entries).
    """
    names = [f"stop/{n}.mp3" for n in range(500)]
    for name in names:
        bench.origin.put(name, body_of(SIZE, name))
    victim, others = urls[-1], urls[:-1]
    await bench.warm([victim], names)
    proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for i, name in enumerate(names):
            bench.origin.put(name, body_of(SIZE, name + "-new"))
            code, body = await bench.call(
                "DELETE", others[i % len(others)] + "api/v1/files/" + name
            )
            assert code == 200, body
        await task.deferLater(
            bench.reactor, max(0.0, seconds - (time.monotonic() - stopped)), lambda: None
        )
    finally:
        proc.send_signal(signal.SIGCONT)
    stale = errors = 0
    for name in names:
        code, served = await bench.get(victim + "files/" + name)
        if code != 200:
            errors += 1
        elif served != body_of(SIZE, name + "-new"):
            stale += 1
    print(
        f"node stopped {seconds:.0f} s during 500 purges, log trimmed to ~100: "
        f"{stale} of 500 purged names served stale, {errors} errors, after SIGCONT"
    )


async def redis_stopped(bench: Bench, urls: list[str], redis_proc: subprocess.Popen[bytes]) -> None:
    """
    Measurement 3: listeners fetch cached files from every node while
    Redis is stopped for 10 s (and 5 s either side).
    """
    names = [f"load/{n}.mp3" for n in range(50)]
    for name in names:
        bench.origin.put(name, body_of(SIZE, name))
    await bench.warm(urls, names)
    counts = {"requests": 0, "errors": 0}
    running = True

    async def listener(k: int) -> None:
        n = k
        while running:
            n += 1
            url = urls[n % len(urls)] + "files/" + names[n % len(names)]
            try:
                code, _ = await bench.get(url)
            except Exception:
                code = 0
            counts["requests"] += 1
            if code != 200:
                counts["errors"] += 1

    listeners = [Deferred.fromCoroutine(listener(k)) for k in range(16)]
    before = sum(bench.origin.counts.values())
    await task.deferLater(bench.reactor, 5, lambda: None)
    redis_proc.send_signal(signal.SIGSTOP)
    await task.deferLater(bench.reactor, 10, lambda: None)
    redis_proc.send_signal(signal.SIGCONT)
    await task.deferLater(bench.reactor, 5, lambda: None)
    running = False
    await DeferredList(listeners)
    print(
        f"Redis stopped 10 s under load (16 listeners, 8 nodes, 20 s): "
        f"{counts['errors']} errors in {counts['requests']} requests; "
        f"{sum(bench.origin.counts.values()) - before} origin requests (revalidations)"
    )


async def run(reactor: Any, args: argparse.Namespace) -> None:
    work = tempfile.mkdtemp(prefix="cachetier-cluster-")
    origin = TestOrigin()
    origin_port = reactor.listenTCP(0, Site(origin), interface="127.0.0.1").getHost().port
    bench = Bench(reactor, origin, origin_port)
    names = [f"ep/{n}.mp3" for n in range(args.purges)]
    for name in names:
        origin.put(name, body_of(SIZE, name))
    try:
        with ExitStack() as stack:
            urls, _ = start_nodes(stack, work, origin_port, [])
            fanned = await bench.fan_out(urls, names)
        print(summary("fanned out over HTTP to 8 nodes, one by one", fanned))
        with ExitStack() as stack:
            redis_proc, port = stack.enter_context(redis_server(work))
            cluster = [f"--cluster=redis://127.0.0.1:{port}/0", "--cluster-stream-length=100"]
            urls, procs = start_nodes(stack, work, origin_port, cluster)
            client = redis.Redis(port=port)
            stack.callback(client.close)
            # Every node has joined (its first heartbeat) before the first purge.
            await deferToThread(joined, client, NODES)
            answers, everywhere, whole = await bench.through_log(urls, names, client)
            print(summary("through the log: the API's answer", answers))
            print(summary("through the log: answer -> applied on all 8", everywhere))
            print(summary("through the log: request -> applied on all 8", whole))
            await stopped_node(bench, urls, procs[-1], args.stop_seconds)
            await redis_stopped(bench, urls, redis_proc)
    finally:
        await bench.pool.closeCachedConnections()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purges", type=int, default=1000)
    parser.add_argument("--stop-seconds", type=float, default=60.0)
    args = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
