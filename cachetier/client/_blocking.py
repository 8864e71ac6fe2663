"""
The client for WSGI applications (Flask, Django): plain calls, standard
library only, safe to share between threads.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import txaio.aio

from ._base import ClientBase
from ._lookup import lookup, probe, run_now
from ._policy import FileStatus, check_name

_MAX_ANSWER = 1024 * 1024


class BlockingCacheTierClient(ClientBase):
    """
    A drop-in for cache-tier 1.0.4's C{CacheTierClient}: the same
    constructor and methods, returning plain values; never raises but for
    an invalid name, and never takes much longer than C{request_timeout}.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The arguments are ClientBase's, compatible with cache-tier 1.0.4.
        super().__init__(*args, **kwargs)
        self.log = txaio.aio.make_logger()
        self._ssl = ssl.create_default_context()
        self._closing = threading.Event()
        self._discovery: threading.Thread | None = None
        if self.membership is not None:
            self._discovery = threading.Thread(
                target=self._discover, name="cachetier-client-discovery", daemon=True
            )
            self._discovery.start()

    def _discover(self) -> None:
        """
        Follow the cluster's membership, in a thread of its own, until
        L{close}.
        """
        assert self.membership is not None
        try:
            while True:
                self.refresh_nodes()
                if self._closing.wait(self.discovery_interval):
                    return
        finally:
            self.membership.close()

    def close(self) -> None:
        """
        Stop following the cluster's membership (nothing to do without
        C{cluster=}).
        """
        self._closing.set()
        if self._discovery is not None:
            self._discovery.join()

    def verify_file(self, file_name: str) -> bool:
        name = check_name(file_name)
        status = self._cached(name)
        if status is not None:
            return status.available
        return self.refresh_status_from_server(name)

    def file_status(self, file_name: str) -> FileStatus | None:
        name = check_name(file_name)
        return self._cached(name) or self._lookup(name)

    def _cached(self, name: str) -> FileStatus | None:
        """
        The remembered answer about C{name}, after confirming its node's
        liveness inline when that is due: one caller a node an interval
        pays for the probe; the others use the last verdict meanwhile.
        """
        node = self.policy.home(name)
        if node is not None and self.policy.probe_due(node):
            run_now(probe(self.policy, node, self._fetch_json, self.log))
        return self.policy.cached(name)

    def refresh_status_from_server(self, file_name: str) -> bool:
        status = self._lookup(check_name(file_name))
        return status is not None and status.available

    def _lookup(self, name: str) -> FileStatus | None:
        return run_now(lookup(self.policy, name, self._fetch_json, self.log, self.log_enabled))

    async def _fetch_json(self, url: str) -> Any:
        # Never suspends: see run_now.
        return self._get_json(url)

    def _get_json(self, url: str) -> Any:
        deadline = time.monotonic() + self.request_timeout
        parts = urlsplit(url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=self.request_timeout, context=self._ssl
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=self.request_timeout
            )
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = b""
            while len(body) <= _MAX_ANSWER:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no whole answer within {self.request_timeout:g}s")
                if connection.sock is not None:
                    connection.sock.settimeout(remaining)
                chunk = response.read1(65536)
                if not chunk:
                    break
                body += chunk
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            return json.loads(body)
        finally:
            connection.close()
