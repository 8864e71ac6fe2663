"""
Secret headers for plain HTTP origins (--origin-header-file): sent to the
origin only, re-read on reload, never shown.
"""

from __future__ import annotations

import os

from treq import content

from .helpers import CacheTestCase, body_of, start_origin

SECRET = "Bearer sk-live-0123456789abcdef"


class HeaderFileTests(CacheTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(f"# for the media bucket\nAuthorization: {SECRET}\nX-Tenant: podcasts\n")
        self.settings = {"origin_header_file": self.path}
        super().setUp()
        self.elsewhere, self.elsewhere_url = start_origin(self)

    def sent(self, name: str, header: bytes) -> list[bytes]:
        return [
            value
            for _, n, headers in self.origin.requests
            if n == name
            for value in headers.getRawHeaders(header, [])
        ]

    async def test_every_origin_request_carries_them_and_nothing_shows_them(self) -> None:
        self.origin.put("ep.mp3", body_of(1000))
        response = await self.client.get(self.url + "files/ep.mp3")
        self.assertEqual(await content(response), body_of(1000))
        self.assertEqual(self.sent("ep.mp3", b"authorization"), [SECRET.encode()])
        self.assertEqual(self.sent("ep.mp3", b"x-tenant"), [b"podcasts"])
        for path in ("api/v1/files/ep.mp3", "healthz", "metrics"):
            answer = await content(await self.client.get(self.url + path))
            self.assertNotIn(b"sk-live", answer)
        self.assertNotIn("sk-live", repr(self.cache.syncer.origin._signing.header_file.path))

    async def test_a_reload_takes_the_new_values_and_a_bad_file_keeps_the_old(self) -> None:
        header_file = self.cache.syncer.origin._signing.header_file
        with open(self.path, "w") as f:
            f.write("Authorization: Bearer rotated\n")
        header_file.reload()
        self.origin.put("a.mp3", body_of(10))
        await content(await self.client.get(self.url + "files/a.mp3"))
        self.assertEqual(self.sent("a.mp3", b"authorization"), [b"Bearer rotated"])
        with open(self.path, "w") as f:
            f.write("this line is not a header and may be a secret\n")
        with self.assertRaises(ValueError) as caught:
            header_file.reload()
        self.assertNotIn("secret", str(caught.exception))
        self.assertEqual(header_file.headers[b"authorization"], [b"Bearer rotated"])

    async def test_a_redirect_to_another_host_gets_no_secret(self) -> None:
        self.origin.redirects["moved.mp3"] = self.elsewhere_url + "moved.mp3"
        self.elsewhere.put("moved.mp3", body_of(10))
        response = await self.client.get(self.url + "files/moved.mp3", allow_redirects=False)
        await content(response)
        self.assertEqual(response.code, 302, "passed on, not followed")
        self.assertEqual(self.elsewhere.requests, [])
