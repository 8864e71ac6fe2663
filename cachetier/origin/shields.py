"""
A shield: another cachetier node that an edge's fills ask before the
origin.  Its requests go down the same stack as the origin's, to its
C{/files/}, but are never signed and never carry the origin's secret
headers; its health (L{ShieldHealth}) stands where the origin's breaker
stands, and a shield that fails is skipped until its C{/healthz} says it
is back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import treq
from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .breaker import Breaker, RetryPolicy
from .client import Origin

log = Logger()

# How long a shield that failed is skipped before its /healthz is asked,
# and between asks while it stays down (nginx's fail_timeout is 10s).
COOLOFF = 5.0

# One entry of a Cache-Status list (RFC 9211, an sf-list): up to a comma
# outside a quoted string.
_ENTRY = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')


def own_failure(response: Any) -> bool:
    """
    Whether a shield's 5xx is its own failure, not the origin's answer
    relayed: an answer a node relays carries C{fwd-status} in its own (the
    last) C{Cache-Status} entry; an error it makes itself does not.  A 508
    is the shield's answer to this request, whose C{CDN-Loop} named it (a
    listener's may), never a failure of the shield's: it is passed on, and
    the request is not sent on to the origin to loop there.
    """
    return response.code != 508 and not _relayed(response)


def loop(response: Any) -> bool:
    """
    Whether a shield's answer is a 508 that a node up there made for a
    request naming it (its entry says C{detail=loop_detected}), by the
    shield itself or relayed from a shield behind it: not the origin's.
    """
    return response.code == 508 and any(
        "detail=loop_detected" in (p.strip() for p in entry.split(";")[1:])
        for entry in _entries(response)
    )


def _relayed(response: Any) -> bool:
    entries = _entries(response)
    if not entries:
        return False
    parameters = [p.strip().partition("=")[0] for p in entries[-1].split(";")[1:]]
    return "fwd-status" in parameters


def _entries(response: Any) -> list[str]:
    lines = response.headers.getRawHeaders(b"cache-status") or []
    return list(_ENTRY.findall(b",".join(lines).decode("latin-1")))


class ShieldHealth(Breaker):
    """
    Whether a shield is up: the breaker of its L{Origin}, but opened by one
    failure of the shield's own, and closed only by its C{/healthz},
    asked every L{COOLOFF} seconds while it is down.

    @param check: asks the shield's C{/healthz}; fires with whether it is
        up.
    @ivar reason: why it is down, for /healthz and the log.
    """

    def __init__(self, url: str, clock: IReactorTime, check: Callable[[], Deferred[bool]]) -> None:
        super().__init__(clock, threshold=1, cooloff=COOLOFF)
        self.url = url
        self.up = True
        self.reason = ""
        self._check = check
        self._next: IDelayedCall | None = None
        self._checking: Deferred[bool] | None = None
        self._stopped = False

    @property
    def state(self) -> str:
        return "closed" if self.up else "open"

    def allow(self) -> bool:
        return self.up

    def succeeded(self) -> None:
        """
        An answer: it says nothing a down shield's /healthz does not.
        """

    def failed(self, name: str | None = None) -> None:
        self.down("a 5xx of its own" if name is not None else "unreachable")

    def down(self, reason: str) -> None:
        """
        The shield failed on its own: skip it, and ask its /healthz after
        the cool-off.
        """
        self.reason = reason
        if not self.up:
            return
        self.up = False
        if self._stopped:
            return
        log.warn(
            "shield {shield} is down ({reason}); asking its /healthz in {cooloff:g}s",
            shield=self.url,
            reason=reason,
            cooloff=self.cooloff,
        )
        self._schedule()

    def _schedule(self) -> None:
        self._next = self._clock.callLater(self.cooloff, self._probe)

    def _probe(self) -> None:
        self._next = None
        self._checking = self._check()

        def answered(up: bool) -> None:
            self._checking = None
            if self._stopped:
                return
            if up:
                self.up, self.reason = True, ""
                log.info("shield {shield} is back", shield=self.url)
            else:
                self._schedule()

        def failed(failure: Any) -> bool:
            return False

        self._checking.addErrback(failed).addCallback(answered)

    def stop(self) -> None:
        """
        No more probes (the service stops): the one due is cancelled, and
        the one in flight too.
        """
        self._stopped = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._checking is not None:
            checking, self._checking = self._checking, None
            checking.cancel()


async def healthy(client: HTTPClient, url: str, clock: IReactorTime, timeout: float) -> bool:
    """
    Whether a node's C{/healthz} answers 200 (C{ok} or C{degraded}) within
    C{timeout}.
    """
    d = client.get(url + "healthz")
    d.addTimeout(timeout, clock)
    response = await d
    body = Deferred.fromCoroutine(_drained(response))
    body.addTimeout(timeout, clock)
    await body
    return bool(response.code == 200)


async def _drained(response: Any) -> None:
    await treq.content(response)


@frozen
class Shield:
    """
    One shield: its base URL, its L{Origin} (its C{/files/} as the base)
    and its health.
    """

    url: str
    origin: Origin
    health: ShieldHealth


def shield(
    url: str,
    client: HTTPClient,
    clock: IReactorTime,
    timeout: float,
    origin_timeout: float,
    **origin_options: Any,
) -> Shield:
    """
    The shield at C{url}, asked through C{client} (no signer, no header
    file: nothing secret of the origin's ever goes to a shield).

    A shield's answer may wait on the origin (a miss it fetches, a copy
    it revalidates) or on a slot for that fill: it has not failed then,
    and an edge that took it for down would fetch the file from the
    origin a second time (rule 7).  So C{timeout} bounds connecting to it
    (C{client}'s) and its C{/healthz}, and its answer's headers get what
    the shield's own fill gets from the origin, plus C{timeout}.

    @param timeout: C{--shield-timeout}.
    @param origin_timeout: C{--origin-timeout}: the longest silence within
        its bodies, and, with C{timeout}, its answer's headers.
    """
    health = ShieldHealth(
        url, clock, lambda: Deferred.fromCoroutine(healthy(client, url, clock, timeout))
    )
    origin = Origin(
        url + "files/",
        client,
        clock,
        origin_timeout + timeout,
        breaker=health,
        retry=RetryPolicy(attempts=1),
        body_timeout=origin_timeout,
        own_failure=own_failure,
        loop=loop,
        **origin_options,
    )
    return Shield(url, origin, health)
