"""
C{--workers 2} through a real twistd: one origin download per file across
the processes, serve-while-fill in either, hits from both.
"""

from __future__ import annotations

import json
import os
import re
import sys

from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .helpers import body_of, http_client, start_origin
from .test_twistd import _TWISTD, _Twistd

WORKER = r"\[cachetier\.worker1#info\] GET /files/ep\.mp3 200 3000000B"
PRIMARY = r"\[cachetier\.web\._site#info\] GET /files/ep\.mp3 200 3000000B"


class WorkersTests(TestCase):
    timeout = 60

    async def test_two_processes_one_origin_download(self) -> None:
        origin, origin_url = start_origin(self)
        data = body_of(3_000_000)
        origin.put("ep.mp3", data)
        origin.rate = 3_000_000
        client = http_client(self)
        protocol = _Twistd()
        args = _TWISTD + [
            "-n",
            "--pidfile=",
            "cachetier",
            f"--origin={origin_url}",
            f"--cache-dir={os.path.abspath(self.mktemp())}",
            "--listen=tcp:0:interface=127.0.0.1",
            "--workers=2",
        ]
        process = reactor.spawnProcess(protocol, sys.executable, args, env=os.environ.copy())

        async def stop() -> None:
            if not protocol.ended.called:
                process.signalProcess("TERM")
                await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        port = await protocol.port
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            if b"worker 1 serving" in protocol.output:
                break
            await deferLater(reactor, 0.05, lambda: None)

        async def get() -> bytes:
            response = await client.get(url + "files/ep.mp3")
            return await content(response)

        bodies = await gatherResults([Deferred.fromCoroutine(get()) for _ in range(40)])
        self.assertTrue(all(body == data for body in bodies))
        self.assertEqual(origin.counts["ep.mp3"], 1)
        for _ in range(100):
            response = await client.get(url + "api/v1/files/ep.mp3?sync=0")
            if json.loads(await content(response))["state"] == "cached":
                break
            await deferLater(reactor, 0.05, lambda: None)
        for _ in range(4):
            bodies = await gatherResults([Deferred.fromCoroutine(get()) for _ in range(20)])
            self.assertTrue(all(body == data for body in bodies))
        self.assertEqual(origin.counts["ep.mp3"], 1)

        # The worker relayed its misses to the primary, which followed its
        # one download for them; afterwards both served hits.
        output = protocol.output.decode()
        self.assertRegex(output, WORKER + " relayed")
        self.assertRegex(output, PRIMARY + " miss")
        self.assertRegex(output, WORKER + " hit")
        self.assertRegex(output, PRIMARY + " hit")
        worker_pid = int(re.search(r"worker 1 started \(pid (\d+)\)", output).group(1))
        process.signalProcess("TERM")
        await protocol.ended
        for _ in range(100):
            if not os.path.exists(f"/proc/{worker_pid}"):
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(os.path.exists(f"/proc/{worker_pid}"), "the worker exits with the primary")
