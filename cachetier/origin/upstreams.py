"""
Where a fill's requests go.  L{Upstreams} stands where the L{Origin}
stands for the syncer: a name's miss, revalidation and Range requests go
to the shield (another cachetier node, C{--shield}) that rendezvous
hashing ranks first for the name among the shields that are up, then the
next, then the origin itself (C{--shield-fallback=origin}), so that every
edge sends a name to the same shield and that shield fetches it once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import OriginAnswer, OriginError, Reason
from ..objects import StoredObject
from ..rendezvous import rank
from .client import Origin
from .response import OriginResponse
from .shields import Shield

log = Logger()

# Counts what went to each upstream: (upstream, "requests"|"bytes"|reason, amount).
Tally = Callable[[str, str, int], None]


class Upstreams:
    """
    The shields, then the origin.  It answers the syncer as the L{Origin}
    does (L{get}, L{stream}, L{abandon}), and passes on the origin's own
    face (its base, breaker and retries, its URL for a name) unchanged: a
    shield's failures are the shield's, never the origin's breaker's.

    @param fallback: whether the origin is asked when no shield answers
        (C{--shield-fallback=origin}); else the fill fails.
    @param make: makes the shield of a URL that L{follow} names.
    @param forget: told the URL of a shield no longer followed, whose
        metric series go.
    @ivar shields: the shields followed, by URL.  One no longer followed
        is forgotten at once: a fill under way with it holds it in its
        answer (L{OriginResponse.upstream}) and finishes with it, its
        bytes no longer counted.
    """

    def __init__(
        self,
        origin: Origin,
        shields: Sequence[Shield],
        fallback: bool = True,
        tally: Tally = lambda upstream, what, amount: None,
        make: Callable[[str], Shield] | None = None,
        forget: Callable[[str], None] = lambda url: None,
    ) -> None:
        self.origin = origin
        self.shields = {shield.url: shield for shield in shields}
        # Shared with the copies L{forwarding} makes, which rank and count
        # only the shields followed now.
        self._followed = set(self.shields)
        self._fallback = fallback
        self._tally = tally
        self._make = make
        self._forget = forget

    def follow(self, urls: Sequence[str]) -> None:
        """
        Ask these shields from now on (C{--shield=cluster}: the cluster's
        live shields, as membership lists them).  A shield no longer
        followed stops its probes and is forgotten; one followed again is
        made anew.
        """
        assert self._make is not None
        wanted = frozenset(urls)
        for url in self._followed - wanted:
            self.shields.pop(url).health.stop()
            self._followed.discard(url)
            self._forget(url)
        for url in wanted - self._followed:
            self.shields[url] = self._make(url)
            self._followed.add(url)

    def is_up(self, url: str) -> bool:
        """
        Whether the shield at C{url} is followed and up: for /metrics.
        """
        return url in self._followed and self.shields[url].health.up

    @property
    def base(self) -> str:
        return self.origin.base

    @property
    def breaker(self) -> Any:
        return self.origin.breaker

    @property
    def retry(self) -> Any:
        return self.origin.retry

    @property
    def rejected(self) -> tuple[float, str] | None:
        return self.origin.rejected

    def down(self) -> list[tuple[str, str]]:
        """
        The shields that are down, and why: for /healthz.
        """
        return [
            (url, s.health.reason) for url, s in sorted(self.shields.items()) if not s.health.up
        ]

    def url_for(self, name: str) -> str:
        return self.origin.url_for(name)

    def forwarded(self, request_headers: Any) -> tuple[tuple[bytes, bytes], ...]:
        return self.origin.forwarded(request_headers)

    def forwarding(self, headers: tuple[tuple[bytes, bytes], ...]) -> Upstreams:
        """
        These upstreams, each sending C{headers} too (see
        L{Origin.forwarding}); their health shared.
        """
        upstreams = copy.copy(self)
        upstreams.origin = self.origin.forwarding(headers)
        upstreams.shields = {
            url: evolve(s, origin=s.origin.forwarding(headers)) for url, s in self.shields.items()
        }
        return upstreams

    def ranked(self, name: str) -> list[Shield]:
        """
        The shields that are up, in C{name}'s rendezvous order.
        """
        up = [
            url
            for url, shield in self.shields.items()
            if url in self._followed and shield.health.up
        ]
        return [self.shields[url] for url in rank(up, name)]

    async def get(
        self,
        name: str,
        validators: StoredObject | None = None,
        byte_range: tuple[int, int, str] | None = None,
    ) -> OriginResponse:
        """
        L{Origin.get} from the first upstream that answers: a shield that
        fails on its own (refused, timed out, a 5xx of its own) is marked
        down and the next one asked; what a shield answers for the origin
        (a 404, a 5xx it relays) is the answer.  Without the origin to
        fall back on, the last shield's failure is the fill's (its
        C{shield} named: a timeout then is a 504).
        """
        failed: OriginError | None = None
        failed_url = None
        for shield in self.ranked(name):
            self._count(shield.url, "requests", 1)
            try:
                response = await shield.origin.get(name, validators, byte_range)
            except OriginError as e:
                if shield.health.up or e.reason is Reason.cancelled:
                    raise
                failed, failed_url = e, shield.url
                shield.health.down(e.label)
                self._count(shield.url, e.label, 1)
                log.warn(
                    "shield {shield} failed for {name} ({reason}): asking the next upstream",
                    shield=shield.url,
                    name=name,
                    reason=e.label,
                )
                continue
            return evolve(response, upstream=shield)
        if not self._fallback:
            if failed is None:
                raise OriginError(Reason.connection, "every shield is down")
            message = f"no shield answered ({failed.label})"
            raise OriginError(failed.reason, message, failed.status, shield=failed_url)
        self._tally("origin", "requests", 1)
        try:
            return await self.origin.get(name, validators, byte_range)
        except OriginAnswer:
            raise
        except OriginError as e:
            if e.reason is not Reason.cancelled:
                self._tally("origin", e.label, 1)
            raise

    def _sender(self, response: OriginResponse) -> Origin:
        shield = response.upstream
        return self.origin if shield is None else shield.origin

    def _count(self, upstream: str, what: str, amount: int) -> None:
        """
        Tally for the origin or a shield followed: a forgotten shield's
        series are gone for good.
        """
        if upstream == "origin" or upstream in self._followed:
            self._tally(upstream, what, amount)

    def abandon(self, response: OriginResponse) -> None:
        self._sender(response).abandon(response)

    def stream(self, response: OriginResponse, write: Callable[[bytes], None]) -> Deferred[None]:
        """
        L{Origin.stream} from the upstream that sent C{response}, its bytes
        counted; a shield that fails mid-body is marked down, so that what
        is missing is asked of the next upstream.
        """
        shield = response.upstream
        upstream = "origin" if shield is None else shield.url

        def counted(data: bytes) -> None:
            self._count(upstream, "bytes", len(data))
            write(data)

        def failed(failure: Failure) -> Failure:
            error = failure.value
            if not isinstance(error, OriginError) or error.reason is Reason.cancelled:
                return failure
            self._count(upstream, error.label, 1)
            if shield is None or shield.health.up:
                return failure
            shield.health.down(error.label)
            return Failure(
                OriginError(error.reason, f"shield {upstream}: {error}", shield=upstream)
            )

        return self._sender(response).stream(response, counted).addErrback(failed)

    def stop(self) -> None:
        """
        No more probes of shields that are down.
        """
        for shield in self.shields.values():
            shield.health.stop()

    async def from_origin(
        self, name: str, validators: StoredObject | None, shield: str
    ) -> OriginResponse:
        """
        L{Origin.get} from the origin itself, past the shields: for a
        revalidation of C{validators} that C{shield} answered with an older
        version (see L{cachetier.sync.versions}).  Without the origin to
        fall back on (C{--shield-fallback=none}) the fill fails instead, as
        when no shield answers, naming C{shield} (a failure, not a change
        at the origin: the fill is not started again).
        """
        if not self._fallback:
            message = f"shield {shield} sent a version older than the copy"
            raise OriginError(Reason.connection, message, shield=shield)
        past = copy.copy(self)
        past._followed = set()  # no shield ranks: L{get} asks the origin
        return await past.get(name, validators)
