"""
An answer the origin gave instead of the file (a 404, a 301, a 503...):
kept when its status and freshness allow, as a small object of its own,
and otherwise passed on as it came by the fill that failed with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..errors import OriginAnswer
from ..objects import ObjectHeaders, StoredObject
from ..origin.response import NEGATIVE_STATUSES, storable
from ..store import CacheStore
from .fill import Fill

log = Logger()


def answer_lifetime(
    headers: ObjectHeaders, lifetime: Callable[[ObjectHeaders], float], negative_ttl: float
) -> float:
    """
    How long a kept answer is fresh: as the origin says, else C{lifetime}'s
    heuristic, but C{negative_ttl} for a 404, 405, 410, 414 or 501.
    """
    if headers.max_age is None and headers.status in NEGATIVE_STATUSES:
        return negative_ttl - headers.initial_age
    return lifetime(headers)


async def keep_answer(
    fill: Fill,
    store: CacheStore,
    run_in_thread: Callable[..., Deferred[Any]],
    lifetime: float,
    answer: OriginAnswer,
) -> StoredObject:
    """
    Keep C{answer} as C{fill}'s name's object, when it may be kept.

    While a file (a 2xx or 3xx) is revalidated, a 4xx is an origin error,
    not a deletion (an S3 policy mistake must not wipe the cache), and a
    5xx always is: the copy stays and stale-if-error decides.  An answer
    that may not be kept (a temporary redirect, say) is passed on and the
    copy stays, stale: the next request asks again.  Otherwise the answer
    replaces the copy.

    @raise OriginAnswer: C{answer}, when it is not kept: the fill fails
        with it, and its readers get it as it came.
    """
    name, old, status = fill.name, fill.revalidating, answer.headers.status
    if old is not None and (status >= 500 or (status >= 400 and old.status < 400)):
        raise answer
    if not fill.publish:
        raise answer
    if not storable(answer.headers):
        raise answer
    reservation = store.reserve(len(answer.body), keep=name)
    if reservation is None:
        raise answer
    try:
        fill.body_received(lifetime > 0)
        fill.state = "publishing"
        stored: StoredObject = await run_in_thread(
            _commit, store, name, answer.body, answer.headers, lifetime
        )
        store.install(stored, None if old else fill.used_at)
    finally:
        reservation.release()
    if not fill.publish:
        # Purged while it was being committed.
        store.remove(name, durable=True)
        raise answer
    log.info("kept the origin's {status} for {name}", status=status, name=name)
    return stored


def _commit(
    store: CacheStore, name: str, body: bytes, headers: ObjectHeaders, lifetime: float
) -> StoredObject:
    """
    Write an answer's body to a temp file and commit it.  Blocking.
    """
    fd, temp_path = store.new_temp()
    committed = False
    try:
        store.write(fd, body, 0)
        stored = store.commit(name, fd, temp_path, len(body), headers, lifetime)
        committed = True
        return stored
    finally:
        os.close(fd)
        if not committed:
            store.discard_temp(temp_path)
