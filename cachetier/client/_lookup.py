"""
The one lookup flow, shared by the three transports.

It is a coroutine over an injected C{fetch_json}: Twisted drives it with
L{Deferred.fromCoroutine}, asyncio awaits it, and the blocking client's
C{fetch_json} never suspends, so L{run_now} finishes it in one step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ._policy import FileStatus, Policy

T = TypeVar("T")
FetchJSON = Callable[[str], Awaitable[Any]]


async def lookup(
    policy: Policy, name: str, fetch_json: FetchJSON, log: Any, verbose: bool = False
) -> FileStatus | None:
    """
    Ask the right node about C{name}; on any failure, L{None} (the caller
    sends the listener to the origin) and the node's breaker hears of it.

    @param log: a txaio logger (Twisted's or asyncio's: the same calls).
        Failures are warnings; with C{verbose}, every answer is logged too.
    """
    node = policy.choose(name)
    if node is None:
        if verbose:
            log.info("no cache tier node to ask about {name}; using the origin", name=name)
        return None
    try:
        status = FileStatus.from_json(await fetch_json(policy.status_url(node, name)))
    except Exception as e:
        policy.failed(node)
        log.warn(
            "cache tier {node} failed for {name} ({why}); using the origin",
            node=node,
            name=name,
            why=str(e) or type(e).__name__,
        )
        return None
    policy.succeeded(node, name, status)
    if verbose:
        log.info("{node} says {name} is {state}", node=node, name=name, state=status.state)
    return status


async def probe(policy: Policy, node: str, fetch_json: FetchJSON, log: Any) -> None:
    """
    Confirm that C{node} is alive: its C{/healthz} answers 200 (C{ok} or
    C{degraded}: it still serves its cache).  A failure, a timeout or a
    503 (C{failing}) drops the node's positive answers and opens its
    breaker.  The caller has claimed the probe with L{Policy.probe_due}.
    """
    try:
        await fetch_json(node + "healthz")
    except Exception as e:
        policy.failed(node)
        log.warn(
            "cache tier {node} failed its liveness check ({why}); using the origin",
            node=node,
            why=str(e) or type(e).__name__,
        )
    else:
        policy.probe_succeeded(node)


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    Run a coroutine that never suspends (all its awaits are of plain
    coroutines that return at once) and return its result.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the coroutine suspended; it needs an event loop")
