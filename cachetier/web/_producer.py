"""
What every body producer of ours shares: the push-producer contract and
the two ways a body ends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class BodyProducer:
    """
    Pushes one response body to C{request}: paused and resumed by the
    transport, stopped when the client goes away.  Subclasses send in
    L{_send} and free what they hold in L{_release}.
    """

    def __init__(self, request: Any) -> None:
        self.request: Any = request
        self._paused = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._send()

    def stopProducing(self) -> None:
        self._close()

    def _send(self) -> None:
        raise NotImplementedError()

    def _release(self) -> None:
        raise NotImplementedError()

    def _close(self) -> None:
        self.request = None
        self._release()

    def _finish(self) -> None:
        """
        The whole body is out: end the response cleanly.
        """
        request = self.request
        self._close()
        request.unregisterProducer()
        request.finish()

    def _abort(self) -> None:
        """
        The body cannot be completed: drop the connection, so the client can
        never take a short body for a whole one.
        """
        request = self.request
        self._close()
        request.unregisterProducer()
        request.transport.abortConnection()
