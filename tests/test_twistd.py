"""
C{twistd -n cachetier} as a real subprocess, used over HTTP.
"""

from __future__ import annotations

import json
import os
import resource
import signal
from typing import Any

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .helpers import body_of, child_environment, http_client, start_origin
from .nodes import _TWISTD, _Twistd, restart_node, start_node


class TwistdTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.origin, self.origin_url = start_origin(self)
        self.client = http_client(self)
        self.cache_dir = os.path.abspath(self.mktemp())

    async def start(self, prefix: tuple[str, ...] = ()) -> str:
        """
        Start twistd on a free loopback port; return its base URL.

        @param prefix: a command to run twistd under (C{prlimit ...}).
        """
        protocol = _Twistd()
        args = (
            list(prefix)
            + _TWISTD
            + [
                "-n",
                "--pidfile=",
                "cachetier",
                f"--origin={self.origin_url}",
                f"--cache-dir={self.cache_dir}",
                "--listen=tcp:0:interface=127.0.0.1",
            ]
        )
        process = reactor.spawnProcess(protocol, args[0], args, env=child_environment())
        self.process, self.protocol = process, protocol

        async def stop() -> None:
            if protocol.ended.called:
                return
            process.signalProcess("TERM")
            await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        port = await protocol.port
        return f"http://127.0.0.1:{port}/"

    async def wait_for_state(self, url: str, name: str, state: str) -> dict[str, Any]:
        for _ in range(100):
            response = await self.client.get(url + f"api/v1/files/{name}?sync=0")
            status: dict[str, Any] = json.loads(await content(response))
            if status["state"] == state:
                return status
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{name} never reached {state}: {status}")

    async def test_twistd_serves_and_stops_cleanly(self) -> None:
        data = body_of(1_500_000)
        self.origin.put("ep.mp3", data)
        url = await self.start()
        response = await self.client.get(url + "files/ep.mp3")
        self.assertEqual((response.code, await content(response)), (200, data))
        response = await self.client.get(url + "healthz")
        self.assertEqual(json.loads(await content(response))["status"], "ok")
        # The last byte can reach the listener before the publish is done.
        await self.wait_for_state(url, "ep.mp3", "cached")
        self.process.signalProcess("TERM")
        ended = await self.protocol.ended
        # twistd exits by re-raising the signal it stopped for.
        self.assertEqual(ended.signal, signal.SIGTERM)
        self.assertIn(b"Server Shut Down.", self.protocol.output)
        self.assertIn(b"synced ep.mp3 (1500000 bytes)", self.protocol.output)
        # No "Starting factory" line for each origin connection.
        self.assertNotIn(b"HTTP11ClientFactory", self.protocol.output)
        self.assertRegex(
            self.protocol.output.decode(),
            r'"GET /files/ep.mp3 HTTP/1.1" 200 1500000 "-" "[^"]*" "-" miss [\d.]+ms OK',
        )

    async def test_kill_9_mid_sync_then_restart_never_serves_partial(self) -> None:
        data = body_of(4_000_000)
        self.origin.put("big.mp3", data)
        self.origin.rate = 1_000_000
        url = await self.start()
        response = await self.client.get(url + "api/v1/files/big.mp3")
        await content(response)
        for _ in range(100):
            response = await self.client.get(url + "api/v1/files/big.mp3?sync=0")
            status = json.loads(await content(response))
            if status["bytes_synced"] > 500_000:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(status["state"], "syncing")
        self.process.signalProcess(signal.SIGKILL)
        await self.protocol.ended
        self.assertEqual(len(os.listdir(os.path.join(self.cache_dir, "tmp"))), 1)

        self.origin.rate = None
        url = await self.start()
        # The port is bound before the store is opened: ask first.
        response = await self.client.get(url + "api/v1/files/big.mp3?sync=0")
        self.assertEqual(json.loads(await content(response))["state"], "missing")
        self.assertEqual(os.listdir(os.path.join(self.cache_dir, "tmp")), [])
        response = await self.client.get(url + "files/big.mp3")
        self.assertEqual((response.code, await content(response)), (200, data))
        self.assertEqual(self.origin.counts["big.mp3"], 2)

    async def test_the_soft_open_files_limit_is_raised_to_the_hard_one(self) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        url = await self.start(prefix=("/usr/bin/prlimit", f"--nofile=256:{hard}"))
        response = await self.client.get(url + "healthz")
        self.assertEqual(response.code, 200)
        await content(response)
        with open(f"/proc/{self.process.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        self.assertEqual(line.split()[3:5], [str(hard), str(hard)])
        self.assertIn(f"open-files limit: soft 256 raised to {hard}".encode(), self.protocol.output)

    async def test_a_busy_port_stops_startup_with_one_line(self) -> None:
        busy = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        for workers in ("1", "2"):
            protocol = _Twistd()
            protocol.port.addErrback(lambda _: None)
            args = _TWISTD + [
                "-n",
                "--pidfile=",
                "cachetier",
                f"--origin={self.origin_url}",
                f"--cache-dir={self.cache_dir}",
                f"--listen=tcp:{port}:interface=127.0.0.1",
                f"--workers={workers}",
            ]
            process = reactor.spawnProcess(protocol, args[0], args, env=child_environment())
            timeout = reactor.callLater(20, process.signalProcess, "KILL")
            ended = await protocol.ended
            timeout.cancel()
            self.assertEqual(ended.exitCode, 1, protocol.output[-2000:])
            output = protocol.output.decode()
            self.assertIn(f"cachetier: cannot listen on tcp:{port}:interface=127.0.0.1:", output)
            self.assertIn("Address already in use", output)
            self.assertNotIn("Traceback", output)
            self.assertFalse(os.path.exists(self.cache_dir), "created before the port failed")


class NodesTests(TestCase):
    """
    The harness for tests of several nodes (L{tests.nodes}): nodes on
    loopback addresses of their own, restarted on the same port and
    cache.
    """

    timeout = 60

    async def test_nodes_on_their_own_addresses_restarted_keep_their_cache(self) -> None:
        origin, origin_url = start_origin(self)
        origin.put("ep.mp3", body_of(100_000))
        client = http_client(self)
        nodes = [
            await start_node(self, origin_url, name=f"edge{n}", host=f"127.0.0.{n}") for n in (2, 3)
        ]
        for node in nodes:
            self.assertTrue(node.url.startswith(f"http://{node.host}:"))
            response = await client.get(node.url + "files/ep.mp3")
            self.assertEqual(await content(response), body_of(100_000))
        self.assertEqual(origin.counts["ep.mp3"], 2)
        await nodes[0].stop()
        again = await restart_node(self, nodes[0], origin_url)
        self.assertEqual(again.url, nodes[0].url)
        response = await client.get(again.url + "files/ep.mp3")
        self.assertEqual(await content(response), body_of(100_000))
        self.assertEqual(origin.counts["ep.mp3"], 2)
