"""
The private Twisted names cachetier reads, all in L{cachetier.web._twisted},
checked against the Twisted installed: when a release moves one, these
fail naming it and the version, instead of the server quietly logging
wrong byte counts or refusing bodies it should read.
"""

from __future__ import annotations

import io

from twisted.copyright import version
from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import client, http

from cachetier.web import _twisted

# The Twisted these names were last checked against.
CHECKED = "26.10.0"


def moved(name: str) -> str:
    return (
        f"Twisted {version} moved {name} (last checked against Twisted"
        f" {CHECKED}): update cachetier/web/_twisted.py"
    )


class _Recording(http.HTTPChannel):
    line: tuple[bytes, bytes] | None = None

    def allHeadersReceived(self) -> None:
        self.line = _twisted.request_line(self)
        super().allHeadersReceived()


class PrivateNameTests(SynchronousTestCase):
    def test_request_line_before_the_body(self) -> None:
        channel = _Recording()
        channel.makeConnection(StringTransport())
        try:
            channel.dataReceived(
                b"POST /api/v1/purge?wait=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"
            )
        except AttributeError:
            self.fail(moved("HTTPChannel._command or HTTPChannel._path"))
        self.assertEqual(
            channel.line, (b"POST", b"/api/v1/purge?wait=5"), moved("HTTPChannel._path")
        )

    def test_unsent_bytes_of_a_transport(self) -> None:
        transport = abstract.FileDescriptor(MemoryReactor())
        transport.connected = True
        transport.write(b"x" * 10)
        self.assertEqual(
            _twisted.unsent_bytes(transport),
            10,
            moved("FileDescriptor.dataBuffer, .offset or ._tempDataLen"),
        )

    def test_log_observers_in_order(self) -> None:
        first, second = (lambda event: None), (lambda event: None)
        publisher = LogPublisher(first, second)
        self.assertEqual(
            _twisted.log_observers(publisher), [first, second], moved("LogPublisher._observers")
        )

    def test_the_file_of_a_file_observer(self) -> None:
        out = io.StringIO()
        self.assertIs(
            _twisted.observer_file(textFileLogObserver(out)), out, moved("FileLogObserver._outFile")
        )

    def test_the_pool_builds_connections_from_its_factory(self) -> None:
        self.assertIn(
            "_factory", vars(client.HTTPConnectionPool), moved("HTTPConnectionPool._factory")
        )
        self.assertIs(
            client.HTTPConnectionPool._factory,
            client._HTTP11ClientFactory,
            moved("HTTPConnectionPool._factory or _HTTP11ClientFactory"),
        )
        self.assertTrue(issubclass(_twisted.QuietPool._factory, client._HTTP11ClientFactory))
        self.assertFalse(_twisted.QuietPool._factory.noisy)

    def test_an_origin_response_shows_its_connection_header(self) -> None:
        from twisted.web._newclient import Request

        protocol = _twisted.QuietPool._factory(lambda p: None, "origin").buildProtocol(None)
        protocol.makeConnection(StringTransport())
        responses: list[object] = []
        protocol.request(Request(b"GET", b"/a", http.Headers({b"host": [b"o"]}), None)).addCallback(
            responses.append
        )
        try:
            protocol.dataReceived(
                b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n"
            )
        except AttributeError:
            self.fail(moved("HTTP11ClientProtocol._parser or HTTPParser.connHeaders"))
        (response,) = responses
        self.assertEqual(
            response.headers.getRawHeaders(b"connection"),  # type: ignore[attr-defined]
            [b"x-hop"],
            moved("HTTP11ClientProtocol._parser or HTTPParser.connHeaders"),
        )
