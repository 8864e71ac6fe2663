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
    """

    def __init__(
        self,
        origin: Origin,
        shields: Sequence[Shield],
        fallback: bool = True,
        tally: Tally = lambda upstream, what, amount: None,
    ) -> None:
        self.origin = origin
        self.shields = {shield.url: shield for shield in shields}
        self._fallback = fallback
        self._tally = tally

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
        return [(url, s.health.reason) for url, s in self.shields.items() if not s.health.up]

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
        up = [url for url, shield in self.shields.items() if shield.health.up]
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
        (a 404, a 5xx it relays) is the answer.
        """
        failed: OriginError | None = None
        for shield in self.ranked(name):
            self._tally(shield.url, "requests", 1)
            try:
                response = await shield.origin.get(name, validators, byte_range)
            except OriginError as e:
                if shield.health.up or e.reason is Reason.cancelled:
                    raise
                failed = e
                shield.health.down(e.label)
                self._tally(shield.url, e.label, 1)
                log.warn(
                    "shield {shield} failed for {name} ({reason}): asking the next upstream",
                    shield=shield.url,
                    name=name,
                    reason=e.label,
                )
                continue
            return evolve(response, upstream=shield.url)
        if not self._fallback:
            if failed is None:
                raise OriginError(Reason.connection, "every shield is down")
            raise OriginError(failed.reason, f"no shield answered ({failed.label})", failed.status)
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
        shield = self.shields.get(response.upstream or "")
        return self.origin if shield is None else shield.origin

    def abandon(self, response: OriginResponse) -> None:
        self._sender(response).abandon(response)

    def stream(self, response: OriginResponse, write: Callable[[bytes], None]) -> Deferred[None]:
        """
        L{Origin.stream} from the upstream that sent C{response}, its bytes
        counted; a shield that fails mid-body is marked down, so that what
        is missing is asked of the next upstream.
        """
        upstream = response.upstream or "origin"
        shield = self.shields.get(upstream)

        def counted(data: bytes) -> None:
            self._tally(upstream, "bytes", len(data))
            write(data)

        def failed(failure: Failure) -> Failure:
            error = failure.value
            if not isinstance(error, OriginError) or error.reason is Reason.cancelled:
                return failure
            self._tally(upstream, error.label, 1)
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
