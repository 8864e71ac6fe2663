"""
The client for asyncio applications (FastAPI, aiohttp), on asyncio streams
from the standard library.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

import txaio.aio

from ._base import ClientBase
from ._lookup import lookup, probe
from ._policy import FileStatus, check_name

_MAX_ANSWER = 1024 * 1024


class AsyncioCacheTierClient(ClientBase):
    """
    The same methods as L{cachetier.client.CacheTierClient}, as coroutines.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The arguments are ClientBase's, compatible with cache-tier 1.0.4.
        super().__init__(*args, **kwargs)
        self.log = txaio.aio.make_logger()
        self._ssl = ssl.create_default_context()
        self._watcher: asyncio.Future[None] | None = None
        self._discovery: asyncio.Future[None] | None = None

    def _watch(self) -> None:
        """
        Confirm every node's liveness each C{liveness_interval}, and follow
        the cluster's membership, in tasks started by the first call and
        stopped by L{close}.
        """
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._probe_forever())
        if self._discovery is None and self.membership is not None:
            self._discovery = asyncio.ensure_future(self._discover_forever())

    async def _discover_forever(self) -> None:
        # redis-py blocks: each read runs in the loop's default executor.
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self.refresh_nodes)
            await asyncio.sleep(self.discovery_interval)

    async def _probe_forever(self) -> None:
        while True:
            probes = [
                probe(self.policy, node, self._fetch_json, self.log)
                for node in self.policy.nodes
                if self.policy.probe_due(node)
            ]
            await asyncio.gather(*probes)
            await asyncio.sleep(self.policy.liveness_interval)

    async def close(self) -> None:
        """
        Stop the liveness checks and following the cluster's membership.
        """
        tasks = [self._watcher, self._discovery]
        self._watcher = self._discovery = None
        for task in tasks:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self.membership is not None:
            self.membership.close()

    async def verify_file(self, file_name: str) -> bool:
        name = check_name(file_name)
        self._watch()
        status = self.policy.cached(name)
        if status is not None:
            return status.available
        return await self.refresh_status_from_server(name)

    async def file_status(self, file_name: str) -> FileStatus | None:
        name = check_name(file_name)
        self._watch()
        return self.policy.cached(name) or await self._lookup(name)

    async def refresh_status_from_server(self, file_name: str) -> bool:
        status = await self._lookup(check_name(file_name))
        return status is not None and status.available

    async def _lookup(self, name: str) -> FileStatus | None:
        return await lookup(self.policy, name, self._fetch_json, self.log, self.log_enabled)

    async def _fetch_json(self, url: str) -> Any:
        return await asyncio.wait_for(self._get_json(url), self.request_timeout)

    async def _get_json(self, url: str) -> Any:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._ssl if secure else None
        )
        try:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                "Accept: application/json\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            answer = await reader.read(_MAX_ANSWER)
            while chunk := await reader.read(_MAX_ANSWER):
                answer += chunk
                if len(answer) > _MAX_ANSWER:
                    raise ValueError("the answer is too long")
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise ValueError(f"HTTP {status}")
        return json.loads(body)
