"""
Listeners that each download one file whole, for the tier benchmarks:
who asks for what (a Zipf draw over the files), the load itself (one
asyncio loop, one HTTP/1.0 GET per listener, the body read into one shared
buffer, counted, CRC-32'd and discarded), and the figures of a run.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence

from attrs import define, field, frozen

# Bytes of a response head at most; more is a broken server.
_MAX_HEAD = 64 * 1024
# How often a listener looks whether its server went silent.
_WATCH_EVERY = 1.0


@frozen
class File:
    """
    One file the origin serves: its name, size and CRC-32.
    """

    name: str
    size: int
    crc: int


@frozen
class Ask:
    """
    One listener's plan: which file, from which edge, how long after the
    start.
    """

    file: int
    edge: int
    delay: float


@frozen
class Result:
    """
    What one listener saw.

    @ivar ttfb: seconds from its connect to the first body byte (L{None}:
        no body byte came).
    @ivar took: seconds from its connect to the end of the response.
    @ivar error: L{None} when it got a 200 with every byte right, else
        what went wrong: "status 502", "aborted (length said more)" (a
        clean abort: the declared length tells the listener), "short 200"
        (no length declared and too few bytes: the listener cannot tell),
        ...
    """

    ask: Ask
    ttfb: float | None
    took: float
    received: int
    error: str | None


def zipf_draws(count: int, files: int, exponent: float, rng: random.Random) -> list[int]:
    """
    C{count} file indexes in C{range(files)}, index C{k} drawn with a
    probability proportional to C{1 / (k + 1) ** exponent}.
    """
    weights = [1 / (k + 1) ** exponent for k in range(files)]
    return rng.choices(range(files), weights=weights, k=count)


def plan(
    listeners: int, files: int, edges: int, exponent: float, ramp: float, seed: int
) -> list[Ask]:
    """
    The same listeners for every run: a Zipf draw of files, spread over the
    edges in turn, their arrivals uniform over C{ramp} seconds.
    """
    rng = random.Random(seed)
    draws = zipf_draws(listeners, files, exponent, rng)
    return [Ask(f, n % edges, rng.uniform(0, ramp)) for n, f in enumerate(draws)]


def percentile(values: Sequence[float], q: float) -> float:
    """
    The nearest-rank C{q}th percentile of C{values} (NaN when empty).
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@define
class _Progress:
    received: int = 0


@define(eq=False)
class _Listener(asyncio.BufferedProtocol):
    request: bytes
    buffer: bytearray
    progress: _Progress
    lost: asyncio.Future[BaseException | None]
    transport: asyncio.Transport | None = None
    head: bytes = b""
    status: int | None = None
    length: int | None = None
    received: int = 0
    crc: int = 0
    first: float | None = None
    last: float = field(factory=time.monotonic)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.last = time.monotonic()
        data = memoryview(self.buffer)[:nbytes]
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > _MAX_HEAD and self.transport is not None:
                    self.transport.abort()
                return
            self.status, self.length = _parse(self.head[:end])
            data = memoryview(self.head)[end + 4 :]
        if data and self.first is None:
            self.first = self.last
        self.crc = zlib.crc32(data, self.crc)
        self.received += len(data)
        self.progress.received += len(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _parse(head: bytes) -> tuple[int, int | None]:
    """
    A response head's status (0 if unreadable) and Content-Length (L{None}
    if absent or unreadable).
    """
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return status, int(value)
    return status, None


def _verdict(listener: _Listener, file: File) -> str | None:
    if listener.status is None:
        return "no answer"
    if listener.status != 200:
        return f"status {listener.status}"
    if listener.received < file.size:
        # Cut short: the listener knows it when the length was declared.
        return "short 200" if listener.length is None else "aborted (length said more)"
    if listener.received > file.size or listener.crc != file.crc:
        return "wrong bytes"
    return None


async def _listen(
    ask: Ask,
    address: tuple[str, int],
    file: File,
    buffer: bytearray,
    progress: _Progress,
    stall: float,
) -> Result:
    await asyncio.sleep(ask.delay)
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[BaseException | None] = loop.create_future()
    request = f"GET /files/{file.name} HTTP/1.0\r\nHost: {address[0]}\r\n\r\n".encode()
    started = time.monotonic()
    try:
        transport, listener = await asyncio.wait_for(
            loop.create_connection(lambda: _Listener(request, buffer, progress, lost), *address),
            stall,
        )
    except (OSError, TimeoutError) as e:
        return Result(ask, None, time.monotonic() - started, 0, f"connect: {type(e).__name__}")
    error = None
    while not lost.done():
        await asyncio.wait([lost], timeout=_WATCH_EVERY)
        if not lost.done() and time.monotonic() - listener.last > stall:
            error = f"stalled {stall:g}s"
            transport.abort()
            await lost
    ended = time.monotonic()
    error = error or _verdict(listener, file)
    ttfb = None if listener.first is None else listener.first - started
    return Result(ask, ttfb, ended - started, listener.received, error)


async def _run(
    asks: Sequence[Ask],
    edges: Sequence[tuple[str, int]],
    files: Sequence[File],
    stall: float,
    kill: tuple[float, Callable[[], None]] | None,
) -> tuple[list[Result], float | None]:
    buffer = bytearray(1 << 20)
    progress = _Progress()
    tasks = [
        asyncio.ensure_future(
            _listen(ask, edges[ask.edge], files[ask.file], buffer, progress, stall)
        )
        for ask in asks
    ]
    everything = asyncio.gather(*tasks)
    share = None
    if kill is not None:
        at, action = kill
        await asyncio.wait([everything], timeout=at)
        if not everything.done():
            action()
            share = progress.received / sum(files[ask.file].size for ask in asks)
    return list(await everything), share


def run(
    asks: Sequence[Ask],
    edges: Sequence[tuple[str, int]],
    files: Sequence[File],
    stall: float,
    kill: tuple[float, Callable[[], None]] | None = None,
) -> tuple[list[Result], float | None]:
    """
    Every listener of C{asks} against C{edges}; each gives up when its
    server sends nothing for C{stall} seconds.  C{kill}, if given, is
    (seconds, action): the action is called that long after the start,
    if listeners are still at work.

    @return: each listener's result, and the share of the bytes asked for
        that the listeners had received when the action was called
        (L{None}: not called).
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(_run(asks, edges, files, stall, kill))


def errors(results: Sequence[Result]) -> Counter[str]:
    """
    How many listeners saw each kind of error.
    """
    return Counter(r.error for r in results if r.error is not None)
